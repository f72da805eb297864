"""Shared fixtures: tiny on-disk copies of the benchmark layouts, built once per session.

The trees are shared and must not be modified; a test that needs a broken tree builds its own under
``tmp_path`` with the builders of :mod:`ldrop.testing.fixtures`.
"""

from __future__ import annotations

import pytest

from ldrop.testing.fixtures import (
    FixtureTree,
    make_esc50_tree,
    make_librispeech_tree,
    make_speech_commands_tree,
    make_tedlium_tree,
)

LIBRISPEECH_SUBSETS = ("train-clean-100", "train-clean-360", "dev-clean", "test-clean", "test-other")


@pytest.fixture(scope="session")
def librispeech(tmp_path_factory: pytest.TempPathFactory) -> FixtureTree:
    return make_librispeech_tree(tmp_path_factory.mktemp("librispeech"), subsets=LIBRISPEECH_SUBSETS, seed=1)


@pytest.fixture(scope="session")
def tedlium(tmp_path_factory: pytest.TempPathFactory) -> FixtureTree:
    return make_tedlium_tree(tmp_path_factory.mktemp("tedlium"), seed=2)


@pytest.fixture(scope="session")
def speech_commands(tmp_path_factory: pytest.TempPathFactory) -> FixtureTree:
    return make_speech_commands_tree(tmp_path_factory.mktemp("speech_commands"), seed=3)


@pytest.fixture(scope="session")
def esc50(tmp_path_factory: pytest.TempPathFactory) -> FixtureTree:
    return make_esc50_tree(tmp_path_factory.mktemp("esc50"), seed=4)
