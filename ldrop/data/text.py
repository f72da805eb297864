"""Transcript normalisation, applied identically to training targets and to references."""

from __future__ import annotations

import re

__all__ = ["ENGLISH_CHARACTERS", "normalize_tedlium_transcript"]

#: The English character set of LibriSpeech / TED-LIUM after lower-casing (space is the word separator).
ENGLISH_CHARACTERS = list(" 'abcdefghijklmnopqrstuvwxyz")

_CURLY = re.compile(r"\{[^}]*\}")  # {NOISE}, {BREATH}, {COUGH}, ...
_ANGLE = re.compile(r"<[^>]*>")  # <unk>, <sil>, <s>, </s>
_ALTERNATIVE = re.compile(r"\(\d+\)")  # alternative-pronunciation marks: word(2)
_CLITIC = re.compile(r"\s+('(?:s|re|ve|ll|d|m|t)|n't)\b")  # it 's -> it's, don 't -> don't, do n't -> don't


def normalize_tedlium_transcript(text: str) -> str:
    """Normalise a TED-LIUM STM transcript for CTC training and WER scoring (possibly to ``""``).

    Removes ``{...}`` and ``<...>`` tokens and ``(2)`` marks, lower-cases, re-attaches split clitics (``'s 're
    've 'll 'd 'm 't``, ``n't``) and collapses whitespace.

    Example:
        >>> normalize_tedlium_transcript("{NOISE} it 's  a <unk> test(2) do n't <sil>")
        "it's a test don't"
    """
    text = _CURLY.sub(" ", text)
    text = _ANGLE.sub(" ", text)
    text = _ALTERNATIVE.sub("", text)
    text = text.lower()
    text = _CLITIC.sub(r"\1", text)
    return " ".join(text.split())
