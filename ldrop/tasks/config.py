"""Typed groups of a task's arguments (``model.init_args.<group>.<field>`` in YAML), each with its one job:
optimisation (:class:`OptimizerConfig`), budget sampling (:class:`BudgetSampling`), self-distillation
(:class:`DistillationConfig`). Early exit has its own (:class:`~ldrop.tasks.early_exit.EarlyExitConfig`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Config = TypeVar("Config")


def lr_schedule(kind: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate at a step: linear warm-up, then the named decay.

    ``tri_stage`` follows the wav2vec 2.0 fine-tuning recipe: warm-up, hold until 50% of training, then
    exponential decay to 5% of the peak.
    """
    if kind not in ("linear", "tri_stage", "constant"):
        raise ValueError(f"schedule must be 'linear', 'tri_stage' or 'constant', got {kind!r}")
    warmup_steps = max(0, min(warmup_steps, total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if kind == "constant":
            return 1.0
        if kind == "linear":
            return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
        hold_end = max(warmup_steps, total_steps // 2)
        if step < hold_end:
            return 1.0
        progress = min(1.0, (step - hold_end) / max(1, total_steps - hold_end))
        return math.exp(math.log(0.05) * progress)

    return factor


def as_config(kind: type[Config], value: Config | dict[str, Any] | None) -> Config | None:
    """``value`` as a ``kind`` instance (a checkpoint stores each group as a dict; ``None`` stays ``None``)."""
    return kind(**value) if isinstance(value, dict) else value


def as_dict(config: Any) -> dict[str, Any] | None:
    """What the checkpoint's hyper-parameters store for a group: its fields as a dict (``None`` stays)."""
    return dataclasses.asdict(config) if config is not None else None


def check_method(has_selector: bool, early_exit: object | None, allocation: object | None) -> None:
    """A ``ValueError`` for parts of a method that do not go together."""
    if early_exit is not None and has_selector:
        raise ValueError("early_exit is a method of its own: leave selector unset (None)")
    if allocation is not None and not has_selector:
        raise ValueError("allocation needs a selector: it picks the layers at each input's depth")


def check_choices(config: Any, group: str) -> None:
    """A ``ValueError`` naming ``<group>.<field>`` for a field of ``config`` outside its ``Literal`` hint's choices."""
    for name, hint in get_type_hints(type(config)).items():
        choices = get_args(hint) if get_origin(hint) is Literal else ()
        if choices and getattr(config, name) not in choices:
            raise ValueError(f"{group}.{name} must be one of {choices}, got {getattr(config, name)!r}")


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW and its learning-rate schedule (``model.init_args.optimization``).

    Attributes:
        lr: learning rate of the backbone.
        head_lr: learning rate of the head(s) and any module a subclass adds (``None``: ``lr``).
        selector_lr: learning rate of the selector (``None``: ``head_lr``).
        weight_decay: AdamW weight decay.
        warmup: warm-up steps (int) or fraction of all training steps (float).
        schedule: after warm-up: ``"linear"`` decay to 0, ``"tri_stage"`` (hold, then exponential decay to
            5%), or ``"constant"``.
    """

    lr: float = 5e-5
    head_lr: float | None = 1e-3
    selector_lr: float | None = None
    weight_decay: float = 0.01
    warmup: int | float = 0.1
    schedule: Literal["linear", "tri_stage", "constant"] = "linear"

    def __post_init__(self) -> None:
        check_choices(self, "optimization")
        for name in ("lr", "head_lr", "selector_lr", "weight_decay"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"optimization.{name} must be a finite number >= 0, got {value!r}")
        fraction = isinstance(self.warmup, float)
        if not (0.0 <= self.warmup <= 1.0 if fraction else isinstance(self.warmup, int) and self.warmup >= 0):
            raise ValueError(f"optimization.warmup is warm-up steps (an int >= 0) or a fraction of all steps (a float "
                             f"in [0, 1]), got {self.warmup!r}")

    def configure(self, module: nn.Module, backbone: nn.Module, selector: nn.Module | None,
                  total_steps: float) -> dict[str, Any]:
        """Lightning's ``configure_optimizers`` answer: three parameter groups (backbone, selector, the rest)
        and the per-step warm-up/decay schedule over ``total_steps`` (``math.inf``: a fit without a set length, for
        which only the ``constant`` schedule with a warm-up in steps works; else a ``ValueError`` naming
        ``--trainer.max_steps``)."""
        if math.isinf(total_steps):
            self._check_open_ended()
        head_lr = self.lr if self.head_lr is None else self.head_lr  # 0 freezes, as the backbone's lr 0 does
        backbone_ids = {id(p) for p in backbone.parameters()}
        selector_ids = {id(p) for p in selector.parameters()} if selector is not None else set()
        trainable = [p for p in module.parameters() if p.requires_grad]
        groups = [{"params": params, "lr": lr, "name": name} for name, params, lr in (  # lr-AdamW/<name> in the logs
            ("backbone", [p for p in trainable if id(p) in backbone_ids], self.lr),
            ("head", [p for p in trainable if id(p) not in backbone_ids and id(p) not in selector_ids], head_lr),
            ("selector", [p for p in trainable if id(p) in selector_ids],
             head_lr if self.selector_lr is None else self.selector_lr),
        ) if params]
        optimizer = torch.optim.AdamW(groups, weight_decay=self.weight_decay)
        warmup_steps = int(round(self.warmup * total_steps)) if isinstance(self.warmup, float) else int(self.warmup)
        # LambdaLR with a closed form rather than LinearLR + SequentialLR: one function covers the three
        # schedules exactly (chained LinearLR multiplies per step and drifts), and tri_stage has no built-in.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(self.schedule, warmup_steps, total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _check_open_ended(self) -> None:
        fraction = isinstance(self.warmup, float) and self.warmup > 0
        needs = [f"schedule {self.schedule!r}"] * (self.schedule != "constant")
        needs += [f"warmup {self.warmup} (a fraction of all steps)"] * fraction
        if needs:
            fixes = ["--trainer.max_steps N (the optimizer steps)", *["schedule constant"] * (self.schedule != "constant"),
                     *["a warmup in steps (an int)"] * fraction]
            raise ValueError(f"optimization.{' and '.join(needs)} {'needs' if len(needs) == 1 else 'need'} the fit's "
                             "length, which --trainer.max_epochs -1 without --trainer.max_steps leaves open: give "
                             + ", or ".join(fixes))


@dataclass(frozen=True)
class BudgetSampling:
    """Budgets of training and validation (``model.init_args.budgets``); ints are layers, floats fractions.

    Attributes:
        train: budgets sampled (uniformly, once per batch) in training; ``None``: every ``k`` in ``1..N``.
            One trained model serves every budget.
        full_depth_prob: extra probability of training a batch at full depth.
        validation: budgets evaluated at validation (metric logged as ``val/<metric>@<k>``); ``None``: every
            ``k`` in ``1..N``.
    """

    train: list[int | float] | None = None
    full_depth_prob: float = 0.1
    validation: list[int | float] | None = field(default_factory=lambda: [0.25, 0.5, 1.0])

    def __post_init__(self) -> None:
        if not 0.0 <= self.full_depth_prob <= 1.0:
            raise ValueError(f"budgets.full_depth_prob must be in [0, 1], got {self.full_depth_prob}")


@dataclass(frozen=True)
class DistillationConfig:
    """Self-distillation from the full-depth pass (``model.init_args.distillation``).

    Attributes:
        weight: weight of the KL term (0: off); the teacher runs without gradient.
        temperature: softmax temperature of that KL.
    """

    weight: float = 0.0
    temperature: float = 1.0

    def loss(self, student: Tensor, teacher: Tensor, frame_mask: Tensor) -> Tensor:
        """``weight`` x KL(teacher || student) over classes, averaged over samples (and real frames).

        Args:
            student, teacher: ``[batch, classes]`` or ``[batch, frames, classes]`` logits.
            frame_mask: ``[batch, frames]`` bool, True on real frames.
        """
        tau = self.temperature
        kl = F.kl_div((student.float() / tau).log_softmax(-1), (teacher.float() / tau).log_softmax(-1),
                      log_target=True, reduction="none").sum(-1)
        if kl.dim() == 2:
            weights = frame_mask.to(kl.dtype)
            kl = (kl * weights).sum(1) / weights.sum(1).clamp(min=1)
        return self.weight * kl.mean() * tau**2
