"""SelectorStatistics refreshes a selector's running statistics on what its forward read in training."""

from __future__ import annotations

import functools

import torch

from ldrop.data.batch import AudioBatch
from ldrop.selectors import InputConditionedSelector
from ldrop.tasks import ClassificationTask
from ldrop.tasks.statistics import SelectorStatistics


def _statistics(selector) -> torch.Tensor:
    return torch.cat([selector.running_mean.flatten(), selector.running_var.flatten()]).clone()


def test_refreshed_statistics_of_a_filterbank_selector_read_the_normalised_waveforms():
    """With ``normalize_waveforms`` the forward's filterbank reads normalised audio; the refresh must too. The
    selector is nearly blind to a gain, but not for quiet audio, whose raw power falls below the log's floor."""
    torch.manual_seed(0)
    task = ClassificationTask(labels=["a", "b"], backbone="tiny:wavlm", normalize_waveforms=True,
                              selector=functools.partial(InputConditionedSelector, input="fbank", hidden_dim=8,
                                                         fallback=False))
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(2):
        lengths = torch.tensor([16000, 12000, 9000])
        waves = 1e-4 * torch.randn(3, 16000, generator=generator) * (torch.arange(16000) < lengths[:, None])
        batches.append(AudioBatch(waveforms=waves, lengths=lengths, targets=torch.tensor([0, 1, 0]),
                                  ids=["x", "y", "z"]))
    callback = SelectorStatistics(batches=4)
    with torch.no_grad():
        encoded = [task.encode(batch.waveforms, batch.lengths) for batch in batches]
    for i, (batch, enc) in enumerate(zip(batches, encoded, strict=True)):
        callback.on_train_batch_end(None, task, {"loss": torch.zeros(()), "encoded": enc}, batch, i)
    callback.refresh(task)
    refreshed = _statistics(task.selector)

    def fold(read) -> torch.Tensor:
        task.selector.reset_statistics()
        with torch.no_grad():
            for batch, enc in zip(batches, encoded, strict=True):
                task.selector.update_statistics(enc.features, enc.frame_mask, **read(batch, enc))
        return _statistics(task.selector)

    normalised = fold(lambda batch, enc: dict(waveforms=enc.waveforms, lengths=enc.lengths))
    raw = fold(lambda batch, enc: dict(waveforms=batch.waveforms, lengths=batch.lengths))
    assert (raw - normalised).abs().max() > 1e-4  # the two readings differ (about 1e-3), so the check can fail
    assert (refreshed - normalised).abs().max() < 1e-6
