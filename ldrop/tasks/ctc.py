"""CTC speech recognition: character vocabulary, linear CTC head, greedy decoding, WER and CER."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.text import CharErrorRate, WordErrorRate

from ldrop.data.text import ENGLISH_CHARACTERS
from ldrop.tasks.base import LayerDropTask

log = logging.getLogger(__name__)


def build_vocabulary(transcripts: Iterable[str], lowercase: bool = True) -> list[str]:
    """The sorted set of characters of ``transcripts`` (space included): a CTC vocabulary."""
    chars = {c for text in transcripts for c in (text.lower() if lowercase else text)}
    return sorted((chars - {"\n"}) | {" "})


class CTCTask(LayerDropTask):
    """Speech recognition with a linear CTC head over characters, greedy decoding, WER and CER.

    Index 0 of the head is the CTC blank; index ``i + 1`` is ``vocabulary[i]``. The vocabulary is stored in
    the checkpoint's hyper-parameters, so a loaded model decodes the same way.

    Args:
        labels: the output characters (a list, or a string of them); ``"english"`` for lower-case English
            letters, apostrophe and space. The CLI links them from the datamodule.
        lowercase: lower-case transcripts (references and training targets alike) before use.
        **kwargs: the :class:`~ldrop.tasks.base.LayerDropTask` arguments (backbone, selector, budgets, ...).
    """

    metric_names = ("wer", "cer")
    higher_is_better = False
    has_item_errors = True
    _said_unalignable = False  # whether an utterance too short for its transcript was reported (once)

    def __init__(self, labels: list[str] | str = "english", lowercase: bool = True, **kwargs: Any) -> None:
        chars = ENGLISH_CHARACTERS if labels == "english" else list(labels)
        if len(chars) != len(set(chars)) or any(len(c) != 1 for c in chars):
            raise ValueError(f"vocabulary must be distinct single characters, got {chars!r}")
        if " " not in chars:
            raise ValueError("vocabulary must contain the space character (the word separator)")
        self.vocabulary = chars
        self.char_to_index = {c: i + 1 for i, c in enumerate(chars)}
        super().__init__(**kwargs)
        self.save_hyperparameters("labels", "lowercase")
        self._warned_unknown: set[str] = set()

    def configure_head(self) -> nn.Module:
        return nn.Linear(self.backbone.hidden_size, len(self.vocabulary) + 1)

    def compute_logits(self, head: nn.Module, hidden: Tensor, frame_mask: Tensor) -> Tensor:
        return head(hidden)

    def normalize(self, text: str) -> str:
        text = text.lower() if self.hparams.lowercase else text
        return " ".join(text.split())

    def encode_text(self, text: str) -> list[int]:
        """Character ids of a transcript; characters outside the vocabulary are dropped (warned once)."""
        ids = []
        for c in self.normalize(text):
            index = self.char_to_index.get(c)
            if index is None:
                if c not in self._warned_unknown:
                    self._warned_unknown.add(c)
                    log.warning("character %r is not in the CTC vocabulary and is dropped from targets", c)
                continue
            ids.append(index)
        return ids

    def task_loss(self, logits: Tensor, frame_mask: Tensor, batch: Any) -> Tensor:
        return self._ctc_loss(logits, frame_mask, batch, "mean")

    def item_losses(self, logits: Tensor, frame_mask: Tensor, batch: Any) -> Tensor:
        """Per utterance: its CTC loss divided by its target length (the terms ``task_loss`` averages)."""
        losses, target_lengths = self._ctc_loss(logits, frame_mask, batch, "none")
        return losses / target_lengths.clamp(min=1).to(losses.dtype)

    def _ctc_loss(self, logits: Tensor, frame_mask: Tensor, batch: Any, reduction: str):
        encoded = [torch.tensor(self.encode_text(t), dtype=torch.long) for t in batch.targets]
        target_lengths = torch.tensor([len(t) for t in encoded], dtype=torch.long, device=logits.device)
        targets = torch.cat(encoded).to(logits.device) if encoded else torch.zeros(0, dtype=torch.long)
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # [frames, batch, vocab]
        input_lengths = frame_mask.sum(1)
        if not self._said_unalignable:
            _say_unalignable(self, encoded, input_lengths, batch)
        loss = F.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=0, reduction=reduction,
                          zero_infinity=True)
        return loss if reduction == "mean" else (loss, target_lengths)

    def configure_metrics(self) -> dict[str, Metric]:
        return {"wer": WordErrorRate(), "cer": CharErrorRate()}

    def update_metrics(self, metrics: dict[str, Metric], logits: Tensor, frame_mask: Tensor, batch: Any) -> None:
        hypotheses = self.decode(logits, frame_mask)
        references = [self.normalize(t) for t in batch.targets]
        for metric in metrics.values():
            metric.update(hypotheses, references)

    def item_errors(self, logits: Tensor, frame_mask: Tensor, batch: Any) -> tuple[Tensor, Tensor]:
        """Per utterance: word edit distance to its reference, and the reference's words (WER's terms)."""
        from torchaudio.functional import edit_distance

        hypotheses = self.decode(logits, frame_mask)
        references = [self.normalize(t).split() for t in batch.targets]
        errors = [float(edit_distance(ref, hyp.split())) for ref, hyp in zip(references, hypotheses, strict=True)]
        return (torch.tensor(errors, dtype=torch.float64, device=logits.device),
                torch.tensor([float(max(1, len(ref))) for ref in references], dtype=torch.float64, device=logits.device))

    def decode(self, logits: Tensor, frame_mask: Tensor) -> list[str]:
        """Greedy CTC decoding: best class per frame, collapse repeats, drop blanks."""
        best = logits.argmax(-1).masked_fill(~frame_mask, 0).cpu()
        chars = ([self.vocabulary[int(i) - 1] for i in torch.unique_consecutive(row) if int(i) != 0] for row in best)
        return [" ".join("".join(row).split()) for row in chars]


__all__ = ["CTCTask", "ENGLISH_CHARACTERS", "build_vocabulary"]


def _say_unalignable(task: CTCTask, encoded: list[Tensor], frames: Tensor, batch: Any) -> None:
    """Warn once if an utterance has fewer frames than CTC needs for its transcript (its characters, plus a blank
    between repeated ones): its loss is infinite, which ``zero_infinity`` makes 0, so it would train nothing,
    silently."""
    needed = torch.tensor([len(t) + int((t[1:] == t[:-1]).sum()) for t in encoded], dtype=torch.long)
    frames = frames.cpu()  # a host sync, until the first warning
    short = (frames < needed).nonzero().flatten().tolist()
    if short:
        task._said_unalignable = True
        ids, i = getattr(batch, "ids", None), short[0]
        name = f"{ids[i]!r}" if ids else f"item {i} of the batch"
        log.warning("%d of %d utterances in a batch are too short for their transcripts (e.g. %s: %d frames, %d "
                    "needed): CTC cannot align them, so their loss is 0 and they train nothing; check their audio "
                    "and transcripts (said once)", len(short), len(encoded), name, int(frames[i]), int(needed[i]))

