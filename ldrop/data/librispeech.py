"""LibriSpeech (read English audiobooks, 16 kHz FLAC) for CTC speech recognition."""

from __future__ import annotations

import glob
import os
from typing import Literal

from ldrop.data.base import AudioDataModule, Split, as_list, find_corpus, layout_error
from ldrop.data.datasets import AudioItem
from ldrop.data.text import ENGLISH_CHARACTERS

__all__ = ["LIBRISPEECH_SUBSETS", "LibriSpeechDataModule", "LibriSpeechSubset"]

LibriSpeechSubset = Literal[
    "train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "dev-other", "test-clean",
    "test-other",
]
LIBRISPEECH_SUBSETS: tuple[str, ...] = LibriSpeechSubset.__args__  # type: ignore[attr-defined]

LIBRISPEECH_LAYOUT = """\
<root>/LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
<root>/LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
(<root> may also be the LibriSpeech folder itself; <subset> is one of train-clean-100, train-clean-360,
train-other-500, dev-clean, dev-other, test-clean, test-other)"""


class LibriSpeechDataModule(AudioDataModule):
    """LibriSpeech for CTC: 16 kHz FLAC utterances with the transcripts of their chapter's ``.trans.txt``.

    Each split is one subset or a list; the default is SUPERB ASR (train-clean-100, dev-clean, test-clean).
    Targets are the transcripts as written; ids are utterance ids (``103-1240-0000``).

    Args:
        root: folder holding ``LibriSpeech/`` (or the ``LibriSpeech`` folder itself).
        train_subsets: subset(s) of the training split.
        val_subsets: subset(s) of the validation split.
        test_subsets: subset(s) of the test split.
        predict_subsets: subset(s) of the predict split; ``None`` = the test subsets.
        **kwargs: the common arguments of :class:`~ldrop.data.base.AudioDataModule`. Training utterances
            longer than ``max_train_seconds`` are dropped and counted in a warning (a crop would cut the audio
            away from its transcript).
    """

    task = "ctc"
    alphabet = ENGLISH_CHARACTERS

    def __init__(
        self, root: str, train_subsets: LibriSpeechSubset | list[LibriSpeechSubset] = "train-clean-100",
        val_subsets: LibriSpeechSubset | list[LibriSpeechSubset] = "dev-clean",
        test_subsets: LibriSpeechSubset | list[LibriSpeechSubset] = "test-clean",
        predict_subsets: LibriSpeechSubset | list[LibriSpeechSubset] | None = None, **kwargs,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self.subsets: dict[str, list[str]] = {
            "train": as_list(train_subsets), "val": as_list(val_subsets), "test": as_list(test_subsets),
            "predict": as_list(predict_subsets if predict_subsets is not None else test_subsets),
        }
        for split, names in self.subsets.items():
            unknown = [n for n in names if n not in LIBRISPEECH_SUBSETS]
            if unknown or not names:
                raise ValueError(
                    f"{split} subsets {names} are not LibriSpeech subsets; choose from {list(LIBRISPEECH_SUBSETS)}"
                )

    def corpus_dir(self) -> str:
        """The ``LibriSpeech`` folder under :attr:`root`."""
        return find_corpus(self.root, "LibriSpeech", LIBRISPEECH_SUBSETS, "LibriSpeech root", LIBRISPEECH_LAYOUT)

    def list_items(self, split: Split) -> list[AudioItem]:
        corpus = self.corpus_dir()
        items: list[AudioItem] = []
        for subset in self.subsets[split]:
            subset_dir = os.path.join(corpus, subset)
            if not os.path.isdir(subset_dir):
                raise layout_error(
                    f"LibriSpeech subset '{subset}' (split '{split}')", subset_dir, LIBRISPEECH_LAYOUT
                )
            transcript_files = sorted(
                glob.glob(os.path.join(glob.escape(subset_dir), "*", "*", "*.trans.txt"))
            )
            if not transcript_files:
                raise layout_error(
                    f"transcript files (*.trans.txt) of subset '{subset}'", subset_dir, LIBRISPEECH_LAYOUT
                )
            listed = [item for transcript_file in transcript_files for item in _read_chapter(transcript_file)]
            items += listed + _untranscribed(subset_dir, {item.path for item in listed})
        return items


def _untranscribed(subset_dir: str, transcribed: set[str]) -> list[AudioItem]:
    """Bad items for the FLAC files of ``subset_dir`` that no transcript line names (not dropped silently)."""
    items = []
    for path in sorted(glob.glob(os.path.join(glob.escape(subset_dir), "*", "*", "*.flac"))):
        if path in transcribed:
            continue
        chapter_dir = os.path.dirname(path)
        speaker, chapter = os.path.basename(os.path.dirname(chapter_dir)), os.path.basename(chapter_dir)
        transcript = os.path.join(chapter_dir, f"{speaker}-{chapter}.trans.txt")
        problem = (
            f"not in the transcript file {transcript}"
            if os.path.isfile(transcript)
            else f"no transcript: the chapter folder {chapter_dir} has no {speaker}-{chapter}.trans.txt"
        )
        utt_id = os.path.splitext(os.path.basename(path))[0]
        items.append(AudioItem(id=utt_id, path=path, target="", problem=problem))
    return items


def _read_chapter(transcript_file: str) -> list[AudioItem]:
    """The utterances of one chapter: ``<utt-id> <TRANSCRIPT>`` lines, audio ``<utt-id>.flac`` beside."""
    chapter_dir = os.path.dirname(transcript_file)
    items = []
    with open(transcript_file, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            utt_id, _, text = line.partition(" ")
            if (sep := next((c for c in utt_id if c.isspace()), None)) is not None:
                # the official format has one space after the id; a tab would glue the first word onto it
                raise ValueError(
                    f"{transcript_file}:{line_no}: the utterance id and the transcript must be separated by a "
                    f"space, not {sep!r} (expected '<utt-id> <TRANSCRIPT>', like '103-1240-0000 CHAPTER ONE')"
                )
            if not text.strip():
                raise ValueError(
                    f"{transcript_file}:{line_no}: no transcript after the utterance id {utt_id!r}"
                )
            items.append(
                AudioItem(id=utt_id, path=os.path.join(chapter_dir, f"{utt_id}.flac"), target=text.strip())
            )
    return items
