"""Lifecycle events: the PUB publisher, subscribers, alert forwarding and metrics."""
