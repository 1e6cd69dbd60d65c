"""Outcomes of verifications, pushed to SQS by the service and read back by its consumers.

It stands alone, so other services install and use it without the service: `events` defines the
outcome event both ways (the service encodes with it, `consumer` decodes), `queues` reaches the
queue, `settings` reads its `[queue]` table, and `python -m notifier` prints what arrives.
"""
