"""The device cost model: fitting a known law, predicting the sparse path's work, JSON round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ldrop.budgets import DeviceProfile, PartFit, Target, fit_part, profile_model
from ldrop.budgets.profile import random_batches
from ldrop.selectors import InputConditionedSelector
from ldrop.tasks import ClassificationTask
from tests.runtime.conftest import synthetic_profile

FIXED_LAW = PartFit(0.003, 2e-6, 0.0)
LAYER_LAW = PartFit(0.0005, 4e-6, 3e-9)


def law_timer(part: str, batch: int, frames: int) -> float:
    """A synthetic timing source following FIXED_LAW / LAYER_LAW with +-1% deterministic jitter."""
    jitter = 1 + 0.01 * math.sin(7 * batch + frames)
    law = FIXED_LAW if part == "fixed" else LAYER_LAW
    return float(law.seconds(batch, frames)) * jitter


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return ClassificationTask(labels=["a", "b"], backbone="tiny:wavlm", selector=InputConditionedSelector).eval()


def test_fit_recovers_a_known_law_from_a_synthetic_timer(tiny_model):
    reference = synthetic_profile(tiny_model.num_layers, fixed=vars(FIXED_LAW).values(),
                                  layer=vars(LAYER_LAW).values())
    profile = profile_model(tiny_model, seconds=(1, 2, 4, 8, 16), batch_sizes=(1, 2, 4, 8), measure=law_timer,
                            measure_batch=reference.predict, validation_batches=6)
    for fitted, law in ((profile.fixed, FIXED_LAW), (profile.layer, LAYER_LAW)):
        for name in ("overhead", "per_frame", "per_frame_sq"):
            assert getattr(fitted, name) == pytest.approx(getattr(law, name), rel=0.1, abs=1e-10), name
    assert profile.validation["median_abs_relative_error"] < 0.03 and profile.validation["passed"]
    assert max(abs(m["relative_residual"]) for m in profile.measurements) < 0.05


def test_fit_keeps_every_coefficient_non_negative():
    # A law with a zero quadratic term plus jitter: plain least squares may go negative, the fit must not.
    points = [(b, t, (0.001 + 1e-5 * b * t) * (1 + 0.03 * ((b * 7 + t) % 3 - 1))) for b in (1, 2, 4)
              for t in (50, 100, 200, 400)]
    fit, residuals = fit_part(points)
    assert min(fit.overhead, fit.per_frame, fit.per_frame_sq) >= 0
    assert max(abs(r) for r in residuals) < 0.1


def test_fit_rejects_too_few_or_non_positive_times():
    with pytest.raises(ValueError, match="at least 3"):
        fit_part([(1, 10, 0.1), (1, 20, 0.2)])
    with pytest.raises(ValueError, match="positive"):
        fit_part([(1, 10, 0.1), (1, 20, 0.0), (1, 30, 0.3)])


def test_prediction_counts_each_layer_on_its_sub_batch_at_its_longest_input():
    profile = synthetic_profile()
    lengths = torch.tensor([16000, 8000])
    frames = profile.frames(lengths).tolist()  # [49, 24]
    keep = torch.tensor([[1.0, 1, 0, 0], [1, 0, 1, 0]])
    expected = (profile.fixed.seconds(2, frames[0]) + profile.layer.seconds(2, frames[0])
                + profile.layer.seconds(1, frames[0]) + profile.layer.seconds(1, frames[1]))
    assert profile.predict(lengths, keep) == pytest.approx(expected)
    assert profile.predict(lengths, torch.zeros(2, 4)) == pytest.approx(profile.fixed.seconds(2, frames[0]))


def test_one_input_is_attributed_exactly_its_predicted_time():
    profile = synthetic_profile()
    lengths = torch.tensor([24000])
    fixed, layer = profile.per_input(lengths)
    keep = torch.tensor([[1.0, 1, 1, 0]])
    assert float(fixed[0] + 3 * layer[0]) == pytest.approx(profile.predict(lengths, keep))


def test_profile_round_trips_through_json(tmp_path):
    profile = synthetic_profile()
    profile.validation = {"median_abs_relative_error": 0.05}
    again = DeviceProfile.load(profile.save(tmp_path / "p.json"))
    assert again == profile


def test_a_file_that_is_not_a_profile_is_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"fixed": 1}')
    with pytest.raises(ValueError, match="not an ldrop device profile"):
        DeviceProfile.load(bad)
    with pytest.raises(FileNotFoundError, match="ldrop profile"):
        DeviceProfile.load(tmp_path / "missing.json")


BAD_PROFILES = {
    "not-json": ("{rtf: 0.1", "not valid JSON"),
    "binary": (b"\x89PNG\r\n\x1a\n\xff\xfe", "not a text file"),
    "a-list": ("[1, 2]", "holds a list, not an object"),
    "missing-fields": ('{"fixed": {"overhead": 0.001}}', "missing field(s)"),
    "bad-coefficient": (json.dumps({**synthetic_profile().to_dict(), "layer": {"overhead": "fast"}}),
                        "'layer' coefficients must be finite numbers"),
    "bad-layers": (json.dumps({**synthetic_profile().to_dict(), "num_layers": 0}), "'num_layers' must be"),
    "free-layers": (json.dumps({**synthetic_profile().to_dict(), "layer": {"overhead": 0, "per_frame": 0.0}}),
                    "the 'layer' coefficients are all 0"),
}


@pytest.mark.parametrize("name", sorted(BAD_PROFILES))
def test_a_damaged_profile_is_refused_when_the_target_is_parsed_naming_the_file(name, tmp_path):
    content, problem = BAD_PROFILES[name]
    path = tmp_path / f"{name}.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    for load in (lambda: Target.parse({"rtf": 0.1, "profile": str(path)}), lambda: DeviceProfile.load(path)):
        with pytest.raises(ValueError) as error:
            load()
        assert str(path) in str(error.value) and problem in str(error.value)
        assert "\n" not in str(error.value)


def test_a_valid_profile_passes_the_parse_and_a_missing_one_is_named(tmp_path):
    path = synthetic_profile().save(tmp_path / "p.json")
    assert Target.parse({"ms": 80, "profile": str(path)}).profile == str(path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        Target.parse({"rtf": 0.1, "profile": str(tmp_path / "missing.json")})


def test_the_cli_prints_a_damaged_profile_as_one_line_before_any_work(tmp_path, capsys):
    from ldrop.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text("{rtf: 0.1")
    quickstart = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
    for option in (["--model.init_args.predict_budget", f"{{rtf: 0.1, profile: {bad}}}"],
                   ["--sweep.targets", f"[{{rtf: 0.1, profile: {bad}}}]"]):
        code = main(["test", "--config", str(quickstart), "--trainer.logger", "false",
                     "--trainer.default_root_dir", str(tmp_path / "run"), *option])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("ldrop: error:"), lines
        assert str(bad) in lines[0] and "not valid JSON" in lines[0]
    assert not (tmp_path / "run").exists()


def test_held_out_batches_are_seeded_and_within_the_grid():
    a = random_batches(5, 4, (1.0, 2.0), (1, 2), seed=3)
    b = random_batches(5, 4, (1.0, 2.0), (1, 2), seed=3)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    assert all(16000 <= int(n.min()) and int(n.max()) <= 32000 and bool((k.sum(1) >= 1).all()) for n, k in a)


def test_real_timers_run_on_a_tiny_model(tiny_model):
    profile = profile_model(tiny_model, seconds=(0.5, 1.0), batch_sizes=(1, 2), repeats=1, warmup=0,
                            validation_batches=2)
    assert profile.fixed.seconds(1, 50) > 0 and profile.layer.seconds(1, 50) > 0
    assert len(profile.validation["batches"]) == 2
    assert profile.device["device"] == "cpu" and profile.device["dtype"] == "float32"


def test_profiling_a_bf16_model_runs_every_module_in_bf16_but_the_selector_in_float32():
    import collections
    import functools

    torch.manual_seed(0)
    model = ClassificationTask(labels=["a", "b"], backbone="tiny:wavlm", selector=functools.partial(
        InputConditionedSelector, input="fbank", hidden_dim=8)).to(torch.bfloat16)
    seen: collections.Counter = collections.Counter()

    def record(in_selector, module, args):
        seen.update((in_selector, type(module).__name__, a.dtype) for a in args
                    if torch.is_tensor(a) and a.is_floating_point())

    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            module.register_forward_pre_hook(functools.partial(record, name.startswith("selector.")))
    profile = profile_model(model, seconds=(0.5, 1.0), batch_sizes=(1, 2), repeats=1, warmup=0, validation_batches=2)
    assert profile.device["dtype"] == "bfloat16"
    for in_selector, dtype in ((False, torch.bfloat16), (True, torch.float32)):  # the selector keeps float32
        modules = {name for where, name, _ in seen if where == in_selector}
        assert {"Linear", "LayerNorm"} <= modules  # the CNN, the layers and the head ran; the selector ran
        assert {d for where, _, d in seen if where == in_selector} == {dtype}, sorted(seen)
    assert "Conv1d" in {name for where, name, _ in seen if not where}
