"""Outcomes of verifications, pushed to SQS by the service and read back by its consumers."""
