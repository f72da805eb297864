"""A downstream Lightning project: its own regression task, DataModule and trainable selector (``pitch.py``),
trained with a plain ``lightning.Trainer`` and with ``ldrop fit``, then loaded back (issue 15, item 2)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

import ldrop
from ldrop.cli import main
from ldrop.sweeps import BudgetSweep
from ldrop.tasks import BudgetSampling, LayerDropTask, OptimizerConfig
from tests.downstream.pitch import BASE_HZ, PitchTask, PooledTopKSelector, ToneDataModule
from tests.helpers import quiet_trainer


def _data(**kwargs) -> ToneDataModule:
    return ToneDataModule(**{"num_train": 32, "num_eval": 16, "batch_size": 8, **kwargs})


def _task(**kwargs) -> PitchTask:
    torch.manual_seed(0)
    base = dict(backbone="tiny:wavlm", selector=PooledTopKSelector, head_hidden=24,
                optimization=OptimizerConfig(lr=3e-3, head_lr=1e-2, warmup=0, schedule="constant"),
                budgets=BudgetSampling(validation=[2, 4]))
    return PitchTask(**{**base, **kwargs})


def _validation_mae(model: PitchTask, data: ToneDataModule, tmp_path) -> float:
    return quiet_trainer(tmp_path).validate(model, data, verbose=False)[0]["val/mae"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(model, data, checkpoint, untrained validation MAE)``: 2 epochs with a plain Trainer."""
    tmp_path = tmp_path_factory.mktemp("pitch")
    L.seed_everything(0)
    data, model = _data(), _task()
    untrained = _validation_mae(model, data, tmp_path)
    trainer = quiet_trainer(tmp_path, max_epochs=2, check_val_every_n_epoch=100)
    trainer.fit(model, data)
    checkpoint = tmp_path / "pitch.ckpt"
    trainer.save_checkpoint(checkpoint)
    return model.eval(), data, checkpoint, untrained


def test_a_regression_task_trains_with_a_plain_trainer(trained, tmp_path):
    model, data, _, untrained = trained
    # 8 steps take the error in octaves from about 0.9 to about 0.3; a model that learned nothing stays put.
    assert _validation_mae(model, data, tmp_path) < 0.75 * untrained


@pytest.mark.parametrize("loader", ["load_from_checkpoint", "ldrop.load_model"])
def test_the_checkpoint_loads_back_as_the_subclass_with_its_hyper_parameters(trained, loader):
    model, data, checkpoint, _ = trained
    loaded = PitchTask.load_from_checkpoint(checkpoint) if loader == "load_from_checkpoint" else \
        ldrop.load_model(checkpoint)
    assert type(loaded) is PitchTask and loaded.head_hidden == 24
    stored = torch.load(checkpoint, weights_only=False)[LayerDropTask.CHECKPOINT_HYPER_PARAMS_KEY]
    assert stored["head_hidden"] == 24 and "labels" not in stored
    batch = next(iter(data.dataloader("val")))
    with torch.inference_mode():
        expected, expected_keep = model(batch.waveforms, batch.lengths, 2)
        logits, keep = loaded.eval()(batch.waveforms, batch.lengths, 2)
    assert torch.equal(keep, expected_keep) and torch.allclose(logits, expected, atol=1e-5)


def test_the_budget_sweep_scores_the_regression_metric_and_its_oracles(trained, tmp_path):
    model, data, _, _ = trained
    sweep = BudgetSweep(budgets=[2], headroom=True, headroom_candidates=3, controls=False)
    quiet_trainer(tmp_path, callbacks=[sweep]).test(model, data)
    for row in sweep.rows:
        assert row["mae"] >= 0.0 and row["utterances"] == 16
        # the selector's own mask is one of the per-input oracle's candidates: the oracle is never worse
        assert row["mae_input_oracle"] <= row["mae"] + 1e-6
        assert row["mae_input_oracle_val"] <= row["mae_val"] + 1e-6


class SquaredItemErrors(PitchTask):
    """Per-item errors that are not the metric's terms: squared errors under an MAE."""

    def item_errors(self, logits, frame_mask, batch):
        errors, counts = super().item_errors(logits, frame_mask, batch)
        return errors.pow(2), counts


