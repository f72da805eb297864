"""Every shipped config trains and tests through the real ``ldrop`` entry point (torchgeo's tests/conf idea).

Each composition runs ``ldrop fit`` for one optimiser step (one validation batch) and then ``ldrop test``
(the budget sweep) from the fit's ``last.ckpt``, on tiny local backbones and layout-faithful dataset
fixtures, in-process through :func:`ldrop.cli.main`. The configs are parametrised from the files on disk, so
a new config is covered without editing this file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from ldrop.cli import main
from ldrop.sweeps import load_sweep
from tests.cli.test_configs import BACKBONES, CONFIGS, DATA, METHODS, roots  # noqa: F401 (roots: fixture)

#: One step of everything, no logger, no progress bar, on the CPU. The precision is the config's own: the
#: shipped data configs ask bf16-mixed (which every x86-64 CPU runs), the quickstarts Lightning's 32-true. The
#: model summary stays on, as users run it (it runs a forward pass in the model's precision).
QUICK = ["--trainer.max_steps", "1", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
         "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1", "--trainer.val_check_interval",
         "null", "--trainer.check_val_every_n_epoch", "1", "--trainer.num_sanity_val_steps", "0",
         "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"]


def fit_and_test(configs: list[Path | str], tmp_path: Path, *overrides: str) -> list[dict]:
    """``ldrop fit`` (one step) then ``ldrop test`` from its ``last.ckpt``; returns the sweep rows."""
    args = [a for c in configs for a in ("--config", str(c))]
    main(["fit", *args, *QUICK, *overrides, "--trainer.default_root_dir", str(tmp_path / "fit")])
    last = tmp_path / "fit" / "checkpoints" / "last.ckpt"
    assert last.is_file(), sorted(p.name for p in (tmp_path / "fit").rglob("*"))
    main(["test", *args, *QUICK, *overrides, "--trainer.default_root_dir", str(tmp_path / "test"),
          "--ckpt_path", str(last)])
    rows = load_sweep(tmp_path / "test")
    assert rows and all(row["gflops_per_utterance"] > 0 for row in rows)
    return rows


def _data_overrides(data: Path, backbone: Path, roots: dict[str, str]) -> list[str]:  # noqa: F811
    """Local backbone and fixture root, no workers, and small batches (the configs batch 16-32 clips or 200 s of audio)."""
    family = "hubert" if "hubert" in backbone.stem else "wavlm"
    args = ["--model.init_args.backbone", roots[family], "--data.init_args.root", roots[data.stem],
            "--data.init_args.num_workers", "0"]
    init_args = yaml.safe_load(data.read_text())["data"]["init_args"]
    if "batch_size" in init_args:
        args += ["--data.init_args.batch_size", "2"]  # ESC-50 clips are padded to 5 s
    if "max_batch_seconds" in init_args:
        args += ["--data.init_args.max_batch_seconds", "3"]
    return args


#: Every data x method pair, each with one of the backbones, alternating so that every data x backbone and
#: every method x backbone pair runs as well (all pairs in 24 runs instead of the 48 of the full product; the
#: backbone configs differ only in the hub id, replaced here by a tiny local folder, and the family).
#: test_configs.py instantiates the full product.
COMPOSITIONS = [(data, BACKBONES[(i + j) % len(BACKBONES)], method)
                for i, data in enumerate(DATA) for j, method in enumerate(METHODS)]


@pytest.mark.parametrize(("data", "backbone", "method"), COMPOSITIONS,
                         ids=["-".join(p.stem for p in c) for c in COMPOSITIONS])
def test_every_config_composition_fits_and_tests(data, backbone, method, roots, tmp_path):  # noqa: F811
    rows = fit_and_test([data, backbone, method], tmp_path, *_data_overrides(data, backbone, roots))
    metric = "wer" if data.stem in ("librispeech", "tedlium") else "acc"
    assert all(metric in row for row in rows)
    if method.stem == "full":
        assert [row["budget_fraction"] for row in rows] == [1.0]
    sweep_args = yaml.safe_load(method.read_text()).get("sweep") or {}
    if (sweep_args.get("repeats") or 1) > 1:  # random.yaml: seeded repeats, mean and spread
        assert all(row[f"{metric}_std"] >= 0.0 for row in rows)


@pytest.mark.parametrize("name", ["quickstart.yaml", "quickstart-ctc.yaml"])
def test_quickstart_configs_fit_and_test(name, tmp_path):
    # the config's model, precision and pipeline; its data shrunk to one batch of 4 per split (the test sweep,
    # its headroom oracles and the fit on validation data each cost in proportion to the clips)
    small = ["--data.init_args.num_train", "4", "--data.init_args.num_val", "4", "--data.init_args.num_test", "4",
             "--data.init_args.batch_size", "4"]
    rows = fit_and_test([CONFIGS / name], tmp_path, *small)
    assert [row["budget_layers"] for row in rows] == sorted(row["budget_layers"] for row in rows)


QUICKSTART = CONFIGS / "quickstart.yaml"
TINY_SET = ["--data.init_args.num_train", "16", "--data.init_args.num_val", "16", "--data.init_args.num_test", "16",
            "--data.init_args.batch_size", "8", "--data.init_args.duration_range", "[0.3, 0.5]"]


@pytest.mark.parametrize("confidence", ["max_prob", "entropy"])
def test_confidence_early_exit_with_linear_exit_weights_fits_and_tests(confidence, tmp_path):
    rows = fit_and_test([QUICKSTART, CONFIGS / "method" / "early-exit.yaml"], tmp_path, *TINY_SET,
                        "--model.init_args.early_exit.loss_weights", "linear",
                        "--model.init_args.early_exit.policy", "confidence",
                        "--model.init_args.early_exit.confidence", confidence)
    num_layers = max(row["budget_layers"] for row in rows)
    # Calibrated per-input exits: on average about k layers, never more than the model has.
    assert all(0 < row["executed_layers"] <= num_layers for row in rows)
    assert rows[-1]["executed_layers"] == num_layers


def test_frozen_backbone_fits_and_tests(tmp_path):
    # freeze: none runs in quickstart-ctc.yaml; cnn in every backbone config.
    rows = fit_and_test([QUICKSTART], tmp_path, *TINY_SET, "--model.init_args.freeze", "backbone")
    assert all(0.0 <= row["acc"] <= 1.0 for row in rows)


@pytest.mark.parametrize("freeze", ["cnn", "backbone", "none"])
def test_freeze_decides_which_weights_a_training_step_changes(freeze, tmp_path):
    from ldrop.tasks import BudgetSampling, ClassificationTask, OptimizerConfig
    from tests.helpers import quiet_trainer, tiny_classification_data

    dm = tiny_classification_data()
    torch.manual_seed(0)
    task = ClassificationTask(labels=[str(i) for i in range(4)], freeze=freeze,
                              optimization=OptimizerConfig(lr=0.01, head_lr=0.01, warmup=0),
                              budgets=BudgetSampling(validation=[1.0]))
    before = {name: p.detach().clone() for name, p in task.named_parameters()}
    quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0).fit(task, dm)
    changed = {name for name, p in task.named_parameters() if not torch.equal(p.detach(), before[name])}
    cnn = {n for n in before if n.startswith("backbone.") and ".feature_extractor." in n}
    rest_of_backbone = {n for n in before if n.startswith("backbone.")} - cnn
    assert cnn and rest_of_backbone
    assert any(not n.startswith("backbone.") for n in changed)  # the head always trains
    assert bool(changed & cnn) == (freeze == "none")
    assert bool(changed & rest_of_backbone) == (freeze != "backbone")


#: Per precision a user can pick and every x86-64 CPU runs, an input-conditioned variant with its own
#: fitting on validation data: the fallback (top-k), threshold calibration, the fallback's greedy search on
#: the selector's own filterbank (whose STFT must stay float32 inside a bf16 model).
PRECISIONS = {
    "32-true": [],
    "bf16-mixed": ["--model.init_args.selector.init_args.mode", "threshold"],
    "bf16-true": ["--model.init_args.selector.init_args.input", "fbank",
                  "--model.init_args.selector.init_args.fallback_search", "true"],
}


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
def test_each_precision_fits_tests_with_controls_headroom_and_targets_then_predicts(precision, tmp_path):
    # validation and test in one batch of 4 clips (the fit on validation data, the headroom oracles on both splits
    # and the sweep cost in proportion to the clips); predict still writes every one of the 16 test clips
    common = [*TINY_SET, "--data.init_args.num_val", "4", "--data.init_args.batch_size", "4", "--trainer.precision",
              precision, *PRECISIONS[precision]]
    rows = fit_and_test([QUICKSTART], tmp_path, *common, "--sweep.controls", "true", "--sweep.headroom", "true",
                        "--sweep.targets", "[{gflops_per_second: 0.02}]")
    for column in ("acc", "acc_shuffled", "acc_most_common", "acc_input_oracle", "acc_static_oracle", "acc_val",
                   "acc_input_oracle_val"):
        assert all(0.0 <= row[column] <= 1.0 for row in rows), column
    targets = json.loads((tmp_path / "test" / "target_sweep.json").read_text())
    assert len(targets) == 1 and 0.0 <= targets[0]["acc"] <= 1.0
    out = tmp_path / "predictions.jsonl"
    main(["predict", "--config", str(QUICKSTART), *QUICK, *common, "--trainer.default_root_dir", str(tmp_path / "p"),
          "--ckpt_path", str(tmp_path / "fit" / "checkpoints" / "last.ckpt"),
          "--model.init_args.predict_budget", "{gflops_per_second: 0.02}", "--predictions.output", str(out)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 16 and all(r["target"] == "gflops_per_second=0.02" and r["budget"] >= 1 for r in records)


def test_a_base_size_backbone_fits_and_tests_as_shipped(roots, tmp_path):  # noqa: F811
    """Base geometry (12 layers of 768, random weights) under the data config's own bf16-mixed, one step."""
    data, backbone = CONFIGS / "data" / "speechcommands.yaml", CONFIGS / "backbone" / "wavlm-base-plus.yaml"
    assert yaml.safe_load(data.read_text())["trainer"]["precision"] == "bf16-mixed"
    overrides = [*_data_overrides(data, backbone, roots), "--model.init_args.backbone", "random:wavlm",
                 # two budgets, no fitting on validation data, no controls or oracles: each is dozens of
                 # base-size forward passes on the CPU, and the tiny compositions run them all
                 "--sweep.budgets", "[0.5, 1.0]", "--model.init_args.selector.init_args.fallback", "false",
                 "--sweep.controls", "false", "--sweep.headroom", "false",
                 # one 380 MB weights-only checkpoint instead of two with optimiser state
                 "--checkpoint.save_top_k", "0", "--checkpoint.save_weights_only", "true"]
    rows = fit_and_test([data, backbone, CONFIGS / "method" / "input-conditioned.yaml"], tmp_path, *overrides)
    assert [row["budget_layers"] for row in rows] == [6, 12]
    assert all(0.0 <= row["acc"] <= 1.0 for row in rows)
    assert rows[0]["executed_layers"] == 6 and rows[0]["gflops_per_utterance"] < rows[1]["gflops_per_utterance"]
