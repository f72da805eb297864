"""Lightning task modules: the shared task base, its depth policies (a selector and one head, depth allocation, or
early exit), CTC and classification, and the labels a task takes from its datamodule (``model_labels``)."""

from ldrop.selectors import build_selector, selector_spec
from ldrop.tasks.allocation import AllocatedLayers, AllocationConfig, DepthHead
from ldrop.tasks.base import LayerDropTask
from ldrop.tasks.classification import ClassificationTask, masked_mean
from ldrop.tasks.config import BudgetSampling, DistillationConfig, OptimizerConfig, lr_schedule
from ldrop.tasks.ctc import ENGLISH_CHARACTERS, CTCTask, build_vocabulary
from ldrop.tasks.depth import DepthPolicy, SelectedLayers
from ldrop.tasks.early_exit import EarlyExit, EarlyExitConfig
from ldrop.tasks.gating import EncodedBatch, GatingMixin
from ldrop.tasks.labels import model_labels
from ldrop.tasks.statistics import SelectorStatistics

__all__ = [
    "AllocatedLayers", "AllocationConfig", "BudgetSampling", "CTCTask", "ClassificationTask", "DepthHead",
    "DepthPolicy", "DistillationConfig", "ENGLISH_CHARACTERS", "EarlyExit", "EarlyExitConfig", "EncodedBatch", "GatingMixin", "LayerDropTask",
    "OptimizerConfig", "SelectedLayers", "SelectorStatistics",
    "build_selector", "build_vocabulary", "lr_schedule", "masked_mean", "model_labels",
    "selector_spec",
]
