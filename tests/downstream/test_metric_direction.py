"""A downstream task whose primary metric is minimised (MAE) and whose second metric is maximised: the
checkpoint keeps the best of the metric it monitors, ``ldrop compare`` reads the direction and the units the
sweep recorded, and ``ldrop predict`` writes a ``decode`` that returns tensors (or says what it cannot write)."""

from __future__ import annotations

import json

import pytest
import torch
from torchmetrics import MeanAbsoluteError, Metric

from ldrop.cli import main
from tests.cli.test_errors import one_error_line
from tests.downstream.pitch import PitchTask

PITCH = ["--model.init_args.backbone", "tiny:wavlm", "--model.init_args.head_hidden", "8",
         "--model.init_args.budgets.validation", "[2, 4]", "--data.class_path", "tests.downstream.pitch.ToneDataModule",
         "--data.init_args.num_train", "8", "--data.init_args.num_eval", "8", "--data.init_args.batch_size", "8",
         "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false"]


class WithinHalfOctave(Metric):
    """Share of pitches predicted within half an octave: higher is better, a fraction."""

    higher_is_better = True
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("hits", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        self.hits += ((predicted - target).abs() < 0.5).sum()
        self.total += len(target)

    def compute(self) -> torch.Tensor:
        return self.hits / self.total.clamp(min=1)


class Undeclared(WithinHalfOctave):
    higher_is_better = None  # torchmetrics' default: no direction


class PitchHitTask(PitchTask):
    """Pitch regression scored by MAE (minimised) and by the share within half an octave (maximised)."""

    metric_names = ("mae", "hit")
    hit_metric = WithinHalfOctave

    def configure_metrics(self) -> dict[str, Metric]:
        return {"mae": MeanAbsoluteError(), "hit": self.hit_metric()}

    def update_metrics(self, metrics, logits, frame_mask, batch) -> None:
        super().update_metrics(metrics, logits, frame_mask, batch)
        metrics["hit"].update(logits[:, 0].float(), batch.targets)


class PitchUndeclaredTask(PitchHitTask):
    hit_metric = Undeclared


class TensorPitchTask(PitchTask):
    """``decode`` returns a tensor: each input's output is a 0-d tensor."""

    def decode(self, logits, frame_mask):
        return logits[:, 0].float()


class SetPitchTask(PitchTask):
    """``decode`` returns objects JSON cannot hold."""

    def decode(self, logits, frame_mask):
        return [{round(float(v), 2)} for v in logits[:, 0]]


def _fit(tmp_path, task: str, *extra: str) -> int:
    return main(["fit", "--model.class_path", f"{__name__}.{task}", *PITCH, "--trainer.max_epochs", "1",
                 "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path),
                 "--checkpoint.dirpath", str(tmp_path / "ckpt"), *extra])


def _checkpoint_key(tmp_path) -> str:
    """The key of the TaskCheckpoint state in last.ckpt (names its monitor and mode)."""
    (key,) = [k for k in torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"]
              if k.startswith("TaskCheckpoint")]
    return key


@pytest.mark.parametrize(("monitor", "mode"), [("val/hit@4", "max"), ("val/mae@2", "min"),
                                               ("val/mae", "min"), ("val/loss", "min")])
def test_the_checkpoint_keeps_the_best_of_the_metric_it_monitors_in_that_metric_s_direction(tmp_path, monitor, mode):
    assert _fit(tmp_path, "PitchHitTask", "--checkpoint.monitor", monitor) == 0
    key = _checkpoint_key(tmp_path)
    assert f"'monitor': '{monitor}'" in key and f"'mode': '{mode}'" in key, key


def test_a_monitored_metric_of_unknown_direction_needs_the_mode(tmp_path, capsys):
    assert _fit(tmp_path, "PitchUndeclaredTask", "--checkpoint.monitor", "val/hit@4") == 2
    line = one_error_line(capsys)
    assert "--checkpoint.monitor 'val/hit@4'" in line and "--checkpoint.mode" in line, line
    assert not (tmp_path / "ckpt").exists()
    assert _fit(tmp_path, "PitchUndeclaredTask", "--checkpoint.monitor", "val/hit@4", "--checkpoint.mode", "max") == 0
    assert "'mode': 'max'" in _checkpoint_key(tmp_path)


def _predict(tmp_path, task: str) -> int:
    return main(["predict", "--model.class_path", f"{__name__}.{task}", *PITCH, "--trainer.logger", "false",
                 "--trainer.default_root_dir", str(tmp_path), "--predictions.output", str(tmp_path / "pred.jsonl")])


def test_predict_writes_tensor_outputs_as_numbers(tmp_path):
    assert _predict(tmp_path, "TensorPitchTask") == 0
    records = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert len(records) == 8 and all(isinstance(r["output"], float) for r in records)


def test_predict_output_json_cannot_hold_is_one_line_and_no_file(tmp_path, capsys):
    assert _predict(tmp_path, "SetPitchTask") == 2
    line = one_error_line(capsys)
    assert "SetPitchTask's decode/predict_step output cannot be written as JSON" in line and "set" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == []
