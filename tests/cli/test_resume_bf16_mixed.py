"""Exact resume under ``bf16-mixed``, the precision every shipped data config asks: a fit stopped by SIGTERM and
resumed from its ``last.ckpt`` ends with the uninterrupted run's weights, buffers and logged metrics, the
training metrics of the step it stopped at included (they were lost: the stop came before the fit loop logs them).

The commands run in this process (``ldrop``'s ``main`` holds SIGTERM during a run); ``SignalAt`` sends the signal.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ldrop.cli import main
from tests.cli.common import QUICKSTART, SMALL
from tests.cli.test_resume import _identical, _weights
from tests.cli.test_signals import _signal_at

# 32 clips in batches of 4: 8 steps, one epoch, then a validation of 2 batches (a threshold selector is calibrated
# before it); no sanity check, loading in the main process; every step's training metrics logged.
FIT = ["fit", "--config", QUICKSTART, *SMALL, "--data.init_args.batch_size", "4", "--trainer.max_epochs", "1",
       "--data.init_args.num_workers", "0", "--trainer.limit_val_batches", "2", "--trainer.num_sanity_val_steps", "0",
       "--trainer.precision", "bf16-mixed", "--trainer.log_every_n_steps", "1",
       "--model.init_args.selector.init_args.mode", "threshold"]


def _scalars(run: Path) -> dict[tuple[str, int], float]:
    """``(tag, step) -> value`` of every scalar the run folder's event files hold (a resumed run adds a file; a
    step logged in both keeps the later file's value)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for events in sorted(run.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            out.update({(tag, e.step): e.value for e in accumulator.Scalars(tag)})
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    save_dir = tmp_path_factory.mktemp("uninterrupted")
    assert main([*FIT, "--trainer.logger.init_args.save_dir", str(save_dir)]) == 0
    return save_dir / "ldrop" / "version_0"


@pytest.mark.parametrize("hook, step", [("train", 3), ("validation", 0)], ids=["mid-epoch", "during-validation"])
def test_a_bf16_mixed_fit_stopped_by_sigterm_resumes_to_the_uninterrupted_weights_and_logs(uninterrupted, tmp_path,
                                                                                           hook, step):
    save_dir = ["--trainer.logger.init_args.save_dir", str(tmp_path)]
    assert main([*FIT, *save_dir, *_signal_at(hook, step)]) == 143
    run = tmp_path / "ldrop" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == (3 if hook == "train" else 8)

    assert main([*FIT, *save_dir, "--ckpt_path", str(last)]) == 0
    expected, resumed = _weights(uninterrupted / "checkpoints" / "last.ckpt"), _weights(last)
    assert expected.keys() == resumed.keys()
    different = [name for name in expected if not _identical(expected[name], resumed[name])]
    assert not different, f"{len(different)} tensors differ from the uninterrupted run, e.g. {different[:3]}"
    assert any("calibration.thresholds" in name for name in expected)  # the threshold selector's state compared too

    logged, wanted = _scalars(run), _scalars(uninterrupted)
    assert ("train/loss", 2) in wanted  # the row of the step a SIGTERM at step 3 stops after
    missing = sorted(set(wanted) - set(logged))
    assert not missing, f"{len(missing)} logged values of the uninterrupted run are missing, e.g. {missing[:4]}"
    assert set(logged) == set(wanted)
    apart = [key for key in wanted if not math.isclose(logged[key], wanted[key], rel_tol=1e-6, abs_tol=1e-9)]
    assert not apart, f"values differ from the uninterrupted run's: {[(k, logged[k], wanted[k]) for k in apart[:4]]}"

