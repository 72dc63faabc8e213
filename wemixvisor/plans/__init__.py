"""Upgrade plans: validation, the persistent queue's rules, and the plan files."""
