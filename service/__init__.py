"""The phone-verification service: an SMS code raced against a timer, checkpointed in SQLite."""
