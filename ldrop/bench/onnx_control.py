"""``python -m ldrop.bench control --runtime onnx``: the same stream and policies on ONNX Runtime.

The benchmark's model is exported (:func:`~ldrop.runtime.onnx_export.export_onnx`, into a temporary
folder), profiled on ONNX Runtime (:func:`~ldrop.runtime.onnx_profile.profile_onnx`) and every policy runs
an :class:`~ldrop.runtime.OnnxAdaptiveModel` sharing the loaded graphs, each with its own controller.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ldrop.runtime.onnx_export import export_onnx
from ldrop.runtime.onnx_profile import profile_onnx
from ldrop.runtime.onnx_runtime import OnnxAdaptiveModel
from ldrop.tasks import LayerDropTask


def onnx_runtime(task: LayerDropTask, threads: int | None, export_dir: str | None = None
                 ) -> tuple[OnnxAdaptiveModel, Callable[..., OnnxAdaptiveModel], Callable[..., Any]]:
    """``(model, runner(model, **controller options), profile(model, **grid))`` for the control benchmark.

    ``export_dir``: an export of ``task`` to reuse, or where to write it (default: a temporary folder).
    """
    scratch = None
    if export_dir is None:
        scratch = tempfile.TemporaryDirectory(prefix="ldrop-control-onnx-")
        export_dir = str(Path(scratch.name) / "model")
    if not (Path(export_dir) / "manifest.json").is_file():
        export_onnx(task, export_dir, progress=lambda line: print(line, flush=True))
    model = OnnxAdaptiveModel(export_dir, threads=threads)
    model._temporary = scratch  # a temporary folder lives as long as the model

    def runner(onnx_model: OnnxAdaptiveModel, **options: Any) -> OnnxAdaptiveModel:
        return onnx_model.with_controller(**options)

    def profile(onnx_model: OnnxAdaptiveModel, **grid: Any) -> Any:
        return profile_onnx(onnx_model, threads=threads, **grid)

    return model, runner, profile
