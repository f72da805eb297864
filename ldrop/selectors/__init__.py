"""Layer selectors: input features + budget -> which encoder layers each sample runs."""

from .base import CalibrationData, LayerSelector, SelectorInputs, SelectorOutput
from .calibration import ThresholdCalibration
from .diagnostics import mask_diversity, most_common_mask_for_all, shuffle_masks
from .fallback import InputBlindFallback
from .filterbank import LogMelFrontend
from .input_conditioned import InputConditionedSelector
from .random import RandomSelector
from .schedule import LearnedScheduleSelector
from .spec import SelectorFactory, build_selector, selector_spec
from .static import StaticSelector, evenly_spaced_layers, greedy_subset_search
from .topk import (
    TopKSelector,
    annealed_temperature,
    calibrate_threshold,
    gumbel_like,
    hard_topk_mask,
    relaxed_topk_mask,
    straight_through_topk,
    threshold_mask,
)

__all__ = [
    "CalibrationData",
    "SelectorInputs",
    "InputBlindFallback",
    "InputConditionedSelector",
    "LayerSelector",
    "LearnedScheduleSelector",
    "LogMelFrontend",
    "RandomSelector",
    "SelectorFactory",
    "SelectorOutput",
    "StaticSelector",
    "ThresholdCalibration",
    "TopKSelector",
    "annealed_temperature",
    "build_selector",
    "calibrate_threshold",
    "evenly_spaced_layers",
    "greedy_subset_search",
    "gumbel_like",
    "hard_topk_mask",
    "mask_diversity",
    "most_common_mask_for_all",
    "relaxed_topk_mask",
    "selector_spec",
    "shuffle_masks",
    "straight_through_topk",
    "threshold_mask",
]
