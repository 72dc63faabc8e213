"""Backups of the node's data directory: pre-staged copies, manifests, restore, retention."""
