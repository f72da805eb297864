"""Helpers for testing ldrop and code built on it; not part of the data API.

:mod:`ldrop.testing.fixtures` writes tiny, seeded, layout-faithful copies of the benchmark corpora
(LibriSpeech, TED-LIUM 3, Speech Commands, ESC-50, manifests) and damaged audio files, for tests,
examples and the loading benchmark.
"""
