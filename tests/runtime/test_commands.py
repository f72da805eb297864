"""`ldrop profile`, `ldrop predict` with a target, and `python -m ldrop.bench control` in smoke configurations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ldrop.budgets import DeviceProfile
from ldrop.cli import main

QUICKSTART = str(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml")
SMALL_DATA = ["--data.init_args.num_train", "16", "--data.init_args.num_val", "8", "--data.init_args.num_test", "8",
              "--data.init_args.duration_range", "[0.3, 0.5]", "--trainer.enable_progress_bar", "false",
              "--trainer.enable_model_summary", "false"]
TINY_GRID = ["--seconds", "0.5,1", "--batch-sizes", "1,2", "--repeats", "1", "--warmup", "0", "--validate", "2"]


def test_profile_a_backbone_writes_a_valid_profile(tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert main(["profile", "--backbone", "tiny:wavlm", *TINY_GRID, "--threads", "1", "--out", str(out)]) == 0
    profile = DeviceProfile.load(out)
    data = json.loads(out.read_text())
    assert {"fixed", "layer", "device", "measurements", "validation"} <= set(data)
    assert profile.num_layers == 4 and len(profile.measurements) == 2 * 2 * 2
    assert data["device"]["threads"] == 1 and "torch" in data["device"]
    assert "held-out batches: median |error|" in capsys.readouterr().out


def test_profile_a_checkpoint(tiny_checkpoint, tmp_path):
    out = tmp_path / "p.json"
    assert main(["profile", str(tiny_checkpoint), *TINY_GRID, "--out", str(out)]) == 0
    assert DeviceProfile.load(out).model["task"] == "ClassificationTask"


def test_profile_needs_exactly_one_model(tmp_path, capsys):
    for args, says in (([], "give either MODEL"), ([str(tmp_path / "missing.ckpt")], "missing.ckpt")):
        assert main(["profile", *args, "--out", str(tmp_path / "p.json")]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ldrop: error: ") and says in lines[0], lines


@pytest.mark.parametrize(("args", "says"), [
    (["--overrides", "[1, 2]"], "--overrides '[1, 2]': expected a JSON object"),
    (["--overrides", "{bad"], "--overrides '{bad': not JSON"),
    (["--repeats", "0"], "--repeats 0: expected at least 1"),
    (["--threads", "-1"], "--threads -1: expected a positive integer"),
    (["--threads", "0"], "--threads 0: expected a positive integer"),
    (["--batch-sizes", "0,2"], "--batch-sizes '0,2': expected a comma-separated list of numbers above 0"),
    (["--out", "{tmp}/p.json/x.json"], "--out {tmp}/p.json/x.json: not a folder"),
    (["--out", "{tmp}"], "--out {tmp}: a folder, not a file"),
], ids=["overrides-list", "overrides-json", "repeats", "threads-negative", "threads-zero", "batch-sizes",
        "out-below-a-file", "out-a-folder"])
def test_profile_refuses_bad_options_before_it_measures(tmp_path, capsys, monkeypatch, args, says):
    import ldrop.cli.profile

    (tmp_path / "p.json").write_text("{}")
    monkeypatch.setattr(ldrop.cli.profile, "profile_model", lambda *a, **k: pytest.fail("measured before the checks"))
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["profile", "--backbone", "tiny:wavlm", *TINY_GRID, *(["--out", str(tmp_path / "q.json")]), *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and says.replace("{tmp}", str(tmp_path)) in lines[0], lines


@pytest.mark.parametrize("command", ["profile", "export"])
def test_help_gives_each_default_once(command):
    import importlib
    import re

    text = importlib.import_module(f"ldrop.cli.{command}").build_parser().format_help()
    options = re.split(r"\n  (?=-)", text)
    assert len(options) > 5 and not [o for o in options if o.count("default") > 1]


def test_profile_overrides_need_a_backbone(tiny_checkpoint, tmp_path, capsys):
    assert main(["profile", str(tiny_checkpoint), "--overrides", "{}", "--out", str(tmp_path / "p.json")]) == 2
    assert "--overrides applies with --backbone only" in capsys.readouterr().err


def test_ldrop_predict_with_a_target_budget(tmp_path):
    main(["fit", "--config", QUICKSTART, *SMALL_DATA, "--trainer.max_steps", "1", "--trainer.logger", "false",
          "--trainer.default_root_dir", str(tmp_path / "run"), "--checkpoint.dirpath", str(tmp_path / "ckpt")])
    checkpoint = tmp_path / "ckpt" / "last.ckpt"
    out = tmp_path / "pred.jsonl"
    profile = tmp_path / "profile.json"
    assert main(["profile", str(checkpoint), *TINY_GRID, "--out", str(profile)]) == 0

    def predict(rtf: float) -> list[dict]:
        assert main(["predict", "--config", QUICKSTART, *SMALL_DATA, "--trainer.logger", "false",
                     "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(checkpoint),
                     "--model.init_args.predict_budget", f"{{rtf: {rtf}, profile: {profile}}}",
                     "--predictions.output", str(out)]) == 0
        return [json.loads(line) for line in out.read_text().splitlines()]

    records = predict(100.0)
    assert len(records) == 8 and all(len(r["executed_layers"]) == 4 for r in records)  # a loose target: all
    from ldrop.budgets import UnmeetableTargetWarning

    with pytest.warns(UnmeetableTargetWarning):  # unmeetable: the fewest layers and a warning, not full depth
        records = predict(1e-6)
    assert len(records) == 8 and all(len(r["executed_layers"]) == 1 for r in records)


def test_control_benchmark_smoke_run_writes_its_json(tmp_path):
    from ldrop.bench.__main__ import main as bench_main

    out = tmp_path / "control.json"
    code = bench_main(["control", "--backbone", "tiny:wavlm", "--utterances", "6", "--seconds-range", "0.5,0.8",
                       "--load-procs", "1", "--max-load-seconds", "5", "--profile-repeats", "1", "--threads", "1",
                       "--controller", '{"window": 4}', "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert set(data["summary"]) == {"full", "fixed", "open_loop", "closed_loop"}
    assert all(len(records) == 6 for records in data["records"].values())
    assert data["load"]["load_procs"] == 1 and data["deadline_ms"] > 0 and 1 <= data["fixed_budget"] <= 4
    assert {"cpu", "threads", "torch"} <= set(data["machine"])
    assert out.with_suffix(".png").is_file()
    assert all(r["layers_run"] == 4 for r in data["records"]["full"])
    assert data["controller"] == {"window": 4} and "closed_loop_misses_while_loaded_at_most_5pct" in data["checks"]
    assert all(r["planned"] > 0 and r["probe"] > 0 for r in data["records"]["closed_loop"])
    assert all(r["probe"] is None for r in data["records"]["open_loop"])


def test_the_load_generator_is_stopped_and_bounded_in_time():
    from ldrop.bench.control import LoadGenerator

    with LoadGenerator(procs=1, max_seconds=60) as load:
        load.start()
        assert load.running
    assert not load.running and load.stopped_at >= load.started_at  # stopped on leaving the block
    bounded = LoadGenerator(procs=1, max_seconds=0.0)
    bounded.start()
    for worker in bounded._workers:
        worker.join(timeout=30)  # the burner stops by itself at its cap
    assert not bounded.running
    bounded.stop()


@pytest.mark.parametrize(("option", "value", "says"), [("--load-span", "0.3;0.6", "comma-separated numbers"),
                                                       ("--controller", "{window: 4}", "not JSON")])
def test_control_benchmark_names_a_malformed_option_in_one_line(option, value, says, capsys):
    from ldrop.bench.__main__ import main as bench_main

    with pytest.raises(SystemExit) as exit_info:
        bench_main(["control", option, value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {option}: " in error and says in error and value in error


def test_sigterm_stops_ldrop_export_and_a_rerun_clears_a_killed_exports_staging(tiny_checkpoint, tmp_path, capsys,
                                                                                monkeypatch):
    """SIGTERM ended ``ldrop export`` without a line and left its hidden staging folder (a killed export too:
    one per kill, for good). Now the folder is removed at once, or by the next export to the same folder."""
    import os
    import signal

    from ldrop.backbones import SpeechBackbone

    save = SpeechBackbone.save_pretrained

    def terminated_while_saving(self, directory):
        save(self, directory)  # the weights are on disk in the staging folder, then the signal comes
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(SpeechBackbone, "save_pretrained", terminated_while_saving)
    out = tmp_path / "model"
    assert main(["export", str(tiny_checkpoint), str(out)]) == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == "ldrop: stopped by SIGTERM"
    assert list(tmp_path.iterdir()) == []  # no export, no staging folder
    monkeypatch.undo()
    killed, running = tmp_path / ".model.pid999999999.x1", tmp_path / f".model.pid{os.getpid()}.x2"
    for staging in (killed, running):
        staging.mkdir()
        (staging / "config.json").write_text("{}")
    assert main(["export", str(tiny_checkpoint), str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name, "model"]  # a live process's stays


def test_an_export_folder_under_a_file_names_the_file(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    assert main(["export", str(tiny_checkpoint), str(tmp_path / "afile" / "out")]) == 2
    assert f"'{tmp_path / 'afile'}' is a file, not a folder" in capsys.readouterr().err  # not "File exists"


def _hub_checkpoint(tiny_checkpoint, path: Path, backbone: str = "org/name", stored_config: bool = True) -> Path:
    """``tiny_checkpoint`` as ``ldrop fit`` writes it (built by jsonargparse) with the hub id ``org/name`` as its
    backbone (of the same layout: ``tiny_config('wavlm')``); without ``stored_config``, as checkpoints were before
    they held the backbone's config."""
    import torch

    from ldrop.tasks.checkpointing import BACKBONE_FILES_KEY

    checkpoint = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)
    checkpoint["ldrop_hyper_parameters"].update(
        backbone=backbone, _instantiator="lightning.pytorch.cli.instantiate_module",
        _class_path="ldrop.tasks.ClassificationTask")
    assert checkpoint.pop(BACKBONE_FILES_KEY)["config.json"]  # every checkpoint holds it
    if stored_config:
        checkpoint[BACKBONE_FILES_KEY] = torch.load(tiny_checkpoint, weights_only=False)[BACKBONE_FILES_KEY]
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("backbone", ["org/name", "/cluster/models/wavlm-tiny"])
def test_a_checkpoint_whose_backbone_is_not_here_loads_with_the_config_it_holds(tiny_checkpoint, tmp_path, caplog,
                                                                                monkeypatch, backbone):
    """Trained from a folder or hub id that the machine it moved to lacks: ``ldrop export`` and ``load_model``
    failed (a 90-line traceback); its weights and now its backbone's config are in the checkpoint."""
    import torch

    from ldrop.runtime import load_model
    from tests.helpers import offline_hub_cache, padded_batch

    offline_hub_cache(monkeypatch, tmp_path / "hub", {})
    path = _hub_checkpoint(tiny_checkpoint, tmp_path / "moved.ckpt", backbone)
    with caplog.at_level("WARNING"):
        task = load_model(path).eval()
    assert f"the backbone is built from the config {path} holds" in caplog.text and backbone in caplog.text
    assert task.hparams.backbone == backbone and task.hparams.pretrained is True  # as trained, for a re-save
    waves, lengths = padded_batch([8000, 5000], seed=2)
    with torch.no_grad():
        expected = load_model(tiny_checkpoint).eval()(waves, lengths, 2)
        assert all(torch.equal(a, b) for a, b in zip(task(waves, lengths, 2), expected, strict=True))
    assert main(["export", str(path), str(tmp_path / "model")]) == 0
    assert main(["export", str(path), str(tmp_path / "onnx"), "--format", "onnx"]) == 0


