"""Every typed message of the daemon, grouped by domain.

`events` are what the PUB socket broadcasts; `node` (and later domains) are what actors tell
each other.
"""
