"""What a notebook passes to a loaded model: ``soundfile.read``'s float64 arrays, lists of clips, file paths,
numpy budgets, tensors that need grad. Each entry point (the task that ``load_model`` returns, ``AdaptiveModel``,
``OnnxAdaptiveModel``) gives the float32 tensor's answer, or one line that says what to give instead."""

from __future__ import annotations

import warnings
from fractions import Fraction

import numpy as np
import pytest
import soundfile as sf
import torch

from ldrop.runtime import AdaptiveModel, OnnxAdaptiveModel, load_model
from tests.helpers import padded_batch


@pytest.fixture(scope="module")
def task(tiny_checkpoint):
    return load_model(tiny_checkpoint).eval()


@pytest.fixture(scope="module")
def clips() -> tuple[torch.Tensor, torch.Tensor]:
    return padded_batch([8000, 5000], seed=3)


def _reference(task, waves, lengths, budget=2):
    with torch.no_grad():
        return task(waves, lengths, budget)


def test_the_task_reads_arrays_lists_and_files_as_its_float32_tensors(task, clips, tmp_path):
    waves, lengths = clips
    logits, keep = _reference(task, waves, lengths)
    first = waves[0, :8000].numpy().astype(np.float64)  # as soundfile.read returns it
    second = waves[1, :5000].numpy()
    sf.write(tmp_path / "first.wav", first, 16000, subtype="FLOAT")
    given = {
        "float64 array and a list of lengths": (waves.numpy().astype(np.float64), [8000, 5000]),
        "float64 tensor": (waves.double(), lengths),
        "list of arrays": ([first, second], None),
        "list of a path and a tensor": ([str(tmp_path / "first.wav"), torch.from_numpy(second)], None),
    }
    with torch.no_grad():
        for name, (w, n) in given.items():
            got_logits, got_keep = task(w, n, 2)
            assert torch.equal(got_keep, keep), name
            assert torch.allclose(got_logits, logits, atol=1e-5), name


@pytest.mark.parametrize("bad, message", [
    ("nan", "hold NaN or inf samples"),
    ("stereo", "look like [samples, channels]"),
    ("int16", "int16 samples"),
    ("lengths", "lengths must be [batch=2]"),
])
def test_the_task_refuses_what_would_give_a_wrong_answer_in_one_line(task, clips, bad, message):
    """A NaN sample gave NaN logits and a confident label; a [samples, 2] clip was read as a batch of clips."""
    waves, lengths = clips
    args = {
        "nan": (waves.clone().index_put_((torch.tensor(0), torch.tensor(10)), torch.tensor(float("nan"))), lengths),
        "stereo": (waves[0, :8000].reshape(-1, 2), None),
        "int16": ((waves * 3000).to(torch.int16), lengths),
        "lengths": (waves, torch.tensor([8000, 5000, 100])),
    }[bad]
    with pytest.raises(ValueError) as caught, torch.no_grad():
        task(*args, 2)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_numpy_budgets_are_numbers_everywhere(task, clips):
    waves, lengths = clips
    _, keep = _reference(task, waves, lengths, 2)
    with torch.no_grad():
        assert torch.equal(task(waves, lengths, [np.int64(2), np.int64(2)])[1], keep)
        assert torch.equal(task(waves, lengths, np.float32(0.5))[1], keep)  # half of 4 layers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = AdaptiveModel(task)(waves, list(np.array([2, 3])), lengths=lengths)
    assert out.layers_run.tolist() == [2, 3]
    before = task.predict_budget
    try:
        task.predict_budget = np.int64(3)
        assert task.predict_budget == 3 and type(task.hparams.predict_budget) is int  # saved as a YAML number
        with pytest.raises(ValueError, match="predict_budget: budget must be between 1 and 4 layers, got 5"):
            task.predict_budget = np.int64(5)
        for refused in (np.bool_(True), Fraction(1, 2)):  # a Fraction would make the checkpoint unloadable
            with pytest.raises(ValueError, match="budget must be an int"):
                task.predict_budget = refused
    finally:
        task.predict_budget = before


def test_adaptive_model_reads_files_and_points_a_path_to_from_pretrained(task, clips, tiny_checkpoint, tmp_path):
    waves, _ = clips
    sf.write(tmp_path / "clip.wav", waves[0, :8000].numpy(), 16000, subtype="FLOAT")
    model = AdaptiveModel(task)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_file, from_array = model(str(tmp_path / "clip.wav"), 2), model(waves[0, :8000], 2)
    assert torch.allclose(from_file.logits, from_array.logits, atol=1e-6)
    with pytest.raises(ValueError, match=r"AdaptiveModel.from_pretrained\('.*tiny.ckpt'\)"):
        AdaptiveModel(str(tiny_checkpoint))


def test_the_onnx_runtime_takes_tensors_that_need_grad_and_bfloat16(tiny_checkpoint, clips):
    """They failed inside numpy ("Can't call numpy() on Tensor that requires grad", "unsupported ScalarType")."""
    waves, lengths = clips
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = OnnxAdaptiveModel.from_pretrained(tiny_checkpoint)
        plain = model(waves.numpy(), 2, lengths=lengths.numpy())
        grad = model(waves.clone().requires_grad_(True), 2, lengths=lengths)
        bf16 = model(waves.bfloat16(), 2, lengths=lengths)
        listed = model([waves[0, :8000].clone().requires_grad_(True), waves[1, :5000].bfloat16()], 2)
    np.testing.assert_allclose(grad.logits, plain.logits, atol=1e-6)
    expected = model(waves.bfloat16().float().numpy(), 2, lengths=lengths.numpy())
    np.testing.assert_allclose(bf16.logits, expected.logits, atol=1e-6)
    assert listed.logits.shape == plain.logits.shape


def test_a_model_converted_with_bfloat16_takes_float32_input(tiny_checkpoint, clips):
    """``model.bfloat16()`` leaves Lightning's ``dtype`` at float32: the input was cast to it, and the conv failed."""
    waves, lengths = clips
    model = load_model(tiny_checkpoint).bfloat16()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logits, keep = model(waves, lengths, 4)
        expected, _ = model(waves.bfloat16(), lengths, 4)
    assert logits.dtype == torch.bfloat16 and torch.equal(logits, expected) and keep.sum(1).tolist() == [4, 4]
