"""Benchmarks for the IG engine and pipeline (issue 5): `python -m benchmarks.run`."""
