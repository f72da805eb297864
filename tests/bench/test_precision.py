import math

import pytest

from ldrop.bench.precision import build_parser, paired_interval


def test_the_paired_interval_is_the_student_t_interval_of_the_differences():
    mean, half = paired_interval([0.01, 0.03, -0.01, 0.02, 0.0])
    assert mean == pytest.approx(0.01)
    # sd of the differences 0.0158, t(0.975, 4 df) = 2.776, n = 5
    assert half == pytest.approx(2.776 * 0.015811 / math.sqrt(5), rel=1e-3)
    assert math.isnan(paired_interval([0.02])[1])


@pytest.mark.parametrize(("dof", "quantile"), [(4, 2.776), (10, 2.228), (11, 2.201), (20, 2.086), (30, 2.042),
                                               (120, 1.980)])
def test_more_seeds_use_students_t_not_the_normal(dof, quantile):
    # Student's t 0.975 quantiles (the normal's 1.96 is 11 % narrower at 11 degrees of freedom)
    from ldrop.bench.precision import t975

    assert t975(dof) == pytest.approx(quantile, abs=1.5e-3)


def test_the_benchmark_defaults_are_the_quickstart_at_fp32_and_bf16_mixed():
    args = build_parser().parse_args([])
    assert args.config == "configs/quickstart.yaml"
    assert args.precisions[0] == "32-true" and "bf16-mixed" in args.precisions
    assert len(args.seeds) >= 3


def test_each_precision_is_fitted_tested_and_compared_and_a_rerun_keeps_finished_runs(tmp_path, monkeypatch, capsys):
    import yaml

    import ldrop.bench
    from ldrop.bench.precision import run
    from tests.bench.test_methods import in_process_launch

    monkeypatch.setattr(ldrop.bench, "launch", in_process_launch)
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "enable_progress_bar": False,
                    "enable_model_summary": False, "num_sanity_val_steps": 0},
        "model": {"class_path": "ClassificationTask", "init_args": {"backbone": "tiny:wavlm"}},
        "data": {"class_path": "SyntheticClassificationDataModule",
                 "init_args": {"num_classes": 3, "num_train": 8, "num_val": 4, "num_test": 6, "batch_size": 4,
                               "duration_range": [0.3, 0.4]}},
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    argv = ["--config", str(tmp_path / "tiny.yaml"), "--seeds", "[0, 1]", "--out", str(tmp_path / "out")]
    record = run(build_parser().parse_args(argv), argv)
    by_run = {}
    for row in record["rows"]:
        by_run.setdefault(row["run"], []).append(row)
    assert set(by_run) == {"fit 32-true, test 32-true", "fit 32-true, test bf16-mixed", "fit bf16-mixed, test bf16-mixed"}
    assert [r["budget"] for r in by_run["fit 32-true, test 32-true"]] == [1, 2, 3, 4]
    assert all("diff" not in r for r in by_run["fit 32-true, test 32-true"])  # the reference
    assert all(len(r["per_seed"]) == 2 and "ci95" in r for r in by_run["fit bf16-mixed, test bf16-mixed"])
    assert (tmp_path / "out" / "precision.md").read_text().count("(reference)") == 4
    capsys.readouterr()
    assert run(build_parser().parse_args(argv), argv)["rows"] == record["rows"]  # nothing runs again
    assert capsys.readouterr().out.count("done earlier") == 2 * 5
