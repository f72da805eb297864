"""The input-conditioned selector's fallback: per budget, the best input-blind mask where reading the input
does not pay on validation data (issue 11, item 3)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from ldrop.selectors import InputConditionedSelector
from ldrop.selectors.static import evenly_spaced_layers

from .inputs import FEATURE_DIM, NUM_LAYERS, random_inputs

#: Budgets where, by construction of the fake metric, each input's best mask is the selector's own choice.
PAYS = (2, 4)


def _selector(**kwargs) -> InputConditionedSelector:
    """An untrained selector whose running statistics standardise the input term over :func:`_batches`."""
    torch.manual_seed(0)
    selector = InputConditionedSelector(NUM_LAYERS, FEATURE_DIM, hidden_dim=16, **kwargs).eval()
    for batch in _batches():
        selector.update_statistics(batch.features, batch.frame_mask)
    return selector


def _batches() -> list[SimpleNamespace]:
    batches = []
    for seed in range(3):
        features, frame_mask = random_inputs(8, seed=seed)
        batches.append(SimpleNamespace(features=features, frame_mask=frame_mask, waveforms=None, lengths=None))
    return batches


@torch.no_grad()
def _masks(selector: InputConditionedSelector, batch: SimpleNamespace, k: int) -> torch.Tensor:
    budget = torch.full((batch.features.shape[0],), k, dtype=torch.long)
    return selector(batch.features, batch.frame_mask, budget).keep_mask.bool()


def _blind_target(k: int) -> list[int]:
    return evenly_spaced_layers(NUM_LAYERS, k)


class FakeCalibrationData:
    """Fitting batches whose metric is each input's overlap with its target mask (mean fraction of its ``k``
    layers in the target): at the budgets in :data:`PAYS` the targets are the selector's own masks (reading the
    input pays), elsewhere one fixed mask for every input (it does not)."""

    def __init__(self, selector: InputConditionedSelector, higher_is_better: bool = True, pays=PAYS,
                 blind_target=_blind_target) -> None:
        self.batches = _batches()
        self.higher_is_better = higher_is_better
        self.targets = {}
        for k in range(1, NUM_LAYERS + 1):
            if k in pays:
                self.targets[k] = [_masks(selector, batch, k) for batch in self.batches]
            else:
                fixed = torch.zeros(NUM_LAYERS, dtype=torch.bool)
                fixed[blind_target(k)] = True
                self.targets[k] = [fixed.expand(batch.features.shape[0], -1) for batch in self.batches]

    def inputs(self):
        yield from self.batches

    def metric_with_masks(self, choose) -> float:
        overlaps = []
        for batch, *targets in zip(self.batches, *self.targets.values(), strict=True):
            masks = choose(batch).bool()
            k = int(masks[0].sum())
            overlaps.append((masks & targets[k - 1]).sum(-1).float() / k)
        value = float(torch.cat(overlaps).mean())
        return value if self.higher_is_better else 1.0 - value

    def metric_with_layers(self, layers) -> float:
        def fixed(batch):
            keep = torch.zeros(batch.features.shape[0], NUM_LAYERS)
            keep[:, list(layers)] = 1.0
            return keep

        return self.metric_with_masks(fixed)


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_falls_back_to_the_best_blind_mask_exactly_where_the_input_does_not_pay(higher_is_better, caplog) -> None:
    selector = _selector()
    data = FakeCalibrationData(selector, higher_is_better)
    for k in PAYS:  # the construction needs the selector's own masks to differ across inputs there
        assert torch.cat(data.targets[k]).unique(dim=0).shape[0] > 1
    selector.train()
    with caplog.at_level(logging.INFO, logger="ldrop.progress"):  # one line per budget and a summary
        selector.calibrate(data, range(1, NUM_LAYERS + 1))
    assert selector.training  # fit restores the mode it found
    assert "k=2: input" in caplog.text

    report = selector.report()
    assert sorted(report) == list(range(1, NUM_LAYERS))  # the full budget has nothing to decide
    assert {k: r["uses_input"] for k, r in report.items()} == {k: k in PAYS for k in report}
    for k, r in report.items():
        if k not in PAYS:
            assert r["blind_layers"] == _blind_target(k)
    selector.eval()
    for i, batch in enumerate(data.batches):
        for k in range(1, NUM_LAYERS):
            masks = _masks(selector, batch, k)
            # PAYS: its own input-dependent masks; elsewhere: the blind mask, the same for every input
            assert torch.equal(masks, data.targets[k][i])


def test_a_margin_larger_than_the_gain_falls_back_everywhere() -> None:
    selector = _selector(fallback_margin=1.0)
    selector.calibrate(FakeCalibrationData(selector), range(1, NUM_LAYERS + 1))
    report = selector.report()
    assert report and not any(r["uses_input"] for r in report.values())
    assert all(report[k]["input"] > report[k]["blind"] for k in PAYS)


def test_fallback_search_finds_a_best_subset_outside_the_simple_candidates() -> None:
    def last(k: int) -> list[int]:  # nested, so greedy backward elimination finds each one
        return list(range(NUM_LAYERS - k, NUM_LAYERS))

    selector = _selector(fallback_search=True)
    selector.calibrate(FakeCalibrationData(selector, pays=(), blind_target=last), range(1, NUM_LAYERS + 1))
    report = selector.report()
    assert {k: r["blind_layers"] for k, r in report.items()} == {k: last(k) for k in range(1, NUM_LAYERS)}
    assert all(r["blind"] == 1.0 and not r["uses_input"] for r in report.values())


def test_budgets_not_fitted_keep_reading_the_input() -> None:
    selector = _selector()
    data = FakeCalibrationData(selector)
    selector.calibrate(data, [1, 3])
    assert sorted(selector.report()) == [1, 3]
    assert selector.fallback.uses_input.tolist() == [False, True, False, True, True, True]


def test_state_dict_round_trip_keeps_the_decisions() -> None:
    selector = _selector()
    data = FakeCalibrationData(selector)
    selector.calibrate(data, range(1, NUM_LAYERS + 1))
    copy = _selector()
    copy.load_state_dict(selector.state_dict())
    assert copy.report() == selector.report()
    for batch in data.batches:
        for k in range(1, NUM_LAYERS + 1):
            assert torch.equal(_masks(copy, batch, k), _masks(selector, batch, k))


def test_training_clears_the_decisions() -> None:
    selector = _selector()
    data = FakeCalibrationData(selector)
    selector.calibrate(data, range(1, NUM_LAYERS + 1))
    assert not bool(selector.fallback.uses_input.all())
    selector.train()
    batch = data.batches[0]
    selector(batch.features, batch.frame_mask, torch.full((8,), 2))
    assert bool(selector.fallback.uses_input.all()) and selector.report() == {}


def test_fitting_protocol_flags() -> None:
    assert _selector().needs_calibration and not _selector().calibrates_at_validation
    assert not _selector(fallback=False).needs_calibration
    threshold = _selector(mode="threshold")
    assert threshold.needs_calibration and threshold.calibrates_at_validation


def test_threshold_mode_calibrates_and_does_not_fall_back() -> None:
    selector = _selector(mode="threshold")
    data = FakeCalibrationData(_selector())
    selector.calibrate(data, range(1, NUM_LAYERS + 1))
    assert all(selector.calibration.is_calibrated(k) for k in range(1, NUM_LAYERS + 1))
    assert selector.report() == {} and bool(selector.fallback.uses_input.all())


def test_fallback_off_changes_nothing() -> None:
    selector = _selector(fallback=False)
    data = FakeCalibrationData(selector)
    selector.calibrate(data, range(1, NUM_LAYERS + 1))
    assert selector.report() == {}


@pytest.mark.parametrize("margin", [-0.1, float("nan"), float("inf")])
def test_invalid_margin_is_a_clear_error(margin) -> None:
    with pytest.raises(ValueError, match="fallback_margin"):
        _selector(fallback_margin=margin)
