"""Benchmarks, run as ``python -m ldrop.bench <benchmark> [options]`` (the list: ``python -m ldrop.bench --help``)."""
