"""Benchmark scripts of this repository, run from its root as ``python -m benchmarks.NAME`` (not installed)."""
