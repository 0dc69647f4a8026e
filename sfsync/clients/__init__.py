"""Clients: the only code that speaks HTTP to MessageMedia and Salesforce, and every back-off."""
