"""The node process: spawning, stopping, adoption, restart policy, and its log file."""