def test_the_sweep_warns_when_the_per_item_errors_are_not_the_metrics_terms(trained, tmp_path, caplog):
    model, data, checkpoint, _ = trained
    with caplog.at_level("WARNING", logger="ldrop"):
        quiet_trainer(tmp_path, callbacks=[BudgetSweep(budgets=[2, 4], controls=False)]).test(model, data)
    assert not [r for r in caplog.records if "item_errors pool to" in r.getMessage()]  # MAE's own terms: silent
    caplog.clear()
    odd = SquaredItemErrors.load_from_checkpoint(checkpoint)
    with caplog.at_level("WARNING", logger="ldrop"):
        quiet_trainer(tmp_path, callbacks=[BudgetSweep(budgets=[2, 4], controls=False)]).test(odd, data)
    (line,) = [r.getMessage() for r in caplog.records if "item_errors pool to" in r.getMessage()]
    assert "item_errors pool to mae" in line and "must be the primary metric's terms per input" in line, line


def test_predict_writes_the_decoded_pitch_of_each_input(trained, tmp_path):
    model, data, _, _ = trained
    records = [r for batch in quiet_trainer(tmp_path).predict(model, data) for r in batch]
    assert len(records) == 16 and len({r["id"] for r in records}) == 16
    assert all(isinstance(r["output"], float) and BASE_HZ / 8 < r["output"] < BASE_HZ * 32 for r in records)


def test_forward_takes_one_waveform_as_a_batch_of_one():
    model = _task().eval()
    waveform = torch.randn(16000, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        logits, keep = model(waveform, None, 2)
        batched_logits, batched_keep = model(waveform[None], None, 2)
    assert logits.shape == (1, 1) and keep.shape == (1, model.num_layers) and keep.sum() == 2
    assert torch.equal(keep, batched_keep) and torch.allclose(logits, batched_logits)
    with pytest.raises(ValueError, match=r"\[samples\] or \[batch, samples\], got shape \(1, 1, 16000\)"):
        model(waveform[None, None])


def test_a_compiled_topk_selector_subclass_trains_and_its_checkpoint_loads(tmp_path):
    L.seed_everything(0)
    data, model = _data(num_train=16), _task()
    # Batches of varying size (the last one is short) need dynamic shapes; "eager" keeps the test fast and
    # traces the same graph (the Gumbel noise of training) that inductor would compile.
    model.selector.compile(backend="eager", dynamic=True)
    trainer = quiet_trainer(tmp_path, max_epochs=1, check_val_every_n_epoch=100)
    trainer.fit(model, data)
    assert trainer.global_step == 2
    trainer.save_checkpoint(tmp_path / "compiled.ckpt")
    loaded = ldrop.load_model(tmp_path / "compiled.ckpt")  # compiling in place keeps the parameter names
    assert torch.equal(loaded.selector.score.weight, model.selector.score.weight)


def test_ldrop_fit_trains_the_downstream_task_and_load_model_reads_its_checkpoint(tmp_path):
    main(["fit", "--model.class_path", "tests.downstream.pitch.PitchTask", "--model.init_args.backbone", "tiny:wavlm",
          "--model.init_args.selector.class_path", "tests.downstream.pitch.PooledTopKSelector",
          "--model.init_args.head_hidden", "16", "--model.init_args.budgets.validation", "[2, 4]",
          "--data.class_path", "tests.downstream.pitch.ToneDataModule", "--data.init_args.num_train", "16",
          "--data.init_args.num_eval", "8", "--data.init_args.batch_size", "8", "--trainer.max_epochs", "1",
          "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
          "--trainer.enable_model_summary", "false", "--trainer.logger.init_args.save_dir", str(tmp_path)])
    checkpoint = next((tmp_path / "ldrop").glob("version_*/checkpoints/last.ckpt"))
    model = ldrop.load_model(checkpoint)
    assert type(model) is PitchTask and model.hparams.head_hidden == 16
    assert isinstance(model.selector, PooledTopKSelector)
