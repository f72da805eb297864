"""The ``ldrop`` command: LightningCLI (fit, validate, test, predict) plus ``compare`` and ``export``.

Model and data are chosen in YAML by ``class_path`` (short names work: ``ClassificationTask``,
``SpeechCommandsDataModule``); the task's output labels (class names, CTC characters) are linked from the
datamodule, so they are never typed twice.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

# Imported so that YAML can name every class by its short name.
import ldrop.data  # noqa: F401, E402
import ldrop.selectors  # noqa: F401, E402
import ldrop.tasks  # noqa: F401, E402
from ldrop import __version__
from ldrop.callbacks import AtomicCheckpointIO, ExactResume, JsonlPredictionWriter, TaskCheckpoint
from ldrop.data import AudioDataModule, LibriSpeechDataModule, TedliumDataModule
from ldrop.runtime.loading import load_task_checkpoint  # noqa: F401 (kept importable from here)
from ldrop.sweeps import BudgetSweep
from ldrop.tasks import ENGLISH_CHARACTERS, LayerDropTask, budget_list, build_vocabulary


def model_labels(datamodule: AudioDataModule) -> list[str]:
    """The output labels a task needs from its datamodule.

    Classification: the class names in id order. CTC: the characters: the generated set's alphabet,
    English letters for LibriSpeech and TED-LIUM, else every character of the training transcripts.
    """
    if datamodule.task == "classification":
        return list(datamodule.class_names)
    alphabet = getattr(datamodule, "alphabet", None)
    if alphabet:
        return sorted(set(alphabet) | {" "})
    if isinstance(datamodule, LibriSpeechDataModule | TedliumDataModule):
        return list(ENGLISH_CHARACTERS)
    return build_vocabulary(datamodule.transcripts("train"))


#: Lightning warnings that ldrop's own setup triggers and that mean nothing is wrong (message regexes, matched
#: from the start); only these are silenced, and only where they are harmless.
HARMLESS_WARNINGS = (
    # ldrop's batch samplers yield every item whatever the split (the last batch is simply shorter).
    r"You are using a custom batch sampler `(LengthGroupedSampler|DynamicBatchSampler)` for prediction",
)
#: ... with --ckpt_path in test, validate and predict: the checkpointing callbacks' state is for resuming fit.
EVALUATION_WARNINGS = (
    r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint",
    # the evaluation run writes to its own folder; the checkpoint callback's fit-time state is not needed
    r"The dirpath has changed from",
)
#: ... with fit --ckpt_path: the resumed run continues in its own, non-empty, checkpoint folder.
RESUME_WARNINGS = (r"Checkpoint directory .* exists and is not empty",)


def harmless_warnings(args: Sequence[str]) -> tuple[str, ...]:
    """The message regexes of the Lightning warnings that are harmless for this command line."""
    subcommand = args[0] if args else None
    patterns = HARMLESS_WARNINGS
    if subcommand in ("test", "validate", "predict"):
        patterns += EVALUATION_WARNINGS
    if subcommand == "fit" and any(a == "--ckpt_path" or a.startswith("--ckpt_path=") for a in args):
        patterns += RESUME_WARNINGS
    return patterns


class ConfigError(Exception):
    """A bad argument or configuration, found while building the run; ``main`` prints it as one line."""


def _user_error_message(err: BaseException) -> str:
    """The reason in an instantiation error, without jsonargparse's union preamble and Namespace dump."""
    text = str(err)
    reasons = re.findall(r"^\s+- (.+)$", text.split("Errors:", 1)[1], flags=re.M) if "Errors:" in text else []
    reasons = [r for r in reasons if not r.startswith("Expected a <class 'NoneType'>")]
    return "; ".join(reasons) if reasons else text.splitlines()[0] if text else type(err).__name__


def _run_folder(ckpt_path: str | None) -> Path | None:
    """The run folder (``<save_dir>/<name>/version_N``) that holds ``ckpt_path``, if it is in one."""
    if not ckpt_path or not Path(ckpt_path).is_file():
        return None
    folder = Path(ckpt_path).resolve().parent.parent
    if Path(ckpt_path).resolve().parent.name == "checkpoints" and re.fullmatch(r"version_\d+", folder.name):
        return folder
    return None


