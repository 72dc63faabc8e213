"""The node's home on disk: layout, durable file writes, ipc endpoints, daemon-owned state."""
