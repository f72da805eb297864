"""TED-LIUM release 3 (TED talks, 16 kHz NIST SPHERE) for CTC speech recognition."""

from __future__ import annotations

import glob
import logging
import os
from typing import Literal

from ldrop._progress import note
from ldrop.data.base import AudioDataModule, Split, find_corpus, layout_error
from ldrop.data.datasets import AudioItem
from ldrop.data.text import ENGLISH_CHARACTERS, normalize_tedlium_transcript

__all__ = ["IGNORE_SEGMENT", "TedliumDataModule", "read_stm"]

log = logging.getLogger("ldrop.data")

IGNORE_SEGMENT = "ignore_time_segment_in_scoring"
IGNORE_SPEAKER = "inter_segment_gap"  # the speaker of every ignore line

TEDLIUM_LAYOUT = """\
<root>/TEDLIUM_release-3/data/sph/<TalkId>.sph and data/stm/<TalkId>.stm          (train)
<root>/TEDLIUM_release-3/legacy/{dev,test}/{sph,stm}/<TalkId>.{sph,stm}             (val/test, default)
<root>/TEDLIUM_release-3/speaker-adaptation/{dev,test}/{sph,stm}/<TalkId>.{sph,stm} (eval_partition=speaker-adaptation)
(<root> may also be the TEDLIUM_release-3 folder itself; .sph files must be plain PCM SPHERE)"""


