"""Backups of the node's data directory.

- `store`: create, pre-stage and finish backups (and every public name, re-exported).
- `retention`: pruning and `backup delete`.
- `staging`: which plan owns the one pre-staged copy (pure).
- `admission`: which backup operation runs now (pure).
- `jobs`: the BackupActor's operations, run off its mailbox.
- `restore`: put a backup back in place of the data dir.
- `copy`: the mirror engine (scan, delta, fast file copies, one flush).
- `manifest`: backup ids and `manifest.json`.
- `index`: the backups directory and the set-aside data dirs, each manifest read once per change.
- `space`: free-space checks (bytes and inodes).
"""
