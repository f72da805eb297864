"""``ldrop`` in a SLURM job (its variables set as ``srun``/``sbatch`` set them): Lightning's auto-requeue is off, so
SIGUSR1 (``#SBATCH --signal=USR1@90``) stops a fit as SIGTERM does, with a last.ckpt that resumes exactly; an
``hpc_ckpt_N.ckpt`` is never restored without ``--ckpt_path``; ``--ntasks`` without ``--ntasks-per-node`` is one line.
"""

from __future__ import annotations

import signal

import pytest
import torch

from ldrop.cli import main
from tests.cli.common import QUICKSTART, SMALL, one_error_line
from tests.cli.test_resume import _identical, _weights
from tests.cli.test_signals import FIT, _signal_at, _stop_line

#: One task of a batch job on one node.
SLURM = {"SLURM_NTASKS": "1", "SLURM_JOB_ID": "12345", "SLURM_JOB_NAME": "train", "SLURM_PROCID": "0",
         "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NNODES": "1", "SLURM_NTASKS_PER_NODE": "1",
         "SLURM_NODELIST": "node1"}


@pytest.fixture
def slurm(monkeypatch):
    for name, value in SLURM.items():
        monkeypatch.setenv(name, value)


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1")
def test_sigusr1_under_slurm_stops_a_fit_with_a_last_ckpt_that_resumes_exactly_and_no_hpc_checkpoint(slurm, tmp_path,
                                                                                                       capsys):
    """Lightning's auto-requeue saved hpc_ckpt_N.ckpt mid-step on SIGUSR1, ran 'scontrol requeue' and trained on."""
    root = tmp_path / "runs"
    code = main([*FIT, "--trainer.default_root_dir", str(root), *_signal_at("train", 3, "SIGUSR1")])
    last = root / "ldrop" / "version_0" / "checkpoints" / "last.ckpt"
    assert code == 128 + signal.SIGUSR1
    line = _stop_line(capsys.readouterr().err, "SIGUSR1")
    assert "at step 3" in line and f"--ckpt_path {last}" in line
    assert torch.load(last, weights_only=True)["global_step"] == 3
    assert not list(tmp_path.rglob("hpc_ckpt_*"))

    assert main([*FIT, "--trainer.default_root_dir", str(root), "--ckpt_path", str(last)]) == 0
    assert main([*FIT, "--trainer.default_root_dir", str(tmp_path / "uninterrupted")]) == 0
    expected = _weights(tmp_path / "uninterrupted" / "ldrop" / "version_0" / "checkpoints" / "last.ckpt")
    resumed = _weights(last)
    different = [name for name in expected if not _identical(expected[name], resumed[name])]
    assert expected.keys() == resumed.keys() and not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_an_hpc_checkpoint_is_refused_without_ckpt_path_under_slurm(slurm, tmp_path, capsys, subcommand):
    """Lightning restores the newest hpc_ckpt_N.ckpt in default_root_dir when no --ckpt_path is given under SLURM:
    a rerun trained on from that inexact checkpoint (another array task's too) in a new version_N, and 'ldrop test'
    tested it while warning that it tested the model as initialised."""
    root = tmp_path / "runs"
    root.mkdir()
    hpc = root / "hpc_ckpt_1.ckpt"
    hpc.write_bytes(b"an earlier ldrop's auto-requeue checkpoint")
    assert main([subcommand, "--config", QUICKSTART, *SMALL, "--trainer.default_root_dir", str(root)]) == 2
    line = one_error_line(capsys)
    assert f"{hpc}: without --ckpt_path Lightning would restore this SLURM auto-requeue checkpoint" in line
    assert "--ckpt_path" in line and "last.ckpt" in line
    assert sorted(p.name for p in root.iterdir()) == ["hpc_ckpt_1.ckpt"]  # nothing ran


def test_an_hpc_checkpoint_outside_slurm_is_not_refused(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    (root / "hpc_ckpt_1.ckpt").write_bytes(b"not read")
    assert main(["validate", "--config", QUICKSTART, *SMALL, "--trainer.default_root_dir", str(root),
                 "--trainer.limit_val_batches", "1"]) == 0


def test_slurm_ntasks_without_ntasks_per_node_is_one_line(slurm, monkeypatch, tmp_path, capsys):
    """Lightning's RuntimeError ('You set `--ntasks=2` ... HINT: Use `--ntasks-per-node=2`') was a traceback."""
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE")
    assert main(["fit", "--config", QUICKSTART, *SMALL, "--trainer.default_root_dir", str(tmp_path / "runs")]) == 2
    line = one_error_line(capsys)
    assert "--ntasks=2 without --ntasks-per-node" in line and "--ntasks-per-node=2" in line
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.ckpt"))


def test_only_that_runtime_error_becomes_a_line():
    from ldrop.cli.lightning import _slurm_ntasks_line

    assert _slurm_ntasks_line(RuntimeError("CUDA error: device-side assert triggered")) is None  # a traceback
