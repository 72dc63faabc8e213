"""Benchmarks that measure wemixvisor against its peers on the same machine, in the same run."""
