"""``AdaptiveModel``: a trained ldrop model that meets a latency, real-time or FLOPs target per call.

    >>> model = AdaptiveModel.from_pretrained("runs/ldrop/version_0/checkpoints/last.ckpt")  # doctest: +SKIP
    >>> out = model(waveform, target={"ms": 80})  # doctest: +SKIP

Each call picks per-input budgets with a :class:`~ldrop.budgets.BudgetController`, runs the sparse forward and
feeds the measured time back, so the next call adapts to the machine's current speed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from ldrop.budgets import QUICK_GRID, BudgetController, DeviceProfile, profile_model, resolve_budget
from ldrop.budgets.loop import ClosedLoopModel
from ldrop.budgets.profile import precision_name
from ldrop.budgets.targets import Target, is_target
from ldrop.engine import layer_guard
from ldrop.engine.flops import decision_flops
from ldrop.runtime.checkpoints import load_model
from ldrop.runtime.onnx_runtime import RunOutput
from ldrop.tasks import LayerDropTask
from ldrop.tasks.cost import own_flops
from ldrop.tasks.uncalibrated import warn_if_uncalibrated
from ldrop.tasks.waveforms import as_batch

log = logging.getLogger(__name__)


class AdaptiveOutput(RunOutput[Tensor]):
    """One call of :class:`AdaptiveModel`, in tensors."""


class AdaptiveModel(ClosedLoopModel):
    """A trained ldrop model whose depth follows a target: ``ms`` per utterance, ``rtf`` or FLOPs rate.

    The model runs in its parameters' dtype (``task.to(torch.bfloat16)``: bf16 end to end);
    ``autocast=torch.bfloat16`` keeps float32 weights and runs under ``torch.autocast``. A profile should be
    measured the same way; ``logits`` are float32 either way.

    Args:
        profile: a :class:`DeviceProfile` or its JSON path (``ldrop profile``); ``None`` measures a quick one
            at the first time target.
        closed_loop: correct the profile with measured times (``False``: open loop).
        margin: fraction of a time target kept free for noise.
        on_unmeetable: ``"min"`` (one layer and a warning) or ``"raise"``.
        sample_rate: samples per second of the waveforms given, for ``rtf`` and FLOPs-rate targets (``None``:
            the backbone's rate). Waveforms are not resampled, so another rate than the backbone's is a
            ``ValueError``: resample them first (``torchaudio.functional.resample``).
        autocast: run float32 weights under ``torch.autocast`` with this dtype (e.g. ``torch.bfloat16``;
            ``None``: the parameters' dtype).
        guard: under a time target in closed loop, start no layer that would end past the target (measured
            within the call, :class:`~ldrop.budgets.DeadlineGuard`); the layers it skips are not in
            ``keep_mask``. Early exit runs its exits' layers whole.
        **controller_options: further :class:`BudgetController` options (``alpha_up``, ...).
    """

    def __init__(
        self, model: LayerDropTask, profile: DeviceProfile | str | os.PathLike | None = None,
        closed_loop: bool = True, margin: float = 0.1, on_unmeetable: Literal["min", "raise"] = "min",
        sample_rate: int | None = None, autocast: torch.dtype | None = None, guard: bool = True,
        **controller_options: Any,
    ) -> None:
        if autocast is not None and not isinstance(autocast, torch.dtype):
            raise ValueError(f"autocast must be a torch dtype (e.g. torch.bfloat16) or None, got {autocast!r}")
        if isinstance(model, str | os.PathLike):
            raise ValueError(f"AdaptiveModel takes a loaded model: AdaptiveModel.from_pretrained({str(model)!r}) "
                             "loads one from its file")
        self.autocast = autocast
        self.model = model.eval()
        if profile is not None and not isinstance(profile, DeviceProfile):
            profile = DeviceProfile.load(profile)
        if sample_rate is not None and sample_rate != model.backbone.sample_rate:
            raise ValueError(f"sample_rate={sample_rate}, but the model reads {model.backbone.sample_rate} Hz audio "
                             f"and AdaptiveModel does not resample: resample the waveforms to "
                             f"{model.backbone.sample_rate} Hz (torchaudio.functional.resample)")
        sample_rate = int(sample_rate or model.backbone.sample_rate)
        self.controller = BudgetController(
            model.num_layers, profile, flops_config=model.backbone.config,
            extra_fixed_flops=functools.partial(decision_flops, model), closed_loop=closed_loop,
            margin=margin, on_unmeetable=on_unmeetable, sample_rate=sample_rate,
            min_budget=max(1, getattr(model, "prefix_layers", 0), int(controller_options.pop("min_budget", 1))),
            precision=precision_name(next(model.parameters()).dtype, autocast),
            device=next(model.parameters()).device, **controller_options,
        )
        if profile is not None and (warning := self.controller.profile_warning(profile)):
            warnings.warn(warning, stacklevel=2)
        self.sample_rate, self.guard = sample_rate, guard
        self.clock = time.perf_counter  # the timer of calls and of the guard

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, profile: DeviceProfile | str | None = None,
                        **kwargs: Any) -> AdaptiveModel:
        """Load from a ``.ckpt`` (``ldrop fit``) or an exported folder (``ldrop export``)."""
        return cls(load_model(path), profile=profile, **kwargs)

    _resolve_budget = staticmethod(resolve_budget)

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    @property
    def skips_layers(self) -> bool:
        return self.model.depth.skips_layers

    def _measure_profile(self, **grid: Any) -> DeviceProfile:
        """A quick profile of this model (``QUICK_GRID``, or ``grid``), measured now (:meth:`ensure_profile`)."""
        options = {**QUICK_GRID, **grid}
        log.info("no device profile given: measuring a quick one (%s)", options)
        with self._precision(next(self.model.parameters()).device):
            return profile_model(self.model, sample_rate=self.sample_rate, **options)

    def _precision(self, device: torch.device) -> contextlib.AbstractContextManager:
        """``torch.autocast`` with :attr:`autocast` on ``device``, or nothing."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast)

    def _clock(self, device: torch.device) -> Callable[[], float]:
        """:attr:`clock`, after the device's queued work (CUDA) has finished."""
        if device.type != "cuda":
            return self.clock
        return lambda: (torch.cuda.synchronize(device), self.clock())[1]

    def __call__(self, waveforms: Tensor | Sequence[Any], target: Any = None,
                 lengths: Tensor | None = None) -> AdaptiveOutput:
        """Run one utterance, a padded batch (with ``lengths``) or a list of clips or audio file paths under
        ``target``.

        ``target``: ``{"ms": 80}``, ``{"rtf": 0.1}``, ``{"gflops_per_second": 2.0}`` (or ``"rtf=0.1"``) or a
        plain budget; ``None`` runs every layer.
        """
        waves, lengths = as_batch(waveforms, lengths, self.sample_rate)
        parsed, profile = self._parse_target(target)
        model = self.model
        warn_if_uncalibrated(model, target)  # a loaded model warns in its forward, which this call does not run
        param = next(model.parameters())
        waves_d, lengths_d = waves.to(param.device, param.dtype), lengths.to(param.device)
        correction, guard = self.controller.correction, None
        with torch.inference_mode(), self._precision(param.device):
            clock = self._clock(param.device)
            start = clock()
            encoded = model.encode(waves_d, lengths_d)
            if parsed is not None and parsed.kind in ("ms", "rtf"):  # the fixed part's time: the speed now
                budget, correction, guard = self._plan(lengths, parsed, profile, start, clock,
                                                       int(getattr(model, "prefix_layers", 0)), not model.depth.exit_layers)
            else:
                budget = self.budget_for(lengths, target)[0]
            with layer_guard(guard):
                logits, keep, _ = model.logits_at_budget(encoded, budget.to(param.device))
            measured = clock() - start
            logits = logits.float()  # metrics, softmax and decoding get float32 whatever the precision
            outputs = model.decode(logits, encoded.frame_mask)
        keep = (keep.detach() > 0.5).float().cpu()
        if guard is not None:
            keep[:, guard.skipped] = 0.0
        predicted_ms = self._feedback(lengths, keep, measured, correction, profile)
        return AdaptiveOutput(outputs, logits, encoded.frame_mask, keep, keep.sum(1).long(), budget, predicted_ms, 1000.0 * measured,
                              self.controller.correction, parsed)

    def sweep(self, batches: Iterable[Any], targets: Sequence[Any]) -> list[dict[str, Any]]:
        """A sweep over targets on ``batches`` (with targets): one row per target, the correction restarted
        for each.

        Rows hold mean layers, mean and p95 ms per batch, the miss rate (``ms``: the batch over the target
        times its size, as ``ldrop test``;
        ``rtf``: over ``rtf x`` its audio; FLOPs: any input over its allowance) and the task metrics.
        """
        from ldrop.engine.flops import count_forward_flops

        batches = list(batches)
        rows = []
        for target in targets:
            parsed = Target.parse(target) if is_target(target) else None
            self.controller.reset()
            metrics = self.model._metrics_on_device()
            times, layers, misses = [], [], 0
            for batch in batches:
                out = self(batch.waveforms, target, lengths=batch.lengths)
                times.append(out.measured_ms)
                layers.append(out.layers_run.float())
                on_device = batch.to(out.logits.device) if hasattr(batch, "to") else batch  # CUDA: the targets too
                self.model.update_metrics(metrics, out.logits, out.frame_mask, on_device)
                if parsed is not None and parsed.kind == "ms":
                    misses += out.measured_ms > parsed.value * len(batch.lengths)  # the batch's allowance
                elif parsed is not None and parsed.kind == "rtf":
                    misses += out.measured_ms / 1000 > parsed.value * float(batch.lengths.sum()) / self.sample_rate
                elif parsed is not None:
                    own = own_flops(self.model, out.keep_mask, out.frame_mask.sum(1).cpu(), out.budget)
                    flops = count_forward_flops(self.model.backbone.config, batch.lengths, out.keep_mask, own).total
                    allowance = parsed.value * 1e9 * batch.lengths.double() / self.sample_rate
                    misses += bool((flops > allowance * (1 + 1e-9)).any())
            ordered = sorted(times)
            row = {
                "target": f"{parsed.kind}={parsed.value:g}" if parsed else str(target),
                "layers_run": float(torch.cat(layers).mean()), "ms_per_batch": sum(times) / len(times),
                "p95_ms_per_batch": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
                "miss_rate": misses / len(batches) if parsed is not None else None,
            }
            row.update({name: float(m.compute()) for name, m in metrics.items()})
            rows.append(row)
        return rows
