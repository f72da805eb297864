"""Layer budgets: an int (layers), a float (fraction of the stack), or a per-sample list or tensor of them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

Budget = int | float | Sequence[int | float] | Tensor


def budget_to_layers(budget: int | float, num_layers: int) -> int:
    """One budget as layers in ``1..num_layers``: an ``int`` counts layers, a ``float`` in ``(0, 1]`` is a
    fraction (rounded, at least one)."""
    if isinstance(budget, bool | np.bool_):
        raise ValueError(f"budget must be an int (layers) or a float (fraction), got {budget!r}")
    if isinstance(budget, int | np.integer):  # numpy's integers too
        if not 1 <= budget <= num_layers:
            raise ValueError(f"budget must be between 1 and {num_layers} layers, got {budget}")
        return int(budget)
    if isinstance(budget, float | np.floating):  # numpy's floats too
        if not (0.0 < budget <= 1.0) or math.isnan(budget):
            raise ValueError(f"a fractional budget must be in (0, 1], got {budget}")
        return max(1, min(num_layers, int(round(float(budget) * num_layers))))
    raise ValueError(f"budget must be an int, a float, a list or a tensor of them, got {type(budget).__name__}")


def resolve_budget(budget: Budget, num_layers: int, batch: int, device: torch.device | str = "cpu") -> Tensor:
    """A budget (int layers, float fraction, a list of them, one per input, or a ``[]``/``[batch]`` tensor of
    either) as ``[batch]`` long layer counts.

    Raises ``ValueError`` for out-of-range values or a tensor of the wrong shape, with what was expected.
    """
    if isinstance(budget, np.ndarray | np.generic):  # a numpy budget, as the ONNX runtime takes them
        budget = torch.as_tensor(budget)
    if isinstance(budget, list | tuple):  # one per input, each read as a single budget (int layers, float fraction)
        budget = torch.tensor([budget_to_layers(b, num_layers) for b in budget], dtype=torch.long)
    if not isinstance(budget, Tensor):
        return torch.full((batch,), budget_to_layers(budget, num_layers), dtype=torch.long, device=device)
    if budget.dtype == torch.bool:
        raise ValueError("a budget tensor holds layer counts (integers) or fractions (floats), not booleans")
    if budget.dim() == 0:
        budget = budget.expand(batch)
    if budget.dim() != 1 or budget.shape[0] != batch:
        raise ValueError(f"a budget tensor must have shape [] or [batch={batch}], got {tuple(budget.shape)}")
    if budget.is_floating_point():
        if bool(((budget <= 0) | (budget > 1) | budget.isnan()).any()):
            raise ValueError(f"a floating-point budget tensor holds fractions, each in (0, 1], got {budget.tolist()}")
        budget = (budget * num_layers).round().clamp(1, num_layers)
    elif bool(((budget < 1) | (budget > num_layers)).any()):
        raise ValueError(f"budget values must be between 1 and {num_layers} layers, got {budget.tolist()}")
    return budget.to(device=device, dtype=torch.long)


def budget_list(budgets: Sequence[int | float] | None, num_layers: int, name: str = "") -> list[int]:
    """Distinct layer counts, ascending, for a list of budgets (``None``: every ``k`` in ``1..N``); an error
    starts with the argument's ``name`` when one is given."""
    if budgets is None:
        return list(range(1, num_layers + 1))
    try:
        if len(budgets) == 0:
            raise ValueError("the list of budgets is empty")
        return sorted({budget_to_layers(b, num_layers) for b in budgets})
    except ValueError as err:
        raise ValueError(f"{name}: {err}" if name else str(err)) from None
