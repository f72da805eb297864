"""The default logger's run folder (``<save_dir>/ldrop/version_N``): each run gets its own, made as the run is set up,
and a run that fails before it writes anything leaves none behind."""

from __future__ import annotations

import pytest

from ldrop.cli import main
from ldrop.cli.lightning import LdropCLI
from tests.cli.common import QUICKSTART, SMALL, one_error_line
from tests.cli.test_errors import TINY_RUN, _manifest_fit


@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_two_runs_started_at_once_get_two_version_folders(tmp_path, monkeypatch, subcommand):
    # The second run is set up while the first is starting, before the first has written anything: Lightning
    # numbered both version_0 (the folders listed, the next one made only later), and they wrote into one folder.
    versions = []

    def run_subcommand(cli: LdropCLI, name: str) -> None:
        versions.append(cli.trainer.logger.version)  # settled as a run starts
        if len(versions) == 1:
            assert main([subcommand, "--config", QUICKSTART, *SMALL, "--trainer.logger.init_args.save_dir",
                         str(tmp_path)]) == 0

    monkeypatch.setattr(LdropCLI, "run_subcommand", run_subcommand)
    assert main([subcommand, "--config", QUICKSTART, *SMALL, "--trainer.logger.init_args.save_dir", str(tmp_path)]) == 0
    assert versions == [0, 1]
    assert not (tmp_path / "ldrop").exists()  # neither run wrote there: their reserved folders are removed


def test_a_run_that_fails_after_its_folder_is_made_leaves_no_empty_version_folder(tmp_path, capsys):
    earlier = tmp_path / "ldrop" / "version_0"
    earlier.mkdir(parents=True)
    (earlier / "config.yaml").write_text("")
    # refused after the folder is made, before the run starts (the model has 4 layers)
    assert main(["fit", "--config", QUICKSTART, *SMALL, *TINY_RUN, "--trainer.logger.init_args.save_dir", str(tmp_path),
                 "--sweep.budgets", "[9]"]) == 2
    assert "--sweep.budgets" in one_error_line(capsys)
    assert [p.name for p in (tmp_path / "ldrop").iterdir()] == ["version_0"]  # no empty version_1


def test_a_fit_with_a_bad_data_path_leaves_no_version_folder(tmp_path, capsys):
    argv = _manifest_fit(tmp_path, [("good.wav", "a"), ("missing.wav", "b")])  # fails as the fit loads its data
    assert main(argv) == 2
    assert "missing.wav" in one_error_line(capsys)
    assert not (tmp_path / "logs").exists()  # neither version_0 nor logs/ldrop
