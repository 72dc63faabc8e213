"""The node process: spawning, stopping, adoption, its lifecycle table, restart policy, the
lease for maintenance, the client workers use to command it, and its log file."""
