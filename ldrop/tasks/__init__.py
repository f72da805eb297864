"""Lightning task modules: the gating mixin, the shared task base, CTC and classification, and the labels
a task takes from its datamodule (``model_labels``)."""

from ldrop.selectors import build_selector, selector_spec
from ldrop.tasks.base import LayerDropTask, lr_schedule
from ldrop.tasks.classification import ClassificationTask, masked_mean
from ldrop.tasks.ctc import ENGLISH_CHARACTERS, CTCTask, build_vocabulary
from ldrop.tasks.early_exit import EarlyExit, EarlyExitConfig
from ldrop.tasks.gating import EncodedBatch, GatingMixin
from ldrop.tasks.labels import model_labels
from ldrop.tasks.statistics import SelectorStatistics

__all__ = [
    "CTCTask",
    "ClassificationTask",
    "ENGLISH_CHARACTERS",
    "EarlyExit",
    "EarlyExitConfig",
    "EncodedBatch",
    "GatingMixin",
    "LayerDropTask",
    "SelectorStatistics",
    "build_selector",
    "build_vocabulary",
    "lr_schedule",
    "masked_mean",
    "model_labels",
    "selector_spec",
]
