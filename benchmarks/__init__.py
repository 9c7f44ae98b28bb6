"""Timed comparisons; results are written down in benchmarks/RESULTS.md."""
