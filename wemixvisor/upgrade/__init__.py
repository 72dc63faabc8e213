"""Upgrades at height: the journaled saga, preflight checks, hooks and binary downloads."""
