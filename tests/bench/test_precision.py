import math

import pytest

from ldrop.bench.precision import build_parser, paired_interval


def test_the_paired_interval_is_the_student_t_interval_of_the_differences():
    mean, half = paired_interval([0.01, 0.03, -0.01, 0.02, 0.0])
    assert mean == pytest.approx(0.01)
    # sd of the differences 0.0158, t(0.975, 4 df) = 2.776, n = 5
    assert half == pytest.approx(2.776 * 0.015811 / math.sqrt(5), rel=1e-3)
    assert math.isnan(paired_interval([0.02])[1])


def test_the_benchmark_defaults_are_the_quickstart_at_fp32_and_bf16_mixed():
    args = build_parser().parse_args([])
    assert args.config == "configs/quickstart.yaml"
    assert args.precisions[0] == "32-true" and "bf16-mixed" in args.precisions
    assert len(args.seeds) >= 3
