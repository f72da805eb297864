"""Run-time use of a trained model: loading (``checkpoints``), ``AdaptiveModel``, the ``TargetBudgets``
callback and the ONNX export with ``OnnxAdaptiveModel`` (which runs without torch)."""

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
