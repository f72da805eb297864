"""Run-time use of a trained model: loading it (``checkpoints``), the streaming ``AdaptiveModel`` that meets a
target per call, the ``TargetBudgets`` predict callback, and the ONNX export (``onnx_export``) with its
``OnnxAdaptiveModel`` on ONNX Runtime.

Imports point one way: runtime knows the tasks, the budgets, the engine and the backbones; nothing in
ldrop below ``ldrop.cli`` and ``ldrop.bench`` imports runtime. The names are imported on first use:
``OnnxAdaptiveModel`` runs without torch.
"""

import importlib

#: Public name -> the module that defines it.
_EXPORTS = {
    **dict.fromkeys(("AdaptiveModel", "AdaptiveOutput"), "ldrop.runtime.adaptive"),
    **dict.fromkeys(("UncalibratedSelectorWarning", "load_exported", "load_model", "load_task_checkpoint",
                     "warn_if_uncalibrated"), "ldrop.runtime.checkpoints"),
    "TargetBudgets": "ldrop.runtime.targets",
    **dict.fromkeys(("OnnxAdaptiveModel", "OnnxOutput"), "ldrop.runtime.onnx_runtime"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ldrop.runtime' has no attribute {name!r}")
