"""A loaded model whose selector still needs its validation fit warns once, where it matters: at the first
call below full depth (at the caller's line), not at load, not in profiling, not once it is fitted."""

from __future__ import annotations

import warnings

import torch

from ldrop.budgets import profile_model
from ldrop.cli import main
from ldrop.runtime import UncalibratedSelectorWarning, load_model
from tests.helpers import tiny_classification_data

WAVES = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))


def _unfitted(caught) -> list[warnings.WarningMessage]:
    return [w for w in caught if issubclass(w.category, UncalibratedSelectorWarning)]


def test_loading_and_profiling_do_not_warn(tiny_checkpoint, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(tiny_checkpoint)
        profile_model(model, seconds=(0.5, 1.0), batch_sizes=(1, 2), repeats=1, warmup=0, validation_batches=1)
        assert main(["profile", str(tiny_checkpoint), "--seconds", "0.5,1", "--batch-sizes", "1,2", "--repeats",
                     "1", "--warmup", "0", "--validate", "1", "--out", str(tmp_path / "p.json")]) == 0
        with torch.no_grad():
            model(WAVES, None, model.num_layers)  # full depth: the fit changes nothing
            model(WAVES)
    assert not model.selector.calibrated
    assert not _unfitted(caught)


def test_the_first_call_below_full_depth_warns_once_at_the_callers_line(tiny_checkpoint):
    model = load_model(tiny_checkpoint)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        line = _line_after()
        model(WAVES, None, 2)
        model(WAVES, None, budget=0.5)
    [warning] = _unfitted(caught)
    assert (warning.filename, warning.lineno) == (__file__, line)  # the user's call, not ldrop or torch
    assert "calibrate_on_dataloader" in str(warning.message)


def test_a_model_fitted_on_validation_data_does_not_warn(tiny_checkpoint):
    model = load_model(tiny_checkpoint)
    data = tiny_classification_data()
    data.setup("validate")
    model.calibrate_on_dataloader(data.val_dataloader())
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        model(WAVES, None, 2)
    assert not _unfitted(caught)


def _line_after() -> int:
    """The line number after the caller's line."""
    import sys

    return sys._getframe(1).f_lineno + 1


def test_adaptive_model_from_a_checkpoint_warns_as_the_loaded_model_does(tiny_checkpoint):
    """``AdaptiveModel`` runs the model's parts, not its forward, where the warning was armed: it never warned."""
    from ldrop.runtime import AdaptiveModel

    model = AdaptiveModel.from_pretrained(tiny_checkpoint)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(WAVES)  # every layer: the fit changes nothing
        assert not _unfitted(caught)
        line = _line_after()
        model(WAVES, 2)
        model(WAVES, {"gflops_per_second": 1.0})
    [warning] = _unfitted(caught)
    assert (warning.filename, warning.lineno) == (__file__, line)