def test_a_checkpoint_whose_init_from_file_is_gone_loads_without_it(tiny_checkpoint, tmp_path):
    """A model trained from an earlier stage (``init_from``) re-read that file at load, then replaced its weights:
    ``load_model`` and ``ldrop export`` failed where it was gone (another machine, a cleaned-up stage)."""
    import torch

    from ldrop.runtime import load_model
    from tests.helpers import padded_batch

    checkpoint = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)
    checkpoint["ldrop_hyper_parameters"]["init_from"] = str(tmp_path / "stage1" / "last.ckpt")  # not here
    torch.save(checkpoint, tmp_path / "stage2.ckpt")
    task = load_model(tmp_path / "stage2.ckpt").eval()
    assert task.hparams.init_from == str(tmp_path / "stage1" / "last.ckpt")  # as trained, for a re-save
    waves, lengths = padded_batch([8000, 5000], seed=2)
    with torch.no_grad():
        expected = load_model(tiny_checkpoint).eval()(waves, lengths, 2)
        assert all(torch.equal(a, b) for a, b in zip(task(waves, lengths, 2), expected, strict=True))
    assert main(["export", str(tmp_path / "stage2.ckpt"), str(tmp_path / "model")]) == 0


def test_a_moved_models_missing_target_profile_is_a_warning_not_a_failure(tiny_checkpoint, tmp_path, caplog):
    """A target's device profile path (``predict_budget: {rtf: 0.1, profile: ...}``) is stored with the model: where
    it is not (another machine), the checkpoint and its export did not load at all."""
    import torch

    from ldrop.runtime import load_model
    from tests.runtime.conftest import synthetic_profile

    profile = tmp_path / "cluster" / "profile.json"
    profile.parent.mkdir()
    synthetic_profile().save(profile)
    checkpoint = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)
    checkpoint["ldrop_hyper_parameters"]["predict_budget"] = {"rtf": 0.1, "profile": str(profile)}
    torch.save(checkpoint, tmp_path / "target.ckpt")
    assert main(["export", str(tmp_path / "target.ckpt"), str(tmp_path / "model")]) == 0
    profile.unlink()
    for source in (tmp_path / "target.ckpt", tmp_path / "model"):
        caplog.clear()
        with caplog.at_level("WARNING"):
            task = load_model(source)
        assert task.hparams.predict_budget == {"rtf": 0.1}, source
        assert f"device profile {profile} is not here" in caplog.text, source


