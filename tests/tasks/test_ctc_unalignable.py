"""An utterance too short for its transcript has an infinite CTC loss, which ``zero_infinity`` makes 0: it trained
nothing and ``train/loss`` read 0.000 with nothing said. The task now says so, once, naming one such utterance."""

from __future__ import annotations

import logging

import torch

from ldrop.data.batch import AudioBatch
from ldrop.tasks import CTCTask


def _batch(transcripts: list[str]) -> AudioBatch:
    return AudioBatch(waveforms=torch.zeros(len(transcripts), 1), lengths=torch.ones(len(transcripts)),
                      targets=transcripts, ids=[f"utt-{i}" for i in range(len(transcripts))])


def test_an_utterance_too_short_for_its_transcript_is_reported_once(caplog):
    torch.manual_seed(0)
    task = CTCTask(backbone="tiny:wavlm")
    logits = torch.randn(2, 12, len(task.vocabulary) + 1)
    frame_mask = torch.ones(2, 12, dtype=torch.bool)
    frame_mask[1, 9:] = False  # 9 frames
    fits, too_long = "hello", "a transcript of thirty one char"  # 5 (+1 for "ll") and 31 characters
    with caplog.at_level(logging.WARNING, logger="ldrop.tasks.ctc"):
        loss = task.item_losses(logits, frame_mask, _batch([fits, too_long]))
        task.task_loss(logits, frame_mask, _batch([too_long, too_long]))
    assert loss[0] > 0 and loss[1] == 0  # what zero_infinity does to it
    [record] = [r for r in caplog.records if "too short for their transcripts" in r.getMessage()]
    assert "1 of 2 utterances" in record.getMessage() and "'utt-1': 9 frames, 31 needed" in record.getMessage()


def test_repeated_characters_need_a_blank_between_them_and_enough_frames_say_nothing(caplog):
    task = CTCTask(backbone="tiny:wavlm")
    logits = torch.randn(1, 3, len(task.vocabulary) + 1)
    with caplog.at_level(logging.WARNING, logger="ldrop.tasks.ctc"):
        task.task_loss(logits, torch.ones(1, 3, dtype=torch.bool), _batch(["ab"]))  # 3 frames for 2: fine
        assert not caplog.records
        task.task_loss(logits, torch.ones(1, 3, dtype=torch.bool), _batch(["aab"]))  # a, blank, a, b: 4
    assert "(e.g. 'utt-0': 3 frames, 4 needed)" in caplog.text
