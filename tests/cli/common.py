"""What the command-line tests share: the quickstart config shrunk to a few seconds, and a fit of it."""

from __future__ import annotations

from pathlib import Path

from ldrop.cli import main

QUICKSTART = str(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml")
SMALL = ["--data.init_args.num_train", "32", "--data.init_args.num_val", "16", "--data.init_args.num_test", "16",
         "--data.init_args.duration_range", "[0.3, 0.5]", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false"]


def fit_quickstart(tmp_path: Path, *extra: str) -> Path:
    """ldrop fit on the quickstart config, shrunk; returns the run directory."""
    main(["fit", "--config", QUICKSTART, *SMALL, "--trainer.max_epochs", "1",
          "--trainer.logger.init_args.save_dir", str(tmp_path), *extra])
    runs = sorted((tmp_path / "ldrop").glob("version_*"))
    return runs[-1]


def val_steps(run: Path) -> list[int]:
    """The steps each validation of the run folder logged its loss at, over all its event files (a resumed run
    adds one)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for events in sorted(run.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        steps += [e.step for e in accumulator.Scalars("val/loss")] if "val/loss" in accumulator.Tags()["scalars"] else []
    return steps


def one_error_line(capsys) -> str:
    """The one ``ldrop:`` line on stderr (asserting there is exactly one, and no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("ldrop:")]
    assert len(lines) == 1 and lines[0].startswith("ldrop: error: "), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    return lines[0]
