"""A downstream task whose primary metric is minimised (MAE) and whose second metric is maximised: the
checkpoint keeps the best of the metric it monitors, ``ldrop compare`` reads the direction and the units the
sweep recorded, and ``ldrop predict`` writes a ``decode`` that returns tensors (or says what it cannot write)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torchmetrics import MeanAbsoluteError, Metric

from ldrop.cli import main
from ldrop.sweeps import BudgetSweep, compare_sweeps, report
from tests.cli.common import one_error_line
from tests.downstream.pitch import PitchTask, PooledTopKSelector, ToneDataModule
from tests.helpers import quiet_trainer

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


class ShiftedPitchTask(PitchHitTask):
    """Predicts ``shift`` octaves above the (untrained) head: about 1 octave off for -1, about 0.5 for +1."""

    def __init__(self, shift: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.shift = shift

    def compute_logits(self, head, hidden, frame_mask):
        return super().compute_logits(head, hidden, frame_mask) + self.shift


class TensorPitchTask(PitchTask):
    """``decode`` returns a tensor: each input's output is a 0-d tensor."""

    def decode(self, logits, frame_mask):
        return logits[:, 0].float()


class NanPitchTask(PitchTask):
    """``decode`` gives NaN and infinity for some inputs (a diverged regression head)."""

    def decode(self, logits, frame_mask):
        return [{"hz": [math.nan, -math.inf][i % 2] if i % 3 == 0 else float(v)} for i, v in enumerate(logits[:, 0])]


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
    # evaluation ranks no checkpoints: it needs no direction
    assert main(["validate", "--model.class_path", f"{__name__}.PitchUndeclaredTask", *PITCH, "--trainer.logger", "false",
                 "--trainer.default_root_dir", str(tmp_path), "--checkpoint.monitor", "val/hit@4",
                 "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")]) == 0


def test_compare_reads_the_direction_and_the_units_of_a_minimised_metric_from_the_sweeps(tmp_path, monkeypatch,
                                                                                           caplog):
    data = ToneDataModule(num_train=8, num_eval=16, batch_size=8)
    runs = {"near": 1.0, "far": -1.0}
    for name, shift in runs.items():
        torch.manual_seed(0)
        model = ShiftedPitchTask(shift=shift, backbone="tiny:wavlm", selector=PooledTopKSelector, head_hidden=8)
        sweep = BudgetSweep(budgets=[1, 2, 3, 4], headroom=False, method_name=name, directory=str(tmp_path / name))
        quiet_trainer(tmp_path, callbacks=[sweep]).test(model, data)
    manifest = json.loads((tmp_path / "far" / "sweep_manifest.json").read_text())
    assert manifest["metrics"] == {"mae": {"higher_is_better": False, "fraction": False},
                                   "hit": {"higher_is_better": True, "fraction": False}}
    labels = []
    figure = report.sweep_figure
    monkeypatch.setattr(report, "sweep_figure", lambda *a, **k: labels.append(
        (fig := figure(*a, **k)).axes[0].get_ylabel()) or fig)
    table, _ = compare_sweeps([tmp_path / "near", tmp_path / "far"], tmp_path / "cmp")
    summary = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert summary["higher_is_better"] is False and labels == ["MAE (lower is better)"]
    far = [p for p in summary["paired"] if p["run"] == "far"]
    assert len(far) == 4  # N/4, N/2, 3N/4 and AUC, each paired on the same 16 tones
    for paired in far:  # "far" has the higher MAE (about 1 octave against 0.5): its difference is positive
        assert 0.2 < paired["low"] <= paired["diff"] <= paired["high"], paired
    assert "differences in mae units" in table and "points x100" not in table
    near, far = (next(r for r in summary["equal_gflops"] if r["run"] == run and r["at"] == "AUC") for run in runs)
    shown = float(far["vs near"].split()[0])  # in octaves, as the MAE itself: not x100
    assert abs(shown - (far["mae"] - near["mae"])) < 0.01, (far, near)
    # another metric than the sweeps' primary one: its own direction, and no paired interval from mae's errors
    compare_sweeps([tmp_path / "near", tmp_path / "far"], tmp_path / "hit", metric="hit")
    summary = json.loads((tmp_path / "hit" / "compare.json").read_text())
    assert summary["higher_is_better"] is True and summary["paired"] == [] and labels[-1] == "HIT"
    # sweeps written without the recorded properties (an older ldrop): guessed from the name, with a warning
    assert report.metric_direction("wer", [{}]) == (False, True) and report.metric_direction("mae", []) == (True, False)
    # an oracle column is its metric's, a cost column lower-better in its own units
    recorded = [json.loads((tmp_path / "far" / "sweep_manifest.json").read_text()).get("metrics", {}),
                {"mae": {"higher_is_better": False, "fraction": False}}]
    assert report.metric_direction("mae_input_oracle", recorded) == (False, False)
    assert report.metric_direction("wer_depth_oracle_val", []) == (False, True)
    assert report.metric_direction("ms_per_utterance", recorded) == (False, False)
    with pytest.raises(ValueError, match="disagree on whether a higher mae is better"):  # two tasks' metrics
        report.metric_direction("mae", [{"mae": {"higher_is_better": False}}, {"mae": {"higher_is_better": True}}])
    for name in runs:
        manifest = tmp_path / name / "sweep_manifest.json"
        manifest.write_text(json.dumps({"files": json.loads(manifest.read_text())["files"]}))
    with caplog.at_level("WARNING"):
        compare_sweeps([tmp_path / "near", tmp_path / "far"], tmp_path / "cmp")
    assert "do not record whether a higher mae is better" in caplog.text


def _predict(tmp_path, task: str) -> int:
    return main(["predict", "--model.class_path", f"{__name__}.{task}", *PITCH, "--trainer.logger", "false",
                 "--trainer.default_root_dir", str(tmp_path), "--predictions.output", str(tmp_path / "pred.jsonl")])


def test_predict_writes_tensor_outputs_as_numbers(tmp_path):
    assert _predict(tmp_path, "TensorPitchTask") == 0
    records = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert len(records) == 8 and all(isinstance(r["output"], float) for r in records)


def test_predict_writes_nan_and_infinity_as_null_in_strict_json(tmp_path, capsys):
    assert _predict(tmp_path, "NanPitchTask") == 0
    def refuse(constant):
        raise AssertionError(f"{constant} is not strict JSON")
    lines = (tmp_path / "pred.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=refuse) for line in lines]
    held = [r for r in records if r["output"]["hz"] is None]
    assert len(records) == 8 and len(held) == 3, records  # inputs 0, 3 and 6 of the one batch of 8
    assert all(isinstance(r["output"]["hz"], float) for r in records if r not in held)
    assert "(3 held NaN or infinity, written as null)" in capsys.readouterr().out


def test_predict_output_json_cannot_hold_is_one_line_and_no_file(tmp_path, capsys):
    assert _predict(tmp_path, "SetPitchTask") == 2
    line = one_error_line(capsys)
    assert "SetPitchTask's decode/predict_step output cannot be written as JSON" in line and "set" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == []
