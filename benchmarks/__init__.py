"""Benchmarks for the IG engine and pipeline: `python -m benchmarks.run` and its siblings."""
