"""Prediction: per-input records (output, executed layers, GFLOPs), budget targets, and long inputs
predicted in chunks so that memory stays bounded."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ldrop.backbones.geometry import frame_hop
from ldrop.budgets import Budget, BudgetDecision, Target, budget_to_layers, is_target
from ldrop.budgets.loop import full_depth_warning
from ldrop.tasks.cost import BatchCost


def check_chunking(chunk_seconds: float | None, overlap_seconds: float) -> None:
    """``ValueError`` for ``predict_chunk_seconds`` / ``predict_chunk_overlap_seconds`` that cannot chunk."""
    if chunk_seconds is not None and chunk_seconds <= overlap_seconds:
        raise ValueError(f"predict_chunk_seconds ({chunk_seconds}) must exceed predict_chunk_overlap_seconds "
                         f"({overlap_seconds}), or be None (no chunking)")
    if overlap_seconds < 0:
        raise ValueError(f"predict_chunk_overlap_seconds must be >= 0, got {overlap_seconds}")


def check_predict_budget(budget: Budget | dict[str, Any], config: Any, num_layers: int) -> None:
    """``ValueError`` naming ``predict_budget`` for a budget this model cannot predict at: a number of layers or a
    fraction out of range, or a target whose device profile is of another model (checked before any model runs)."""
    try:
        if is_target(budget):
            Target.parse(budget).check_model(config, num_layers)
        else:
            budget_to_layers(budget, num_layers)
    except ValueError as err:
        raise ValueError(f"predict_budget: {err}") from None


class PredictionMixin:
    """The predict side of :class:`~ldrop.tasks.LayerDropTask` (mixed into it)."""

    #: Whether a model that cannot skip layers has said so, once, when asked for fewer.
    _said_full_depth = False

    #: ``sample lengths [batch] -> BudgetDecision`` for a target ``predict_budget``: attached for a predict run
    #: by :class:`ldrop.runtime.TargetBudgets` (the task resolves no target itself).
    budget_provider: Callable[[Tensor], BudgetDecision] | None = None

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """Per input: id, output (transcript or label), the budget it was given, executed layers and GFLOPs.

        Under a target (``predict_budget: {rtf: 0.1}``, ...) a record also says which target applied
        (``target``, e.g. ``"rtf=0.1"``), whether the controller predicted the input to meet it
        (``meets_target``) and, for time targets, the predicted time (``predicted_ms``: the input's share of
        the batch's predicted time at its budget, from the device profile).

        Inputs longer than ``predict_chunk_seconds`` are predicted in chunks (:meth:`predict_long`); their
        record also lists the chunks (``start_s``, ``end_s``, ``budget``, ``executed_layers``),
        ``executed_layers`` is the union over chunks, ``gflops`` and ``predicted_ms`` the sums, ``budget`` the
        smallest chunk budget and ``meets_target`` whether every chunk meets it.
        """
        long_rows = [i for i, n in enumerate(batch.lengths.tolist()) if len(self.chunk_spans(n)) > 1]
        if not long_rows:
            return self._predict_batch(batch.waveforms, batch.lengths, list(batch.ids))
        records: dict[int, dict[str, Any]] = {}
        short_rows = [i for i in range(len(batch)) if i not in long_rows]
        if short_rows:
            rows = torch.tensor(short_rows, device=batch.lengths.device)
            lengths = batch.lengths[rows]
            waveforms = batch.waveforms[rows, : int(lengths.max())]
            ids = [batch.ids[i] for i in short_rows]
            records.update(zip(short_rows, self._predict_batch(waveforms, lengths, ids), strict=True))
        for i in long_rows:
            records[i] = self.predict_long(batch.waveforms[i, : int(batch.lengths[i])], batch.ids[i],
                                           chunks_per_pass=len(batch))
        return [records[i] for i in range(len(batch))]

    @property
    def predict_budget(self) -> Budget | dict[str, Any]:
        """The budget of ``predict`` (``hparams.predict_budget``); set it to predict at another (checked)."""
        return self.hparams.predict_budget

    @predict_budget.setter
    def predict_budget(self, budget: Budget | dict[str, Any]) -> None:
        check_predict_budget(budget, self.backbone.config, self.num_layers)
        self.hparams.predict_budget = budget.item() if isinstance(budget, np.generic) else budget  # a YAML number

    def predict_target(self) -> Target | None:
        """``predict_budget`` as a :class:`~ldrop.budgets.Target` (its profile file is read once), or ``None``."""
        budget = self.hparams.predict_budget
        return Target.parse(budget) if is_target(budget) else None

    def predict_budget_with_fields(self, lengths: Tensor) -> tuple[Budget, list[dict[str, Any]]]:
        """``predict_budget`` for inputs of ``lengths`` samples and, per input, what a record says about it.

        Returns:
            ``(budget, fields)``: the budget ``logits_at_budget`` takes (a ``[batch]`` tensor under a target:
            the controller picks ``k`` per input) and per input ``{"budget": k}``, plus under a target
            ``"target"``, ``"meets_target"`` and (time targets) ``"predicted_ms"``.
        """
        target = self.predict_target()
        if target is None:
            budget = self.hparams.predict_budget
            return budget, [{"budget": budget_to_layers(budget, self.num_layers)} for _ in range(len(lengths))]
        if self.budget_provider is None:
            raise ValueError(f"predict_budget is a target ({target.kind}={target.value:g}): add the "
                             "ldrop.runtime.TargetBudgets callback to the Trainer (ldrop predict adds it)")
        decision = self.budget_provider(lengths)
        name, timed = f"{target.kind}={target.value:g}", target.kind in ("ms", "rtf")
        # a FLOPs target's prediction is the exact "gflops" of the record
        return decision.budget.to(lengths.device), [
            {"budget": k, "target": name, "meets_target": meets, **({"predicted_ms": 1000.0 * seconds} if timed else {})}
            for k, meets, seconds in zip(decision.budget.tolist(), decision.meets_target.tolist(),
                                         decision.predicted_seconds.tolist(), strict=True)]

    def _run_predict_budget(self, waveforms: Tensor, lengths: Tensor) -> tuple[Any, Tensor, BatchCost, list[dict]]:
        """``(encoded, logits, cost, records)`` of ``waveforms`` at ``predict_budget``; a record per input
        without its id and output (``budget``, ``executed_layers``, ``gflops``, the target's fields)."""
        encoded = self.encode(waveforms, lengths)
        budget, fields = self.predict_budget_with_fields(encoded.lengths)
        if not (self.depth.skips_layers or self._said_full_depth) and min(f["budget"] for f in fields) < self.num_layers:
            self._said_full_depth = True  # once per model
            warnings.warn(full_depth_warning(self.num_layers, self.hparams.predict_budget), stacklevel=2)
        logits, keep, _ = self.logits_at_budget(encoded, budget)
        cost = BatchCost.of(self, encoded, keep, budget)
        masks, flops = cost.mask.cpu(), cost.flops.tolist()  # one device read per batch, not one per input
        return encoded, logits, cost, [
            {"budget": field.pop("budget"), "executed_layers": masks[i].nonzero().flatten().tolist(),
             "gflops": flops[i] / 1e9, **field} for i, field in enumerate(fields)]

    def _predict_batch(self, waveforms: Tensor, lengths: Tensor, ids: list[Any]) -> list[dict[str, Any]]:
        encoded, logits, _, records = self._run_predict_budget(waveforms, lengths)
        outputs = self.decode(logits, encoded.frame_mask)
        return [{"id": item_id, "output": output, **record}
                for item_id, output, record in zip(ids, outputs, records, strict=True)]

    @property
    def frame_hop(self) -> int:
        """Samples between consecutive encoder frames (320 at the usual 16 kHz configuration)."""
        return frame_hop(self.backbone.config)

    def chunk_spans(self, num_samples: int) -> list[tuple[int, int]]:
        """``(start, end)`` sample spans predict splits an input of ``num_samples`` into (one span if short).

        Chunks are ``predict_chunk_seconds`` long and start every ``chunk - overlap`` samples, rounded down
        to whole frame hops so that chunk frames line up with the frames of the whole input; the last chunk
        is moved back to end at the input's end (it is never a short leftover). Consecutive chunks share at
        least ``receptive_field - frame_hop`` samples, so every frame of the whole input is in some chunk.
        """
        seconds = self.hparams.predict_chunk_seconds
        if seconds is None:
            return [(0, num_samples)]
        rate = self.sample_rate
        chunk = int(round(seconds * rate))
        if num_samples <= chunk:
            return [(0, num_samples)]
        hop, field_ = self.frame_hop, self.backbone.receptive_field
        if chunk < field_:
            raise ValueError(f"predict_chunk_seconds={seconds} is shorter than the CNN's receptive field "
                             f"({field_} samples at {rate} Hz)")
        overlap = max(int(round(self.hparams.predict_chunk_overlap_seconds * rate)), field_ - hop)
        step = max(hop, (chunk - overlap) // hop * hop)
        last = (num_samples - chunk) // hop * hop
        starts = [start for start in range(0, num_samples - chunk, step) if start < last]
        return [(start, start + chunk) for start in starts] + [(last, num_samples)]

    def chunk_frames_kept(self, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Per chunk, the ``[first, last)`` of its own frames kept when joining frame-level outputs.

        Each overlap between neighbours is split in the middle (as Hugging Face's ASR pipeline drops its
        ``stride_length_s`` on each side), so the kept frames tile the whole input's frames exactly once.
        """
        hop = self.frame_hop
        offsets = [start // hop for start, _ in spans]
        counts = self.backbone.frame_lengths(torch.tensor([end - start for start, end in spans])).tolist()
        cuts = [0, *((offsets[i] + offsets[i - 1] + counts[i - 1]) // 2 for i in range(1, len(spans))),
                offsets[-1] + counts[-1]]
        return [(cuts[i] - offsets[i], cuts[i + 1] - offsets[i]) for i in range(len(spans))]

    def merge_chunk_logits(self, logits: list[Tensor], spans: list[tuple[int, int]]) -> Tensor:
        """One input's logits from its chunks' (``[classes]`` or ``[frames, vocab]`` each, real frames only).

        Utterance-level logits are averaged, weighted by chunk length in samples; frame-level logits are
        joined, each chunk contributing the frames of :meth:`chunk_frames_kept`. Returns ``[1, ...]``.
        """
        if logits[0].dim() == 1:
            weights = torch.tensor([float(end - start) for start, end in spans], device=logits[0].device)
            stacked = torch.stack([x.float() for x in logits])
            return ((stacked * weights[:, None]).sum(0) / weights.sum())[None].to(logits[0].dtype)
        kept = self.chunk_frames_kept(spans)
        return torch.cat([x[first:last] for x, (first, last) in zip(logits, kept, strict=True)])[None]

    def predict_long(self, waveform: Tensor, item_id: Any, chunks_per_pass: int = 1) -> dict[str, Any]:
        """Predict one long input in chunks, each through the same selector/budget path as a short input.

        Args:
            waveform: ``[samples]`` the input's real samples.
            item_id: its id.
            chunks_per_pass: chunks run together in one forward pass (bounds memory: about this many
                chunk-length inputs at a time).
        """
        spans = self.chunk_spans(int(waveform.shape[0]))
        chunk_logits: list[Tensor] = []
        records: list[dict[str, Any]] = []  # per chunk, as a short input's
        total_flops = 0.0
        for first in range(0, len(spans), max(1, chunks_per_pass)):
            group = spans[first : first + max(1, chunks_per_pass)]
            lengths = torch.tensor([end - start for start, end in group], device=waveform.device)
            waves = waveform.new_zeros(len(group), int(lengths.max()))
            for row, (start, end) in enumerate(group):
                waves[row, : end - start] = waveform[start:end]
            encoded, logits, cost, group_records = self._run_predict_budget(waves, lengths)
            total_flops += float(cost.flops.sum())
            frames = encoded.frame_mask.sum(1).tolist()
            chunk_logits += [logits[row] if logits.dim() == 2 else logits[row, :n] for row, n in enumerate(frames)]
            records += group_records
        merged = self.merge_chunk_logits(chunk_logits, spans)
        frame_mask = torch.ones(merged.shape[:2] if merged.dim() == 3 else (1, 1), dtype=torch.bool,
                                device=merged.device)
        record: dict[str, Any] = {
            "id": item_id,
            "output": self.decode(merged, frame_mask)[0],
            "budget": min(r["budget"] for r in records),
            "executed_layers": sorted({layer for r in records for layer in r["executed_layers"]}),
            "gflops": total_flops / 1e9,
        }
        if "target" in records[0]:
            record["target"] = records[0]["target"]
            record["meets_target"] = all(r["meets_target"] for r in records)
            if "predicted_ms" in records[0]:
                record["predicted_ms"] = sum(r["predicted_ms"] for r in records)
        rate = self.sample_rate
        record["chunks"] = [{"start_s": start / rate, "end_s": end / rate, "budget": r["budget"],
                             "executed_layers": r["executed_layers"]}
                            for (start, end), r in zip(spans, records, strict=True)]
        return record
