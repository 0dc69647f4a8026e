"""sfsync: keeps Salesforce Task SMS status fields in step with MessageMedia."""

__version__ = "0.1.0"