def test_exporting_a_checkpoint_whose_hub_backbone_cannot_be_read_is_one_line(tiny_checkpoint, tmp_path, capsys,
                                                                              monkeypatch):
    """Lightning's jsonargparse wrapped the backbone's one-line error in 'Does not validate against any of the Union
    subtypes': 86 lines of traceback (a checkpoint that does not hold its backbone's config)."""
    from tests.cli.common import one_error_line
    from tests.helpers import offline_hub_cache

    requests = offline_hub_cache(monkeypatch, tmp_path / "hub", {})
    path = _hub_checkpoint(tiny_checkpoint, tmp_path / "hub.ckpt", stored_config=False)
    assert main(["export", str(path), str(tmp_path / "model")]) == 2
    line = one_error_line(capsys)
    assert f"{path}: backbone 'org/name': no such local folder, and no such hub id in the local" in line, line
    assert requests == [] and not (tmp_path / "model").exists()


def test_a_checkpoint_loads_its_hub_backbone_without_its_pretrained_weights(tiny_checkpoint, tmp_path, monkeypatch):
    """The checkpoint holds every weight: the hub's (a download on a new machine) were read, then overwritten. Built
    from the config alone, the model is the same, bit for bit, and records the ``pretrained`` it was trained with."""
    import torch

    from ldrop.backbones import SpeechBackbone, tiny_config
    from ldrop.runtime import load_model
    from ldrop.tasks import ClassificationTask
    from tests.helpers import offline_hub_cache, padded_batch

    torch.manual_seed(1)  # other weights than the checkpoint's
    requests = offline_hub_cache(monkeypatch, tmp_path / "hub", {"org/name": SpeechBackbone.from_config(
        tiny_config("wavlm"))})
    path = _hub_checkpoint(tiny_checkpoint, tmp_path / "hub.ckpt")
    pretrained = ClassificationTask.load_from_checkpoint(path, map_location="cpu").eval()  # as before: hub weights
    (tmp_path / "hub" / "models--org--name" / "snapshots" / ("a" * 40) / "model.safetensors").unlink()
    task = load_model(path).eval()
    assert requests == [] and task.hparams.pretrained is True and task.hparams.backbone == "org/name"
    stored = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    assert task.state_dict().keys() == stored.keys() == pretrained.state_dict().keys()
    for key, value in stored.items():  # uncalibrated thresholds are NaN
        torch.testing.assert_close(task.state_dict()[key], value, rtol=0, atol=0, equal_nan=True)
    waves, lengths = padded_batch([8000, 5000], seed=2)
    with torch.no_grad():
        for budget in (1, 2, 4):
            (logits, keep), (expected, expected_keep) = task(waves, lengths, budget), pretrained(waves, lengths, budget)
            assert torch.equal(logits, expected) and torch.equal(keep, expected_keep)
