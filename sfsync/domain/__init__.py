"""The domain: report parsing, the code map, Salesforce Ids and the one precedence rule."""
