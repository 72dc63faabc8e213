"""The daemon's actors, one per module."""
