"""normalize_tedlium_transcript: the documented rules, one per test."""

from __future__ import annotations

import pytest

from ldrop.data import normalize_tedlium_transcript as normalize


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("it 's", "it's"), ("we 're", "we're"), ("i 've", "i've"), ("you 'll", "you'll"), ("i 'd", "i'd"),
     ("i 'm", "i'm"), ("don 't", "don't"), ("do n't", "don't")],
)  # fmt: skip
def test_split_clitics_are_reattached(raw, expected):
    assert normalize(raw) == expected


def test_other_apostrophes_are_left_alone():
    assert normalize("'cause rock 'n' roll") == "'cause rock 'n' roll"


@pytest.mark.parametrize("token", ["<unk>", "<sil>", "{NOISE}", "{BREATH}", "{COUGH}"])
def test_non_speech_tokens_are_removed(token):
    assert normalize(f"a {token} b") == "a b"


def test_alternative_pronunciation_marks_are_removed():
    assert normalize("the(2) word(12)") == "the word"


def test_text_is_lower_cased():
    assert normalize("Hello TED") == "hello ted"


def test_whitespace_is_collapsed_and_stripped():
    assert normalize("  a \t b\n") == "a b"


def test_a_segment_of_noise_tokens_only_normalises_to_empty():
    assert normalize("{NOISE} <sil> <unk>") == ""