def read_stm(stm_file: str) -> tuple[list[tuple[float, float, str]], int]:
    """Read one talk's STM file: ``(start, end, raw transcript)`` per utterance, and the number of ignore
    lines.

    Lines are ``talk_id channel speaker start end [<label>] transcript...``;
    ``ignore_time_segment_in_scoring`` lines (speaker ``inter_segment_gap``) are skipped, whatever their
    label. ``ValueError`` for a malformed line, naming the file
    and line.
    """
    segments, ignored = [], 0
    with open(stm_file, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            fields = line.split()
            if not fields or fields[0].startswith(";;"):
                continue
            if len(fields) < 5:
                raise ValueError(f"{stm_file}:{line_no}: expected 'talk channel speaker start end ...'")
            try:
                start, end = float(fields[3]), float(fields[4])
            except ValueError:
                raise ValueError(f"{stm_file}:{line_no}: start/end times are not numbers") from None
            if end < start:
                raise ValueError(f"{stm_file}:{line_no}: segment ends ({end}) before it starts ({start})")
            words = fields[5:]
            if words and _is_label(words[0]):
                words = words[1:]
            # an ignore line whatever its label's spelling (legacy dev/test spell labels other ways)
            if fields[2].lower() == IGNORE_SPEAKER or (words[-1:] == [IGNORE_SEGMENT] and all(map(_is_tag, words[:-1]))):
                ignored += 1
                continue
            transcript = " ".join(words)
            segments.append((start, end, transcript))
    return segments, ignored


def _is_tag(token: str) -> bool:
    return token.startswith("<") and token.endswith(">")


def _is_label(token: str) -> bool:
    # <o,f0,male>, <o,f0,female>, <NA>; not transcript tokens such as <unk> or <sil>.
    return _is_tag(token) and ("," in token or token == "<NA>")


class TedliumDataModule(AudioDataModule):
    """TED-LIUM 3 for CTC: utterances cut out of whole-talk SPHERE files at their STM times.

    Training uses every talk of ``data/``; validation and test are the dev and test talks of ``legacy/`` (the
    usual benchmark) or ``speaker-adaptation/``. Transcripts are normalised by
    :func:`~ldrop.data.text.normalize_tedlium_transcript` (empty segments are dropped and counted); ids are
    ``<TalkId>-<start cs>-<end cs>``.

    Args:
        root: folder holding ``TEDLIUM_release-3/`` (or that folder itself).
        eval_partition: where the dev (validation) and test talks come from.
        **kwargs: the common arguments of :class:`~ldrop.data.base.AudioDataModule`. Training segments longer
            than ``max_train_seconds`` are dropped and counted in a warning (a crop would cut the audio away
            from its transcript); ``skip_bad_files`` also skips segments outside their talk.
    """

    task = "ctc"
    alphabet = ENGLISH_CHARACTERS

    def __init__(
        self, root: str, eval_partition: Literal["legacy", "speaker-adaptation"] = "legacy", **kwargs,
    ) -> None:
        super().__init__(root=root, **kwargs)
        if eval_partition not in ("legacy", "speaker-adaptation"):
            raise ValueError(
                f"eval_partition must be 'legacy' or 'speaker-adaptation', got {eval_partition!r}"
            )
        self.eval_partition = eval_partition

    def corpus_dir(self) -> str:
        """The ``TEDLIUM_release-3`` folder under :attr:`root`."""
        return find_corpus(self.root, "TEDLIUM_release-3", ("data", "legacy"), "TED-LIUM 3 root", TEDLIUM_LAYOUT)

    def split_dir(self, split: Split) -> str:
        """The folder holding ``sph/`` and ``stm/`` for ``split``."""
        corpus = self.corpus_dir()
        if split == "train":
            return os.path.join(corpus, "data")
        part = "dev" if split == "val" else "test"
        return os.path.join(corpus, self.eval_partition, part)

    def list_items(self, split: Split) -> list[AudioItem]:
        split_dir = self.split_dir(split)
        stm_dir, sph_dir = os.path.join(split_dir, "stm"), os.path.join(split_dir, "sph")
        for folder in (stm_dir, sph_dir):
            if not os.path.isdir(folder):
                raise layout_error(f"TED-LIUM folder for split '{split}'", folder, TEDLIUM_LAYOUT)
        stm_files = sorted(glob.glob(os.path.join(glob.escape(stm_dir), "*.stm")))
        if not stm_files:
            raise layout_error(
                f"STM files for split '{split}'", os.path.join(stm_dir, "*.stm"), TEDLIUM_LAYOUT
            )
        items: list[AudioItem] = []
        ignored = emptied = 0
        without_segments = []
        for stm_file in stm_files:
            talk_id = os.path.splitext(os.path.basename(stm_file))[0]
            sph = os.path.join(sph_dir, f"{talk_id}.sph")
            segments, n_ignored = read_stm(stm_file)
            ignored += n_ignored
            if not segments:
                without_segments.append(stm_file)
            for start, end, raw in segments:
                text = normalize_tedlium_transcript(raw)
                if not text:
                    emptied += 1
                    continue
                items.append(
                    AudioItem(
                        id=f"{talk_id}-{round(start * 100):07d}-{round(end * 100):07d}", path=sph,
                        target=text, offset=start, duration=end - start,
                    )
                )
        segments = len(items)
        items += _untranscribed_talks(sph_dir, stm_dir, stm_files)  # bad items, counted as such
        if without_segments:
            shown = ", ".join(without_segments[:3]) + (
                f" and {len(without_segments) - 3} more" if len(without_segments) > 3 else ""
            )
            if len(without_segments) == len(stm_files):
                raise ValueError(
                    f"{shown}: the STM file(s) of split '{split}' hold no segments (expected lines "
                    f"'talk_id channel speaker start end <label> transcript')"
                )
            log.warning("TedliumDataModule: %s split: the STM file(s) %s hold no segments", split, shown)
        note(f"TedliumDataModule: {split} split: {len(stm_files)} talks, {segments} segments, {ignored} "
             f"ignore_time_segment_in_scoring lines skipped, {emptied} segments empty after normalisation dropped")
        return items


def _untranscribed_talks(sph_dir: str, stm_dir: str, stm_files: list[str]) -> list[AudioItem]:
    """Bad items for the talks of ``sph_dir`` that have no STM file (a partial extraction is not silent)."""
    talks = {os.path.splitext(os.path.basename(f))[0] for f in stm_files}
    return [
        AudioItem(id=talk_id, path=sph, target="", problem=f"no transcript: {stm_dir} has no {talk_id}.stm")
        for sph in sorted(glob.glob(os.path.join(glob.escape(sph_dir), "*.sph")))
        if (talk_id := os.path.splitext(os.path.basename(sph))[0]) not in talks
    ]
