"""Push: the webhook receiver, its authentication and webhook management."""
