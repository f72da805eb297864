"""``batch_independent``: an input's logits and layer choice are what it gets alone, whatever its batch-mates."""

from __future__ import annotations

import functools

import pytest
import torch

from ldrop.selectors import InputConditionedSelector
from ldrop.tasks import ClassificationTask
from tests.helpers import padded_batch

LENGTHS = [40000, 24000, 13000]  # 2.5 s, 1.5 s and 0.8 s: the shorter two padded in the batch


def _task(family: str, batch_independent: bool) -> ClassificationTask:
    torch.manual_seed(0)
    selector = functools.partial(InputConditionedSelector, hidden_dim=8, fallback=False)
    return ClassificationTask(labels=["a", "b", "c"], backbone=f"tiny:{family}", selector=selector,
                              batch_independent=batch_independent).eval()


def _batched_and_alone(task: ClassificationTask, budget: int | None):
    """Logits and keep masks of the padded batch, and of each input alone."""
    waves, lengths = padded_batch(LENGTHS, seed=1)
    waves = 0.1 * waves
    with torch.no_grad():
        batched = task(waves, lengths, budget)
        alone = [task(waves[i : i + 1, :n], lengths[i : i + 1], budget) for i, n in enumerate(LENGTHS)]
    return batched, alone


@pytest.mark.parametrize("family", ["wavlm", "hubert", "wav2vec2", "data2vec", "wavlm-large"])
def test_each_input_gets_what_it_gets_alone(family):
    task = _task(family, batch_independent=True)
    for budget in (2, None):
        (logits, keep), alone = _batched_and_alone(task, budget)
        for i, (own_logits, own_keep) in enumerate(alone):
            assert torch.equal(keep[i], own_keep[0]), (budget, i)
            assert (logits[i] - own_logits[0]).abs().max() < 1e-5, (budget, i)


@pytest.mark.parametrize("family", ["wavlm", "hubert", "wav2vec2", "data2vec"])
def test_without_it_padding_moves_the_logits_as_hugging_face_does(family):
    # group norm over the padded CNN output (and Data2VecAudio's positional convolutions reading the padding)
    (logits, _), alone = _batched_and_alone(_task(family, batch_independent=False), None)
    assert (logits[2] - alone[2][0]).abs().max() > 1e-3


def test_it_trains_and_runs_under_bf16_autocast():
    task = ClassificationTask(labels=["a", "b"], backbone="tiny:wavlm", freeze="none", batch_independent=True).eval()
    waves, lengths = padded_batch(LENGTHS, seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = task(0.1 * waves, lengths, None)
    logits.float().sum().backward()  # the CNN trains (freeze: none) through the masked norm
    grad = task.backbone.model.feature_extractor.conv_layers[0].layer_norm.weight.grad
    assert grad is not None and bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0
    with torch.no_grad():
        reference, _ = task(0.1 * waves, lengths, None)  # float32
    assert (logits.float() - reference).abs().max() < 0.05 * reference.abs().max() + 0.02  # bf16 rounding only