class LdropCLI(LightningCLI):
    """LightningCLI with ldrop's links, checkpointing, exact resume, budget sweep and prediction writer.

    ``--ckpt_path`` loads weights only: the model is built from the config and command line as given (the
    task keeps its hyper-parameters under its own checkpoint key, see ``LayerDropTask``).
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data", "model.init_args.labels", compute_fn=model_labels, apply_on="instantiate")
        parser.add_lightning_class_args(TaskCheckpoint, "checkpoint")
        parser.add_lightning_class_args(BudgetSweep, "sweep")
        parser.add_lightning_class_args(JsonlPredictionWriter, "predictions")
        parser.add_argument(
            "--inputs",
            type=list[str] | str | None,
            default=None,
            help="predict only: an audio file or folder, or a list of them, to predict on instead of the "
            "datamodule's predict split",
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config["trainer"]
        logger = trainer.get("logger")
        default_logger = TRAINER_DEFAULTS["logger"]
        is_default_logger = (
            logger is not None
            and not isinstance(logger, bool | list)
            and logger.get("class_path") == default_logger["class_path"]
        )
        if not is_default_logger:
            return
        # --trainer.default_root_dir moves the default logger (and so checkpoints and sweep files) with it.
        root = trainer.get("default_root_dir")
        if root and root != TRAINER_DEFAULTS["default_root_dir"] and (
            logger["init_args"].get("save_dir") == default_logger["init_args"]["save_dir"]
        ):
            logger["init_args"]["save_dir"] = root
        # fit --ckpt_path <run>/checkpoints/last.ckpt continues in that run folder, not in a new version_N.
        run = _run_folder(config.get("ckpt_path")) if self.subcommand == "fit" else None
        if run is not None and logger["init_args"].get("version") is None:
            logger["init_args"]["save_dir"] = str(run.parent.parent)
            logger["init_args"]["name"] = run.parent.name
            logger["init_args"]["version"] = int(run.name.removeprefix("version_"))

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, FileNotFoundError, MisconfigurationException) as err:
            raise ConfigError(_user_error_message(err)) from err

    def after_instantiate_classes(self) -> None:
        sweep = next((c for c in self.trainer.callbacks if isinstance(c, BudgetSweep)), None)
        if sweep is not None:
            try:  # a bad budget fails here, as one line, not after the model and data are set up
                budget_list(sweep.budgets, self.model.num_layers)
            except ValueError as err:
                raise ConfigError(f"--sweep.budgets: {err}") from err
        inputs = self._get(self.config, "inputs") if self.subcommand else self.config.get("inputs")
        if inputs:
            if self.subcommand != "predict":
                raise ConfigError("--inputs applies to 'ldrop predict' only")
            try:
                self.datamodule.predict_on_files([inputs] if isinstance(inputs, str) else list(inputs))
            except (ValueError, FileNotFoundError) as err:
                raise ConfigError(f"--inputs: {err}") from err

    def _run_subcommand(self, subcommand: str) -> None:
        # Rank 0 only: other ranks must not settle the logger's version before it is shared with them.
        log_dir = self.trainer.log_dir if self.trainer.logger is not None and self.trainer.is_global_zero else None
        new_folder = log_dir is not None and not Path(log_dir).exists()
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            # A run that failed before it produced anything leaves no empty version_N folder behind.
            if new_folder and (subcommand != "fit" or self.trainer.global_step == 0):
                remove_if_no_outputs(Path(log_dir))
            raise
        if new_folder and subcommand == "predict":
            remove_if_no_outputs(Path(log_dir))  # the predictions went to --predictions.output elsewhere

    def after_test(self) -> None:
        sweep = next((c for c in self.trainer.callbacks if isinstance(c, BudgetSweep)), None)
        folder = sweep.directory if sweep is not None and sweep.directory else (
            self.trainer.log_dir if self.trainer.logger is not None else None)
        if folder and self.trainer.is_global_zero:
            print(f"budget sweep written to {folder}")

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]):
        # Rich progress bar and a learning-rate monitor by default, unless the user turned them off or chose
        # their own (a default callback list in trainer_defaults would be replaced by any user list).
        existing = [*callbacks, *(config.get("callbacks") or [])]
        if config.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, ProgressBar) for c in existing
        ):
            callbacks.append(RichProgressBar())
        if config.get("logger", True) not in (False, None) and not any(
            isinstance(c, LearningRateMonitor) for c in existing
        ):
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        if not any(isinstance(c, ExactResume) for c in existing):
            callbacks.append(ExactResume())  # a resumed fit draws the same random numbers
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            # Checkpoints are written to a temporary file and renamed: a crash never truncates one.
            config = {**config, "plugins": [*plugins, AtomicCheckpointIO()]}
        return super()._instantiate_trainer(config, callbacks)


#: What every run folder gets before it produces anything: the config, the hyper-parameters, an event file.
BOOKKEEPING_FILES = ("config.yaml", "hparams.yaml", "events.out.tfevents.*")


def remove_if_no_outputs(folder: Path) -> bool:
    """Delete a run folder that holds only bookkeeping files (no checkpoint, sweep or prediction file)."""
    if not folder.is_dir():
        return False
    files = [p for p in folder.rglob("*") if p.is_file()]
    if not all(any(p.match(pattern) for pattern in BOOKKEEPING_FILES) for p in files):
        return False
    for path in files:
        path.unlink()
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        sub.rmdir()
    folder.rmdir()
    return True


TRAINER_DEFAULTS: dict[str, Any] = {
    # Without a logger, checkpoints, config.yaml and predictions land here rather than in the working folder.
    "default_root_dir": "runs",
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "ldrop"},
    },
    # ldrop's samplers shard batches across ranks themselves (length grouping needs whole batches).
    "use_distributed_sampler": False,
}


def run_lightning(args: Sequence[str] | None = None) -> LdropCLI:
    """Run the LightningCLI part (``fit``, ``validate``, ``test``, ``predict``)."""
    return LdropCLI(
        LayerDropTask,
        AudioDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        trainer_defaults=TRAINER_DEFAULTS,
        parser_kwargs={
            "description": f"ldrop {__version__}: input-conditioned layer dropping for speech foundation models. "
            "Besides the Lightning subcommands below: 'ldrop compare RUN...' overlays budget sweeps, 'ldrop export "
            "CKPT DIR' writes a trained backbone as a save_pretrained folder, 'ldrop profile' measures a device "
            "cost model, 'ldrop --version' prints the version.",
            "fit": {
                "description": "Train a task. Checkpoints (best-*.ckpt after each validation, last.ckpt) go to "
                "<run>/checkpoints; '--ckpt_path <run>/checkpoints/last.ckpt' resumes an interrupted run exactly, "
                "in the same run folder.",
            },
            "test": {
                "description": "Run the budget sweep: the test split is scored at every budget in "
                "--sweep.budgets (default: every layer count 1..N), and budget_sweep.csv/.json/.png "
                "and layer_usage.png are written to the run folder (or --sweep.directory), printed at the end.",
            },
        },
        args=args,
    )


def compare_main(argv: Sequence[str]) -> int:
    """``ldrop compare RUN_OR_CSV... [--out DIR] [--metric NAME] [--labels A,B,...]``."""
    from ldrop.sweeps import compare_sweeps

    parser = ArgumentParser(
        prog="ldrop compare",
        description="Overlay budget sweeps (run directories, budget_sweep.csv or .json files) in one plot "
        "and one Markdown table.",
    )
    parser.add_argument("runs", nargs="+", help="run directories or sweep files")
    parser.add_argument("--out", default="compare", help="output folder for compare.png and compare.md")
    parser.add_argument("--metric", type=str | None, default=None,
                        help="metric column (default: the sweeps' first metric)")
    parser.add_argument("--labels", type=str | None, default=None, help="comma-separated labels, one per run")
    ns = parser.parse_args(list(argv))
    labels = ns.labels.split(",") if ns.labels else None
    if labels is not None and len(labels) != len(ns.runs):
        parser.error(f"--labels has {len(labels)} names for {len(ns.runs)} runs")
    try:
        table, plot = compare_sweeps(ns.runs, ns.out, metric=ns.metric, labels=labels)
    except (FileNotFoundError, ValueError, KeyError) as err:
        parser.error(str(err))
    print(table)
    print(f"\nplot: {plot}\ntable: {plot.with_name('compare.md')}")
    return 0


def export_main(argv: Sequence[str]) -> int:
    """``ldrop export CHECKPOINT OUT_DIR``: a trained backbone as a ``save_pretrained`` directory."""
    parser = ArgumentParser(
        prog="ldrop export",
        description="Write the backbone of a trained ldrop checkpoint as a Hugging Face save_pretrained "
        "directory (usable as model.backbone), with the heads and selector in ldrop_task_state.pt beside it.",
    )
    parser.add_argument("checkpoint", help="a .ckpt written by ldrop fit")
    parser.add_argument("out_dir", help="output directory")
    ns = parser.parse_args(list(argv))
    model = load_task_checkpoint(ns.checkpoint)
    out = model.export_pretrained(ns.out_dir)
    print(f"exported {type(model).__name__} backbone to {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int | None:
    """Entry point of the ``ldrop`` console script.

    A bad argument or configuration, or a missing file, is printed as one ``ldrop: error: ...`` line with
    exit status 2; ``LDROP_DEBUG=1`` raises it with the full traceback instead.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("--version", "-V"):
        print(f"ldrop {__version__}")
        return 0
    try:
        if args and args[0] == "compare":
            return compare_main(args[1:])
        if args and args[0] == "export":
            return export_main(args[1:])
        if args and args[0] == "profile":
            from ldrop.runtime.profile import profile_main

            return profile_main(args[1:])
        with warnings.catch_warnings():
            for message in harmless_warnings(args):
                warnings.filterwarnings("ignore", message=message)
            run_lightning(None if argv is None else args)
        return 0
    except (ConfigError, FileNotFoundError) as err:
        if os.environ.get("LDROP_DEBUG", "0") not in ("", "0"):
            raise
        print(f"ldrop: error: {err} (LDROP_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
