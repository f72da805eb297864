"""The fallback and the threshold calibration are components: a downstream selector (defined here) uses them
as the input-conditioned selector does."""

from __future__ import annotations

import torch

from ldrop.selectors import (
    InputBlindFallback,
    LayerSelector,
    SelectorOutput,
    ThresholdCalibration,
    hard_topk_mask,
)
from ldrop.selectors.topk import threshold_mask

from .inputs import FEATURE_DIM, NUM_LAYERS
from .test_fallback import PAYS, FakeCalibrationData


class ProjectionSelector(LayerSelector):
    """Scores layers with a fixed random projection of the mean feature: input-dependent, nothing trained."""

    def __init__(self, num_layers: int, feature_dim: int) -> None:
        super().__init__(num_layers, feature_dim)
        self.projection = torch.randn(feature_dim, num_layers, generator=torch.Generator().manual_seed(0))
        self.fallback = InputBlindFallback(num_layers)
        self.calibration = ThresholdCalibration(num_layers)

    def score(self, features, frame_mask, budget, *, waveforms=None, lengths=None):
        return features.mean(1) @ self.projection

    def forward(self, features, frame_mask, budget, *, waveforms=None, lengths=None):
        budget = self.check_budget(budget, features.shape[0])
        keep = hard_topk_mask(self.score(features, frame_mask, budget), budget)
        return SelectorOutput(keep_mask=self.fallback.apply(keep, budget) if not self.training else keep)

    def calibrate(self, data, budgets):
        self.fallback.calibrate(self, data, budgets)

    def report(self):
        return self.fallback.report()


def test_a_downstream_selector_falls_back_where_its_input_does_not_pay() -> None:
    selector = ProjectionSelector(NUM_LAYERS, FEATURE_DIM).eval()
    data = FakeCalibrationData(selector)
    for k in PAYS:  # the construction needs the selector's own masks to differ across inputs there
        assert torch.cat(data.targets[k]).unique(dim=0).shape[0] > 1
    selector.calibrate(data, range(1, NUM_LAYERS + 1))
    report = selector.report()
    assert sorted(report) == list(range(1, NUM_LAYERS))
    assert {k: r["uses_input"] for k, r in report.items()} == {k: k in PAYS for k in report}
    batch = data.batches[0]
    for k in range(1, NUM_LAYERS):  # evaluation gives every input the blind mask where it falls back
        masks = selector(batch.features, batch.frame_mask, torch.full((8,), k)).keep_mask.bool()
        assert (masks.unique(dim=0).shape[0] == 1) == (k not in PAYS)


def test_a_downstream_selector_calibrates_thresholds_to_the_budget_on_average() -> None:
    selector = ProjectionSelector(NUM_LAYERS, FEATURE_DIM).eval()
    data = FakeCalibrationData(selector)
    selector.calibration.calibrate(selector, data, [2, 3])
    scores = torch.cat([selector.score(b.features, b.frame_mask, None) for b in data.batches])
    for k in (2, 3):
        thresholds = selector.calibration.thresholds_for(torch.full((scores.shape[0],), k))
        assert abs(float(threshold_mask(scores, thresholds).sum(1).mean()) - k) <= 0.5
    assert not selector.calibration.is_calibrated(4)
