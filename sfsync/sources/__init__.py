"""Sources: each stages reports in the store, then acknowledges them upstream."""
