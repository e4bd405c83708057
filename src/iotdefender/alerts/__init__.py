"""Alert delivery: a durable outbox, SNS-compatible topics and signed webhooks."""
