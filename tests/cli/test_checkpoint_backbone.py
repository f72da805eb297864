"""``ldrop validate|test|predict --ckpt_path``: every weight comes from the checkpoint, so the backbone's pretrained
weights are not read (on a new machine: downloaded), and a backbone folder or hub id that is not here is built from
the config the checkpoint holds."""

from __future__ import annotations

import json
import shutil

import yaml

from ldrop.backbones import SpeechBackbone, tiny_config
from ldrop.cli import main
from ldrop.sweeps import load_sweep
from tests.cli.common import QUICKSTART, SMALL, fit_quickstart


def _untimed(run) -> list[dict]:
    """The sweep's rows without its timings (which differ from run to run)."""
    return [{k: v for k, v in row.items() if "ms" not in k and "time" not in k} for row in load_sweep(run)]


def test_a_checkpoint_is_tested_and_predicted_without_its_backbones_weights_or_folder(tmp_path, caplog):
    folder = tmp_path / "cluster" / "wavlm"
    SpeechBackbone.from_config(tiny_config("wavlm")).save_pretrained(folder)
    run = fit_quickstart(tmp_path / "runs", "--model.init_args.backbone", str(folder),
                         "--model.init_args.pretrained", "true")
    last = run / "checkpoints" / "last.ckpt"
    common = ["--config", str(run / "config.yaml"), "--ckpt_path", str(last), *SMALL]

    def test_and_predict() -> tuple:
        caplog.clear()
        out = tmp_path / "predictions.jsonl"
        with caplog.at_level("WARNING"):
            assert main(["test", *common]) == 0
            newest = max((tmp_path / "runs" / "ldrop").glob("version_*"), key=lambda p: int(p.name[8:]))
            assert main(["predict", *common, "--predictions.output", str(out), "--model.predict_budget", "2"]) == 0
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(records) == 16
        return newest, _untimed(newest), sorted((r["id"], r["output"], r["executed_layers"]) for r in records), caplog.text

    _, swept, predicted, _ = test_and_predict()
    (folder / "model.safetensors").unlink()  # the pretrained weights: the checkpoint replaces every one of them
    run_without_weights, *outputs, log = test_and_predict()
    assert outputs == [swept, predicted] and "built from the config" not in log
    saved = yaml.safe_load((run_without_weights / "config.yaml").read_text())["model"]["init_args"]
    assert saved["pretrained"] is True and saved["backbone"] == str(folder)  # the run's config: as given
    logged = yaml.safe_load((run_without_weights / "hparams.yaml").read_text())  # ... and its logged hparams
    assert logged["pretrained"] is True and logged["backbone"] == str(folder)

    shutil.rmtree(tmp_path / "cluster")  # moved to a machine without the backbone's folder
    moved_run, *outputs, log = test_and_predict()
    assert outputs == [swept, predicted]
    assert yaml.safe_load((moved_run / "hparams.yaml").read_text())["backbone"] == str(folder)  # not the temporary
    assert f"the backbone is built from the config {last} holds" in log and str(folder) in log


def test_a_checkpoint_without_its_backbones_config_still_names_the_missing_folder(tmp_path, capsys):
    import torch

    from ldrop.tasks.checkpointing import BACKBONE_FILES_KEY
    from tests.cli.common import one_error_line

    folder = tmp_path / "wavlm"
    SpeechBackbone.from_config(tiny_config("wavlm")).save_pretrained(folder)
    run = fit_quickstart(tmp_path / "runs", "--model.init_args.backbone", str(folder))
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    del checkpoint[BACKBONE_FILES_KEY]  # as checkpoints were written before they held it
    torch.save(checkpoint, last)
    shutil.rmtree(folder)
    assert main(["test", "--config", QUICKSTART, *SMALL, "--model.init_args.backbone", str(folder),
                 "--ckpt_path", str(last), "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]) == 2
    assert f"backbone checkpoint folder '{folder}' does not exist" in one_error_line(capsys)


def test_a_run_started_from_an_init_from_checkpoint_resumes_and_tests_without_that_file(tmp_path):
    """``init_from`` (an earlier stage's checkpoint) was read again at every resume, test and predict, whose
    checkpoint holds every weight: on another machine, or once the earlier stage was cleaned up, they failed."""
    full = fit_quickstart(tmp_path / "full", "--model.init_args.selector", "null")
    stage1 = str(full / "checkpoints" / "last.ckpt")
    run = fit_quickstart(tmp_path / "drop", "--model.init_args.init_from", stage1)
    shutil.rmtree(tmp_path / "full")
    last = str(run / "checkpoints" / "last.ckpt")
    given = ["--config", QUICKSTART, *SMALL, "--model.init_args.init_from", stage1,
             "--trainer.logger.init_args.save_dir", str(tmp_path / "drop")]
    assert main(["fit", *given, "--trainer.max_epochs", "2", "--ckpt_path", last]) == 0
    assert main(["test", *given, "--ckpt_path", last]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]
    assert saved["init_from"] == stage1  # the run's config says how it started
