"""The counterfactual objective through the task's own training step, on a tiny model whose layers help
each input type by construction: the selector must find each type's layer where that depends on the type,
and give every input one schedule where it does not.

The backbone's layers are replaced by fixed functions (no weights) and the head is fixed, so the only thing
that learns is the selector, and the best layer of every input is known: layer 0 writes the evidence for
type-0 inputs, layer 1 for type-1 inputs (or layer 0 for both), layers 2 and 3 write nothing.
"""

from __future__ import annotations

import functools

import pytest
import torch

from ldrop.data import AudioBatch
from ldrop.selectors import InputConditionedSelector, mask_diversity
from ldrop.tasks import ClassificationTask
from ldrop.tasks.gating import EncodedBatch

FRAMES = 5


def _typed_batch(size: int, generator: torch.Generator) -> AudioBatch:
    types = torch.randint(0, 2, (size,), generator=generator)
    waveforms = torch.randn(size, 400, generator=generator)  # only carried along; encode is replaced
    return AudioBatch(waveforms, torch.full((size,), 400), types, [str(i) for i in range(size)])


def _model(layer_for_type: dict[int, int]) -> ClassificationTask:
    """A 4-layer task whose layer ``layer_for_type[t]`` writes the evidence of class ``t`` for type-``t`` inputs."""
    torch.manual_seed(0)
    model = ClassificationTask(
        labels=["type0", "type1"], backbone="tiny:wavlm", freeze="backbone",
        selector=functools.partial(InputConditionedSelector, hidden_dim=16, objective="counterfactual"),
    )
    hidden_size = model.backbone.hidden_size
    noise = torch.Generator().manual_seed(1)

    def encode(waveforms, lengths=None):  # type in channel 0 of the features and channel 1 of the hidden state
        sign = waveforms[:, :1].sign()  # the type, as _signed writes it into the first sample
        features = torch.randn(waveforms.shape[0], FRAMES, model.backbone.feature_dim, generator=noise) * 0.5
        features[..., 0] += sign
        hidden = torch.zeros(waveforms.shape[0], FRAMES, hidden_size)
        hidden[..., 1] = sign
        return EncodedBatch(waveforms, lengths, features, torch.ones(waveforms.shape[0], FRAMES, dtype=torch.bool),
                            hidden)

    def run_layer(index, hidden, frame_mask, context):
        is_type = {0: hidden[..., 1:2] < 0, 1: hidden[..., 1:2] > 0}
        out = hidden.clone()
        for input_type, layer in layer_for_type.items():
            if layer == index:
                out[..., 2 + input_type] = out[..., 2 + input_type] + 2.0 * is_type[input_type][..., 0]
        return out

    model.encode = encode
    model.backbone.run_layer = run_layer
    with torch.no_grad():  # class t's logit reads channel 2 + t
        model.head.weight.zero_()
        model.head.weight[0, 2] = model.head.weight[1, 3] = 3.0
        model.head.bias.zero_()
    model.head.requires_grad_(False)
    model.log = lambda *args, **kwargs: None
    model.sample_train_budget = lambda: 1
    return model


def _signed(batch: AudioBatch) -> AudioBatch:
    """The batch with the sign of its first sample set by its type (type 0: -1, type 1: +1), which encode reads."""
    waveforms = batch.waveforms.clone()
    waveforms[:, 0] = 2.0 * batch.targets.float() - 1.0
    return AudioBatch(waveforms, batch.lengths, batch.targets, batch.ids)


def _train(model: ClassificationTask, steps: int = 120) -> None:
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.selector.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        model.selector.set_progress(step / steps)
        loss = model.training_step(_signed(_typed_batch(32, generator)), step)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def _eval_masks(model: ClassificationTask) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Budget-1 masks of 200 fresh inputs, their types, and the smallest gap between an input's best and
    second-best layer score (a margin: rounding on another CPU cannot flip a choice made by more)."""
    batch = _signed(_typed_batch(200, torch.Generator().manual_seed(5)))
    with torch.no_grad():
        encoded = model.encode(batch.waveforms, batch.lengths)
        keep, _, _ = model.decide(encoded, 1)
        top = model.selector.score(encoded.features, encoded.frame_mask, torch.ones(200, dtype=torch.long))
    top = top.sort(-1, descending=True).values
    return keep, batch.targets, float((top[:, 0] - top[:, 1]).min())


def test_finds_each_input_types_layer_through_the_training_step():
    model = _model({0: 0, 1: 1})
    _train(model)
    keep, types, margin = _eval_masks(model)
    assert (keep[types == 0].argmax(1) == 0).float().mean() >= 0.95
    assert (keep[types == 1].argmax(1) == 1).float().mean() >= 0.95
    assert margin > 0.5  # 1.8-2.8 across selector initialisations


@pytest.mark.parametrize("layer", [0, 2])
def test_gives_every_input_one_schedule_when_the_best_layer_is_the_same_for_all(layer):
    model = _model({0: layer, 1: layer})
    _train(model)
    keep, _, margin = _eval_masks(model)
    assert mask_diversity(keep)["num_distinct"] == 1 and int(keep[0].argmax()) == layer
    assert margin > 0.1  # 0.15-1.9 across selector initialisations
