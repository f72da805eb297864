"""Gated execution of encoder layers and compute accounting (plain PyTorch, no Lightning)."""

from ldrop.engine.flops import ForwardFlops, count_forward_flops, layer_flops
from ldrop.engine.gated import ExecutionMode, check_keep_mask, run_gated_layers, run_prefix_layers

__all__ = ["ExecutionMode", "check_keep_mask", "run_gated_layers", "run_prefix_layers"]
__all__ += ["ForwardFlops", "count_forward_flops", "layer_flops"]
