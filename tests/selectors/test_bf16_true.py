"""bf16-true (``model.to(torch.bfloat16)``): the input-conditioned selector keeps float32 weights and running
statistics, so its masks are those of the float32 selector on the same (bf16) features."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from ldrop.selectors import InputConditionedSelector
from ldrop.tasks import ClassificationTask, EarlyExitConfig


def _task(**options):
    torch.manual_seed(0)
    selector = functools.partial(InputConditionedSelector, hidden_dim=16, **options)
    task = ClassificationTask(labels=["a", "b"], backbone="tiny:wavlm", selector=selector).eval()
    with torch.no_grad():
        task.selector.score_head.bias += 10.0  # a running mean ~10x the scores' spread, as trained ones have
        waves = torch.randn(16, 16000) * torch.rand(16, 1) * 3
        encoded = task.encode(waves, torch.full((16,), 16000))
    task.selector.reset_statistics()
    task.selector.update_statistics(encoded.features, encoded.frame_mask,
                                    waveforms=encoded.waveforms, lengths=encoded.lengths)
    mean, var = task.selector.running_mean, task.selector.running_var
    assert float((mean.abs() / var.sqrt()).median()) > 10
    return task


@pytest.mark.parametrize("options", [{}, {"input": "fbank"}], ids=["cnn", "fbank"])
def test_a_bf16_cast_keeps_the_selector_float32_and_its_masks_those_of_float32(options):
    task = _task(**options)
    reference = copy.deepcopy(task.selector)
    task.to(torch.bfloat16)
    assert next(task.backbone.parameters()).dtype == torch.bfloat16  # the rest converts as asked
    assert {t.dtype for t in [*task.selector.parameters(), *task.selector.buffers()]
            if t.is_floating_point()} == {torch.float32}
    assert task.selector.running_mean.dtype == torch.float32
    torch.testing.assert_close(task.selector.running_mean, reference.running_mean, rtol=0, atol=0)
    with torch.no_grad():
        waves = torch.randn(64, 16000, generator=torch.Generator().manual_seed(7))
        waves = (waves * torch.rand(64, 1, generator=torch.Generator().manual_seed(8)) * 3).bfloat16()
        encoded = task.encode(waves, torch.full((64,), 16000))
        assert encoded.features.dtype == torch.bfloat16
        flips = 0
        for budget in range(1, task.num_layers):
            budgets = torch.full((64,), budget)
            got = task.selector(encoded.features, encoded.frame_mask, budgets,
                                waveforms=encoded.waveforms, lengths=encoded.lengths)
            expected = reference(encoded.features.float(), encoded.frame_mask, budgets,
                                 waveforms=encoded.waveforms.float(), lengths=encoded.lengths)
            flips += int((got.keep_mask != expected.keep_mask).any(1).sum())
            torch.testing.assert_close(got.scores.float(), expected.scores)
        assert flips == 0
        logits, keep, _ = task.logits_at_budget(encoded, 2)  # the bf16 model runs with the float32 selector
    assert logits.dtype == torch.bfloat16 and keep.sum(1).eq(2).all()


def test_a_device_move_still_moves_the_selector_and_float64_still_converts():
    task = _task()
    task.to("meta")
    assert task.selector.running_mean.device.type == "meta" and task.selector.frame_proj.weight.device.type == "meta"
    task = _task().double()
    assert task.selector.running_mean.dtype == torch.float64  # more precision is not refused
    task = _task().half()
    assert task.selector.frame_proj.weight.dtype == torch.float32


def test_a_bf16_models_state_loads_into_float32_and_bf16_models_with_the_selector_exact():
    task = _task()
    reference = copy.deepcopy(task.selector.state_dict())
    state = task.to(torch.bfloat16).state_dict()
    assert state["selector.running_mean"].dtype == torch.float32
    for dtype in (torch.float32, torch.bfloat16):
        fresh = ClassificationTask(labels=["a", "b"], backbone="tiny:wavlm",
                                   selector=functools.partial(InputConditionedSelector, hidden_dim=16)).to(dtype)
        fresh.load_state_dict(state)
        for name, value in reference.items():
            loaded = fresh.selector.state_dict()[name]
            assert loaded.dtype == value.dtype, name
            torch.testing.assert_close(loaded, value, rtol=0, atol=0, equal_nan=True, msg=name)



def test_a_selector_built_at_bf16_true_or_cast_from_float64_to_a_half_dtype_is_float32(tmp_path):
    from tests.helpers import quiet_trainer, tiny_classification_data

    data = tiny_classification_data()
    trainer = quiet_trainer(tmp_path, precision="bf16-true", max_steps=1, limit_val_batches=0)
    with trainer.init_module():  # the default dtype is bf16 while the model is built
        model = ClassificationTask(labels=data.class_names, backbone="tiny:wavlm", selector=InputConditionedSelector)
    trainer.fit(model, data)  # the trainer casts the model to bf16
    assert trainer.global_step == 1
    assert {p.dtype for n, p in model.named_parameters() if not n.startswith("selector.")} == {torch.bfloat16}
    floats = {t.dtype for t in [*model.selector.parameters(), *model.selector.buffers()] if t.is_floating_point()}
    assert floats == {torch.float32}
    with trainer.init_module():  # early exit's calibrated thresholds too
        exits = ClassificationTask(labels=data.class_names, backbone="tiny:wavlm",
                                   early_exit=EarlyExitConfig(policy="confidence"))
    assert exits.to(torch.bfloat16).depth.thresholds.dtype == torch.float32
    model = _task().double().to(torch.bfloat16)
    assert {p.dtype for p in model.selector.parameters()} == {torch.float32}
    assert {p.dtype for p in model.backbone.parameters()} == {torch.bfloat16}
