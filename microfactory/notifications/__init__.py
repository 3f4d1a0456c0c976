"""The notification outbox and its optional SMTP adapter."""
