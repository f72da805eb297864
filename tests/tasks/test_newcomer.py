"""A newcomer's path: threshold mode trains from fit, the model summary counts FLOPs, sweeps reach TensorBoard."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch

from ldrop.selectors import InputConditionedSelector
from ldrop.tasks import BudgetSampling, ClassificationTask, EarlyExitConfig, OptimizerConfig
from tests.helpers import quiet_trainer, tiny_classification_data


def _classifier(**kwargs) -> ClassificationTask:
    torch.manual_seed(0)
    base = dict(labels=["a", "b", "c", "d"], backbone="tiny:wavlm",
                optimization=OptimizerConfig(lr=3e-3, head_lr=1e-2, warmup=0, schedule="constant"),
                budgets=BudgetSampling(validation=[1, 2, 4]))
    base.update(kwargs)
    return ClassificationTask(**base)


class _Executed(L.Callback):
    """Records the mean executed layers per validation budget of the last validation pass."""

    def on_validation_epoch_start(self, trainer, pl_module):
        self.counts = {k: [] for k in pl_module.val_budget_list}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        with torch.no_grad():
            for k in self.counts:
                self.counts[k].append(pl_module(batch.waveforms, batch.lengths, k)[1].sum(1))


@pytest.mark.parametrize("method", [
    dict(selector=functools.partial(InputConditionedSelector, hidden_dim=16, mode="threshold")),
    dict(early_exit=EarlyExitConfig(policy="confidence")),
], ids=["threshold", "early_exit_confidence"])
def test_fit_validates_methods_calibrated_on_validation_data(tmp_path, method):
    L.seed_everything(0)
    data = tiny_classification_data(num_val=48)
    model = _classifier(**method)
    executed = _Executed()
    trainer = quiet_trainer(tmp_path, max_steps=2, num_sanity_val_steps=2, val_check_interval=2,
                            enable_model_summary=True, callbacks=[executed])
    trainer.fit(model, data)  # the sanity check and the validation pass used to ask for calibrate()
    assert 0.0 <= float(trainer.callback_metrics["val/acc"]) <= 1.0
    assert {f"val/acc@{k}" for k in (1, 2, 4)} <= set(trainer.callback_metrics)
    # calibrated on the validated batches: the mean executed layers there meet each budget
    for k, counts in executed.counts.items():
        assert abs(float(torch.cat(counts).float().mean()) - k) <= 0.5


@pytest.mark.parametrize("method", [
    dict(),
    dict(selector=functools.partial(InputConditionedSelector, hidden_dim=16)),
    dict(selector=functools.partial(InputConditionedSelector, hidden_dim=16, mode="threshold")),  # uncalibrated
    dict(early_exit=EarlyExitConfig(policy="confidence")),
], ids=["full", "input_conditioned", "threshold", "early_exit_confidence"])
def test_model_summary_counts_the_full_depth_flops_of_one_second(method):
    from lightning.pytorch.utilities.model_summary import ModelSummary

    from ldrop.engine.flops import count_forward_flops

    model = _classifier(**method)
    waveforms, lengths = model.example_input_array
    assert waveforms.shape == (1, 16000) and lengths.tolist() == [16000]  # 1 s of audio at 16 kHz
    summary = ModelSummary(model)
    expected = float(count_forward_flops(model.backbone.config, lengths).full)  # every layer, no selector/head
    assert expected <= summary.total_flops <= 1.5 * expected
    assert "Total Flops" in str(summary) and model.training  # the summary leaves train mode as it was


def test_threshold_mode_runs_every_layer_at_the_full_budget_without_calibration():
    model = _classifier(selector=functools.partial(InputConditionedSelector, hidden_dim=16, mode="threshold")).eval()
    with torch.no_grad():
        _, keep = model(torch.randn(3, 4000), None, model.num_layers)
        assert keep.sum(1).tolist() == [model.num_layers] * 3
        with pytest.raises(RuntimeError, match="calibrate"):
            model(torch.randn(3, 4000), None, model.num_layers - 1)


def test_test_sweep_goes_to_tensorboard_beside_the_files(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    L.seed_everything(0)
    from ldrop.sweeps import BudgetSweep

    model = _classifier(selector=functools.partial(InputConditionedSelector, hidden_dim=16))
    logger = TensorBoardLogger(str(tmp_path), name="run")
    trainer = quiet_trainer(tmp_path, logger=logger, callbacks=[BudgetSweep(budgets=[1, 4])])
    trainer.test(model, tiny_classification_data())
    run_dir = tmp_path / "run" / "version_0"
    assert {"budget_sweep.png", "layer_usage.png", "budget_sweep.csv"} <= {p.name for p in run_dir.iterdir()}
    tags = EventAccumulator(str(run_dir)).Reload().Tags()
    assert {"sweep/budget_sweep", "sweep/layer_usage"} <= set(tags["images"])
    assert "sweep/table/text_summary" in tags["tensors"]
