"""Gated execution of encoder layers and compute accounting (plain PyTorch, no Lightning)."""

from ldrop.engine.flops import ForwardFlops, count_forward_flops, layer_flops
from ldrop.engine.gated import (
    ExecutionMode,
    LayerGuard,
    check_keep_mask,
    layer_guard,
    run_gated_layers,
    run_prefix_layers,
)

__all__ = ["ExecutionMode", "LayerGuard", "check_keep_mask", "layer_guard", "run_gated_layers", "run_prefix_layers"]
__all__ += ["ForwardFlops", "count_forward_flops", "layer_flops"]
