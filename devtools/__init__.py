"""Support for tests, the demo and the benchmarks; not part of the installed product."""
