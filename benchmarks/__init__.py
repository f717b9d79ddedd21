"""Benchmarks: speed and quality measurements recorded in docs/benchmarks.md."""
