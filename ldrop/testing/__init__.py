"""Helpers for testing ldrop and code built on it, not part of the data API: :mod:`ldrop.testing.fixtures` writes
tiny seeded copies of the benchmark corpora and damaged audio files (for tests, examples, the loading benchmark)."""
