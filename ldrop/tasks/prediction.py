"""Prediction: per-input records (output, executed layers, GFLOPs), budget targets, and long inputs
predicted in chunks so that memory stays bounded."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ldrop.engine.flops import count_forward_flops
from ldrop.tasks.budget import is_target
from ldrop.tasks.gating import EncodedBatch


class PredictionMixin:
    """The predict side of :class:`~ldrop.tasks.LayerDropTask` (mixed into it)."""

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """Per input: id, output (transcript or label), executed layers and GFLOPs.

        Inputs longer than ``predict_chunk_seconds`` are predicted in chunks (:meth:`predict_long`); their
        record also lists the chunks (``start_s``, ``end_s``, ``executed_layers``), ``executed_layers`` is the
        union over chunks and ``gflops`` the sum.
        """
        long_rows = [i for i, n in enumerate(batch.lengths.tolist()) if len(self.chunk_spans(n)) > 1]
        if not long_rows:
            return self._predict_batch(batch.waveforms, batch.lengths, list(batch.ids))
        records: list[dict[str, Any] | None] = [None] * len(batch)
        short_rows = [i for i in range(len(batch)) if i not in long_rows]
        if short_rows:
            rows = torch.tensor(short_rows, device=batch.lengths.device)
            lengths = batch.lengths[rows]
            waveforms = batch.waveforms[rows, : int(lengths.max())]
            for i, record in zip(short_rows, self._predict_batch(waveforms, lengths, [batch.ids[i] for i in short_rows]),
                                 strict=True):
                records[i] = record
        for i in long_rows:
            records[i] = self.predict_long(batch.waveforms[i, : int(batch.lengths[i])], batch.ids[i],
                                           chunks_per_pass=len(batch))
        return records  # type: ignore[return-value]

    def predict_budget_for(self, encoded: EncodedBatch) -> int | float | Tensor:
        """``predict_budget`` for an encoded batch; a target (``{rtf: 0.1}``, ...) becomes a per-input budget."""
        budget = self.hparams.predict_budget
        if is_target(budget):  # a latency / real-time / FLOPs target: the controller picks k per input
            from ldrop.runtime.controller import target_budget

            return target_budget(self, encoded.lengths, budget)
        return budget

    def _predict_batch(self, waveforms: Tensor, lengths: Tensor, ids: list[Any]) -> list[dict[str, Any]]:
        encoded = self.encode(waveforms, lengths)
        logits, keep, _ = self.logits_at_budget(encoded, self.predict_budget_for(encoded))
        hard = (keep.detach() > 0.5).float()
        selector_flops = self.selector.flops(encoded.frame_mask.sum(1)) if self.selector is not None else None
        flops = count_forward_flops(self.backbone.config, encoded.lengths, hard, selector_flops).total
        outputs = self.decode(logits, encoded.frame_mask)
        return [
            {
                "id": item_id,
                "output": output,
                "executed_layers": hard[i].nonzero().flatten().tolist(),
                "gflops": float(flops[i]) / 1e9,
            }
            for i, (item_id, output) in enumerate(zip(ids, outputs, strict=True))
        ]

    @property
    def frame_hop(self) -> int:
        """Samples between consecutive encoder frames (320 at the usual 16 kHz configuration)."""
        return math.prod(int(s) for s in self.backbone.config.conv_stride)

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
        cuts = [0]
        for i in range(1, len(spans)):
            cuts.append((offsets[i] + offsets[i - 1] + counts[i - 1]) // 2)
        cuts.append(offsets[-1] + counts[-1])
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
        chunks: list[dict[str, Any]] = []
        total_flops = 0.0
        rate = self.sample_rate
        for first in range(0, len(spans), max(1, chunks_per_pass)):
            group = spans[first : first + max(1, chunks_per_pass)]
            lengths = torch.tensor([end - start for start, end in group], device=waveform.device)
            waves = waveform.new_zeros(len(group), int(lengths.max()))
            for row, (start, end) in enumerate(group):
                waves[row, : end - start] = waveform[start:end]
            encoded = self.encode(waves, lengths)
            logits, keep, _ = self.logits_at_budget(encoded, self.predict_budget_for(encoded))
            hard = (keep.detach() > 0.5).float()
            selector_flops = self.selector.flops(encoded.frame_mask.sum(1)) if self.selector is not None else None
            flops = count_forward_flops(self.backbone.config, encoded.lengths, hard, selector_flops).total
            total_flops += float(flops.sum())
            frames = encoded.frame_mask.sum(1).tolist()
            for row, (start, end) in enumerate(group):
                chunk_logits.append(logits[row] if logits.dim() == 2 else logits[row, : frames[row]])
                chunks.append({"start_s": start / rate, "end_s": end / rate,
                               "executed_layers": hard[row].nonzero().flatten().tolist()})
        merged = self.merge_chunk_logits(chunk_logits, spans)
        frame_mask = torch.ones(merged.shape[:2] if merged.dim() == 3 else (1, 1), dtype=torch.bool,
                                device=merged.device)
        layers = sorted({layer for chunk in chunks for layer in chunk["executed_layers"]})
        return {
            "id": item_id,
            "output": self.decode(merged, frame_mask)[0],
            "executed_layers": layers,
            "gflops": total_flops / 1e9,
            "chunks": chunks,
        }
