"""Backups of the node's data directory.

- `store`: create, pre-stage and finish backups, prune them (and every public name, re-exported).
- `restore`: put a backup back in place of the data dir.
- `copy`: the mirror engine (scan, delta, fast file copies).
- `manifest`: backup ids and `manifest.json`; listing the backups directory.
- `space`: free-space checks.
"""
