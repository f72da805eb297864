"""``ldrop fit|validate|test|predict``: LightningCLI with ldrop's links, checkpointing, exact resume, budget
sweep and prediction writer; the task's labels are linked from the datamodule."""

from __future__ import annotations

import contextlib
import importlib
import itertools
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
import typing
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentError
from lightning.fabric.plugins.environments import (
    ClusterEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar, RichProgressBar, Timer
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

# Imported so that YAML can name every class by its short name.
import ldrop.data  # noqa: F401
import ldrop.selectors  # noqa: F401
import ldrop.tasks  # noqa: F401
from ldrop import __version__
from ldrop._io import CheckpointError, claim_folder, load_checkpoint_file, missing_folders, release_claims
from ldrop._lightning import (
    CLISteps,
    describe_method_options,
    keep_csv_metrics,
    restore_initial_hparams,
    set_subcommand_help,
    subcommand_parsers,
)
from ldrop.budgets import budget_list
from ldrop.cli.callbacks import (
    AtomicCheckpointIO,
    ExactResume,
    JsonlPredictionWriter,
    ProgressLines,
    StopOnSigterm,
    TaskCheckpoint,
)
from ldrop.cli.errors import (
    ConfigError,
    InstantiationError,
    argument_error_line,
    checkpoint_folder_problem,
    command_parser,
    instantiation_error_line,
    nested_option_line,
    option_strings,
    os_error_line,
)
from ldrop.data import AudioDataModule, Task
from ldrop.runtime import TargetBudgets
from ldrop.runtime.checkpoints import read_config_file, weights_from_checkpoint
from ldrop.selectors import LayerSelector
from ldrop.sweeps import BudgetSweep
from ldrop.tasks import LayerDropTask, model_labels
from ldrop.tasks.gating import sample_rate_problem

log = logging.getLogger(__name__)

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


def _run_folder(ckpt_path: str | None) -> Path | None:
    """The run folder (``<save_dir>/<name>/version_N``, or one renamed: it holds the run's ``config.yaml``) that
    holds ``ckpt_path``, if it is in one."""
    folder = Path(ckpt_path).resolve().parent if ckpt_path and Path(ckpt_path).is_file() else None
    in_run = folder is not None and folder.name == "checkpoints" and (
        re.fullmatch(r"version_\d+", folder.parent.name) or (folder.parent / "config.yaml").is_file())
    return folder.parent if in_run else None


def _newest(roots: Sequence[str], pattern: str, deep: bool = True) -> Path | None:
    """The newest file matching ``pattern`` in a ``checkpoints`` folder under ``roots`` (``deep``), or in them."""
    found = [f for root in roots for f in Path(root).glob(f"**/checkpoints/{pattern}" if deep else pattern)]
    return max(found, key=lambda f: f.stat().st_mtime, default=None)


def _checkpoint_keyword_line(keyword: str, trainer: Mapping[str, Any]) -> str:
    """Why Lightning's ``--ckpt_path best|last|hpc`` finds nothing in a new process, and the file to pass."""
    if keyword == "hpc":
        return (f"--ckpt_path hpc: no hpc_ckpt_*.ckpt (written on a SLURM requeue) in "
                f"{trainer.get('default_root_dir') or '.'}; pass a checkpoint file")
    logger, root = trainer.get("logger"), trainer.get("default_root_dir")
    save_dir = logger.get("init_args", {}).get("save_dir") if hasattr(logger, "get") else None
    if save_dir == TRAINER_DEFAULTS["default_root_dir"]:  # the default logger moves with --trainer.default_root_dir
        save_dir = root
    roots = list(dict.fromkeys(r for r in (save_dir, root) if r))
    pattern = "last.ckpt" if keyword == "last" else "best-*.ckpt"
    found = _newest(roots, pattern)
    return (f"--ckpt_path {keyword}: a new 'ldrop' process tracks no checkpoints (Lightning's '{keyword}' is "
            f"one this process's own fit wrote); pass the file" + (
                f": --ckpt_path {found}" if found else f" (no {pattern} under {', '.join(roots)})"))


def under_slurm() -> bool:
    """Whether Lightning takes this process for a SLURM task (``SLURMEnvironment.detect``: ``SLURM_NTASKS`` set, not
    an interactive ``bash`` job), without its hint that ``srun`` was not used (Lightning's trainer gives that)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SLURMEnvironment.detect()


def _hpc_checkpoint_line(trainer: Mapping[str, Any]) -> str | None:
    """Under SLURM, Lightning restores the newest ``hpc_ckpt_N.ckpt`` in ``default_root_dir`` when no
    ``--ckpt_path`` is given: what its auto-requeue saved on SIGUSR1 mid-step (another run's too, in a shared
    folder). The line that refuses it, if there is one."""
    root = trainer.get("default_root_dir") or "."
    found = _newest([root], "hpc_ckpt_*.ckpt", deep=False) if under_slurm() else None
    if found is None:
        return None
    return (f"{found}: without --ckpt_path Lightning would restore this SLURM auto-requeue checkpoint (saved mid-step: "
            "not an exact resume; maybe another run's); pass --ckpt_path <run>/checkpoints/last.ckpt to resume exactly "
            f"(or the checkpoint to use), --ckpt_path hpc to restore it anyway, or move it out of {root}")


def _slurm_ntasks_line(err: RuntimeError) -> str | None:
    """The line for Lightning's refusal of ``#SBATCH --ntasks=N`` without ``--ntasks-per-node`` (``None`` for any
    other error)."""
    found = re.match(r"You set `--ntasks=(\d+)` in your SLURM", str(err))
    return None if found is None else (
        f"SLURM's --ntasks={found[1]} without --ntasks-per-node: Lightning needs the tasks per node; use #SBATCH "
        "--ntasks-per-node (one task per device: --trainer.devices) and --nodes (--trainer.num_nodes) instead, e.g. "
        f"--nodes=1 --ntasks-per-node={found[1]}")


def _building_error_line(err: Exception) -> str | None:
    """The one line for an error building the configured classes, ``None`` for one to show as a traceback: of a
    ``ModuleNotFoundError`` only Lightning's for a package a trainer option needs, of a ``RuntimeError`` only its
    refusal of SLURM's ``--ntasks`` without ``--ntasks-per-node``."""
    if isinstance(err, ModuleNotFoundError):
        return (f"a --trainer option (its precision, strategy or plugins) needs a package that is not installed: {err}"
                if str(err).startswith("Requirement ") else None)
    if isinstance(err, RuntimeError):
        return _slurm_ntasks_line(err)
    return instantiation_error_line(err)


def _check_yaml_files(argv: Sequence[str], options: Sequence[str] | None = None) -> None:
    """A one-line :class:`ConfigError` (the option, the file, the line and column) for a file on the command line
    that is not UTF-8 or not YAML: those given to ``options`` (``--config``: whatever their name), or (``None``)
    a ``.yaml``/``.yml`` file given to any option (``--model model.yaml``: jsonargparse reads that option from
    it; checked only once jsonargparse failed, since a plain path option may name any file)."""
    for token, following in zip(argv, [*argv[1:], None], strict=True):
        option, _, value = token.partition("=") if token.startswith("-") and "=" in token else (token, "", following)
        if not option.startswith("-") or not value or not Path(value).is_file():
            continue
        if option in options if options is not None else Path(value).suffix.lower() in (".yaml", ".yml"):
            try:
                read_config_file(value, sections=option in ("--config", "-c"))
            except ValueError as err:
                raise ConfigError(f"{option.rstrip('+')} {err}") from err


def datamodule_labels(datamodule: Any) -> list[str] | None:
    """What ``ldrop fit`` links into the task's ``labels``: :func:`~ldrop.tasks.model_labels`, with a datamodule
    that cannot give them named in one line (an unknown ``task``; no ``class_names``, or ``None`` until
    ``setup``) rather than blaming the task's ``labels``."""
    name, task, kinds = type(datamodule).__name__, getattr(datamodule, "task", None), typing.get_args(Task)
    if task not in kinds:
        raise ConfigError(f"{name}.task is {task!r}: expected {', '.join(map(repr, kinds[:-1]))} or {kinds[-1]!r}, the "
                          "kind of target its items have (class ids, transcripts, or values/tensors); set the class "
                          "attribute task to one of them")
    if task != "classification":
        return model_labels(datamodule)
    if not any("class_names" in vars(owner) for owner in (datamodule, *type(datamodule).__mro__)):
        raise ConfigError(f"{name} has no class_names: set class_names (the class names in id order) in __init__ or "
                          "as a class attribute; the task's labels and number of classes come from it")
    names = datamodule.class_names  # a property that fails is a bug: its traceback
    if names is None:
        raise ConfigError(f"{name}.class_names is None when the task is built (after __init__, before setup): set "
                          "class_names (the class names in id order) in __init__ or as a class attribute")
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise ConfigError(f"{name}.class_names is {names!r:.60}: expected a list of the class names in id order")
    return list(names)


#: The summaries ``ldrop --help`` lists for Lightning's subcommands.
SUBCOMMAND_HELP = {
    "fit": "Train a task; --ckpt_path <run>/checkpoints/last.ckpt resumes a run exactly.",
    "validate": "Score the validation split at the validation budgets (--model.budgets.validation).",
    "test": "Run the budget sweep on the test split: a table and budget_sweep.csv/.json/.png.",
    "predict": "Predict at a budget or a latency target: one JSON line per input.",
}


#: What ``--ckpt_path`` takes (a file: Lightning's ``best``/``last`` name checkpoints of the same process).
CKPT_PATH_HELP = {
    "fit": "a checkpoint of this run to resume exactly (<run>/checkpoints/last.ckpt), in its run folder",
    **dict.fromkeys(("validate", "test", "predict"), "the .ckpt file whose weights to use (the model is built from "
                    "the config; without it the model runs as initialised, with a warning)"),
}


class LdropCLI(CLISteps):
    """LightningCLI with ldrop's links, checkpointing, exact resume, budget sweep and prediction writer.

    ``--ckpt_path`` loads weights only (the model is built from the config as given); ``own_commands`` (name
    -> summary) are listed in ``ldrop --help``.
    """

    _parser_subcommand: str | None = None

    def __init__(self, *args: Any, own_commands: Mapping[str, str] = {}, **kwargs: Any) -> None:  # noqa: B006
        self.own_commands = dict(own_commands)
        super().__init__(*args, **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # which subcommand the parser is for (None: the main parser, or a CLI without subcommands)
        self._parser_subcommand = kwargs.pop("ldrop_subcommand", None)
        kwargs.setdefault("allow_abbrev", False)  # '--trainer.max_epoch 1' is an error, never max_epochs
        kwargs.setdefault("exit_on_error", False)  # errors come to main, which prints them as one line
        return super().init_parser(**kwargs)

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        commands = subcommand_parsers(self.parser)
        if add_subcommands and commands is not None:
            # listed in 'ldrop --help' beside Lightning's; main() runs them before LightningCLI is built
            for name, summary in self.own_commands.items():
                commands.add_subcommand(name, command_parser(name, summary), help=summary)
            set_subcommand_help(self.parser, SUBCOMMAND_HELP)  # not the Trainer docstrings' first lines
            for name in SUBCOMMAND_HELP:
                describe_method_options(self.parser, name, f"Options of Trainer.{name}", CKPT_PATH_HELP[name])

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        argv = list(args) if isinstance(args, list | tuple) else sys.argv[1:]
        _check_yaml_files(argv, ["--config", "-c"])  # not UTF-8, not YAML: the file and the line, before jsonargparse
        LdropArgumentParser.typed = argv
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            _check_yaml_files(argv)  # what jsonargparse could not read may be a YAML file given as a value
            line = argument_error_line(str(err), argv, option_strings(parser))
            raise ConfigError(nested_option_line(err, line, argv)) from err
        finally:
            LdropArgumentParser.typed = ()
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        ckpt_path = config.get("ckpt_path") if subcommand else None
        if config.get("lr_scheduler") is not None and config.get("optimizer") is None:
            raise ConfigError("--lr_scheduler needs --optimizer (LightningCLI applies it only with an optimizer it "
                              "builds); ldrop's own schedule is set with --model.optimization.* (lr, warmup, "
                              "schedule: linear, tri_stage or constant)")
        accumulate = config.get("trainer", {}).get("accumulate_grad_batches", 1)
        if isinstance(accumulate, int) and accumulate < 1:  # Lightning: a ZeroDivisionError, or a nonsense schedule
            raise ConfigError(f"--trainer.accumulate_grad_batches {accumulate}: expected an int >= 1 (the batches "
                              "whose gradients are summed before each optimizer step)")
        if ckpt_path in ("best", "last") or ckpt_path == "hpc" and not _newest(
                [config["trainer"].get("default_root_dir") or "."], "hpc_ckpt_*.ckpt", deep=False):
            raise ConfigError(_checkpoint_keyword_line(ckpt_path, config["trainer"]))
        if subcommand and ckpt_path is None and (line := _hpc_checkpoint_line(config["trainer"])):
            raise ConfigError(line)  # Lightning would restore it, silently
        if ckpt_path and (problem := checkpoint_folder_problem(ckpt_path, "--ckpt_path")):
            raise ConfigError(problem)
        if ckpt_path and Path(ckpt_path).is_file():
            # a damaged or foreign file is named now, as one line, before LightningCLI or the run reads it
            # (its checksums verified, one read of the file, then memory-mapped)
            checkpoint = load_checkpoint_file(ckpt_path, weights_only=True, mmap=True)
            if not (isinstance(checkpoint, dict) and "state_dict" in checkpoint
                    and "pytorch-lightning_version" in checkpoint):
                raise CheckpointError(f"--ckpt_path {ckpt_path}: not a checkpoint written by 'ldrop fit' (a Lightning "
                                      "checkpoint with 'state_dict' and 'pytorch-lightning_version' entries)")

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data", "model.init_args.labels", compute_fn=datamodule_labels,
                              apply_on="instantiate")
        parser.add_lightning_class_args(TaskCheckpoint, "checkpoint")
        parser.add_lightning_class_args(BudgetSweep, "sweep")
        if self._parser_subcommand not in (None, "predict"):
            return
        parser.add_lightning_class_args(JsonlPredictionWriter, "predictions")
        parser.add_argument(
            "--inputs",
            type=list[str] | str | None,
            default=None,
            help="an audio file or folder, or a list of them, to predict on instead of the datamodule's "
            "predict split",
        )

    def before_instantiate_classes(self) -> None:
        config = self._command_config()
        model = config.get("model")
        init_args = model.get("init_args") if model is not None and hasattr(model, "get") else None
        # jsonargparse resolves the task's signature (its **kwargs included): no 'labels' there, no link
        self._model_takes_labels = init_args is not None and "labels" in init_args
        self._model_args = init_args
        trainer = config["trainer"]
        logger = trainer.get("logger")
        dirpath = config["checkpoint"].get("dirpath") if self.subcommand == "fit" else None
        if (self.subcommand == "fit" and (not logger or dirpath) and not trainer.get("fast_dev_run")
                and trainer.get("enable_checkpointing") is not False):
            # without a logger every run shares one checkpoint folder: a new fit would overwrite the last one's
            root = Path(trainer.get("default_root_dir") or ".")
            folder = Path(dirpath or root / "checkpoints")
            if not logger and not config.get("ckpt_path") and any(folder.glob("*.ckpt")):
                raise ConfigError(f"{folder} already holds the checkpoints of a run that a new fit would overwrite "
                                  "(--trainer.logger is off, so runs share it): choose another "
                                  f"--trainer.default_root_dir, or resume with --ckpt_path {folder / 'last.ckpt'}")
            if _first_process():
                claim_folder(folder, "ldrop fit", ConfigError)  # ... and not by two fits started at once
        loggers = [lg for lg in (logger if isinstance(logger, list) else [logger]) if _writes_version_folders(lg)]
        # what the saved config keeps: the run folders are this run's, settled below again for a run from that config
        self._given = [(lg["init_args"], {key: lg["init_args"].get(key) for key in ("save_dir", "name", "version")})
                       for lg in loggers]
        root, first = trainer.get("default_root_dir"), logger[0] if isinstance(logger, list) and logger else logger
        run = _run_folder(config.get("ckpt_path")) if self.subcommand == "fit" else None
        for lg in loggers:
            args = lg["init_args"]
            # --trainer.default_root_dir moves a logger left at the default folder (and so checkpoints and sweep files)
            if root and root != TRAINER_DEFAULTS["default_root_dir"] and (
                    args.get("save_dir") == TRAINER_DEFAULTS["logger"]["init_args"]["save_dir"]):
                args["save_dir"] = root
            # fit --ckpt_path <run>/checkpoints/last.ckpt continues in that run folder (the first logger's, where the
            # checkpoints are), not in a new version_N
            if run is not None and args.get("version") is None and lg is first:
                args["save_dir"], args["name"] = str(run.parent.parent), run.parent.name
                numbered = re.fullmatch(r"version_(\d+)", run.name)
                args["version"] = int(numbered[1]) if numbered else run.name
            # A new run's version_N is made now, not only numbered (Lightning lists the folders as the run starts and
            # makes the next one later): two runs started at once took the same one. First process only: Lightning
            # gives the other ranks rank 0's folder (broadcast), and they make none.
            if (self.subcommand and args.get("version") is None and _first_process() and not trainer.get("fast_dev_run")
                    and "://" not in str(args["save_dir"])):
                folder = Path(args["save_dir"], args.get("name") or "")
                taken = [int(p.name[8:]) for p in folder.glob("version_*")
                         if re.fullmatch(r"version_\d+", p.name) and p.is_dir()]
                made = missing_folders(folder)
                for version in itertools.count(max(taken, default=-1) + 1):
                    with contextlib.suppress(FileExistsError):
                        (folder / f"version_{version}").mkdir(parents=True)
                        break
                _RESERVED[:0] = [folder / f"version_{version}", *made]
                args["version"] = version

    def instantiate_classes(self) -> None:
        ckpt_path = self._command_config().get("ckpt_path") if self.subcommand else None
        with contextlib.ExitStack() as stack:
            # the checkpoint holds every weight (fit: resumes it): none are read from the backbone's source or an
            # init_from file, which may not be here
            built_from = (weights_from_checkpoint(self._model_args, ckpt_path, stack)
                          if ckpt_path and getattr(self, "_model_args", None) is not None and Path(ckpt_path).is_file()
                          else {})
            try:
                super().instantiate_classes()
            except (ValueError, TypeError, FileNotFoundError, MisconfigurationException, ModuleNotFoundError,
                    RuntimeError) as err:
                if (line := _building_error_line(err)) is None:
                    raise
                raise InstantiationError(line) from err
        for key, value in built_from.items():  # the saved config and the logged hyper-parameters: as given
            self._model_args[key] = value
            if key in self.model.hparams:
                self.model.hparams[key] = value
        restore_initial_hparams(self.model, built_from)
        if not getattr(self, "_model_takes_labels", True):
            # jsonargparse skips the labels link for a task without 'labels', but LightningCLI still records the
            # linked value among its hyper-parameters: the checkpoint would then fail to load (an unexpected
            # keyword argument). The model never received it, so it is not one of its hyper-parameters.
            self.model.hparams.pop("labels", None)
        for args, given in getattr(self, "_given", ()):  # a run from the saved config gets folders of its own
            for key, value in given.items():
                args[key] = value
        if self.subcommand == "fit":  # ... and is a new run, not a resumed one
            self._command_config()["ckpt_path"] = None

    def _command_config(self, instantiated: bool = False) -> Any:
        """This subcommand's config (``instantiated``: with the classes built from it, e.g. ``sweep``)."""
        config = self.config_init if instantiated else self.config
        return config[self.subcommand] if self.subcommand else config

    def after_instantiate_classes(self) -> None:
        sweep = self._command_config(True).get("sweep")
        if sweep is not None:
            try:  # a bad budget fails here, as one line, not after the model and data are set up
                budget_list(sweep.budgets, self.model.num_layers)
            except ValueError as err:
                raise ConfigError(f"--sweep.budgets: {err}") from err
        self._check_sample_rates()
        inputs = self._command_config().get("inputs")
        if inputs:
            if self.subcommand not in (None, "predict"):
                raise ConfigError("--inputs applies to 'ldrop predict' only")
            try:
                self.datamodule.predict_on_files([inputs] if isinstance(inputs, str) else list(inputs))
            except (ValueError, FileNotFoundError) as err:
                raise ConfigError(f"--inputs: {err}") from err
        writer = self._command_config(True).get("predictions")
        if self.subcommand == "predict" and writer is not None and self.trainer.is_global_zero:
            try:  # before the model and data are set up and any inference runs
                writer.check_writable(self.trainer, getattr(self.datamodule, "predict_files", None) or ())
            except OSError as err:
                raise ConfigError(f"--predictions.output: cannot write {writer.target(self.trainer)}: "
                                  f"{os_error_line(err)}") from err

    def _check_sample_rates(self) -> None:
        """Refuse data at another rate than the model takes (:func:`~ldrop.tasks.gating.sample_rate_problem`):
        it would be trained or run on audio it was not made for, and an export would record the other rate."""
        problem = sample_rate_problem(self.model, getattr(self.datamodule, "sample_rate", None), "--data.sample_rate",
                                      "--model.backbone", "--model.selector.sample_rate")
        if problem:
            raise ConfigError(problem)

    def run_subcommand(self, subcommand: str) -> None:
        # Rank 0 only: other ranks must not settle the logger's version before it is shared with them. A logger
        # without a folder (fast_dev_run's DummyLogger) leaves outputs in default_root_dir (as the prediction
        # writer does): that is then the run's folder.
        logged = self.trainer.logger is not None
        log_dir = None
        if self.trainer.is_global_zero:
            log_dir = (self.trainer.log_dir if logged else None) or self.trainer.default_root_dir
        # Without a logger the folder may hold earlier runs' files: a failed run puts back its config file.
        config_file = Path(log_dir, self.save_config_kwargs["config_filename"]) if log_dir and not logged else None
        previous = config_file.read_bytes() if config_file is not None and config_file.is_file() else None
        if subcommand != "fit" and not self._command_config().get("ckpt_path") and self.trainer.is_global_zero:
            # not an error: a pre-trained backbone may be evaluated on purpose
            verb = {"test": "testing", "validate": "validating", "predict": "predicting with"}.get(subcommand, subcommand)
            log.warning("no --ckpt_path: %s the model as initialised, not a trained checkpoint", verb)
        new_folders = missing_folders(Path(log_dir)) + _RESERVED if log_dir is not None else []
        try:
            super().run_subcommand(subcommand)
            if self.trainer.received_sigterm:  # it arrived as the run ended, its outputs complete: still no exit 0
                raise SIGTERMException
        except BaseException as err:
            # A run that failed before it produced anything (a fit: before its first checkpoint, wherever
            # --checkpoint.dirpath puts it) leaves no empty folder behind: neither its version_N folder nor the
            # logger's folders above it that it created (runs/, runs/ldrop/); without a logger, the folder's config
            # file is as it was.
            checkpointed = subcommand == "fit" and any(
                c.last_model_path or c.best_model_path or getattr(c, "stop_checkpoint", None)
                for c in self.trainer.checkpoint_callbacks)
            if log_dir is not None and not checkpointed:
                if config_file is not None and previous is None:
                    config_file.unlink(missing_ok=True)
                elif config_file is not None:
                    config_file.write_bytes(previous)
                if new_folders:
                    self._remove_unused_folders(Path(log_dir), new_folders)
            if isinstance(err, SIGTERMException) and not isinstance(err, StoppedBySigterm):
                raise StoppedBySigterm(self.sigterm_line(subcommand)) from err
            raise
        if new_folders and subcommand == "predict":
            # the predictions went to --predictions.output elsewhere
            self._remove_unused_folders(Path(log_dir), new_folders)

    def _remove_unused_folders(self, log_dir: Path, new_folders: list[Path]) -> None:
        """The run folder, and each other logger's version_N that this run made, where they hold no outputs."""
        remove_if_no_outputs(log_dir, also_empty=new_folders)
        for logger in self.trainer.loggers[1:]:
            folder = getattr(logger, "log_dir", None)
            if folder and Path(folder) in new_folders:
                remove_if_no_outputs(Path(folder), also_empty=new_folders)

    def sigterm_line(self, subcommand: str) -> str:
        """What a SIGTERM or SIGINT (Ctrl+C) stopped in this run and what it left (the line ``ldrop`` prints, exit
        status 143 or 130)."""
        trainer, name = self.trainer, stop_signal().name
        if subcommand == "fit":
            checkpoint = next((c for c in trainer.callbacks if isinstance(c, TaskCheckpoint)), None)
            path = checkpoint.stop_checkpoint if checkpoint is not None else None
            if path is None and checkpoint is not None and not trainer.interrupted and checkpoint.last_model_path:
                path = Path(checkpoint.last_model_path)  # it arrived as fit ended: last.ckpt holds the final step
            where = f"at step {trainer.global_step} (epoch {trainer.current_epoch})"
            if path is not None:
                done = "" if trainer.interrupted else ", the run complete"
                return (f"stopped by {name} {where}{done}; {path.name} holds that step: resume with the same "
                        f"arguments and --ckpt_path {path}")
            if trainer.global_step == 0:
                return f"stopped by {name} before the first training step: nothing was trained, no checkpoint written"
            reason = (" (--trainer.enable_checkpointing is false)" if checkpoint is None and not trainer.checkpoint_callbacks
                      else " (--checkpoint.save_last is false)" if checkpoint is not None and not checkpoint.save_last else "")
            return f"stopped by {name} {where}; no checkpoint was written{reason}"
        if not trainer.interrupted:
            return f"stopped by {name} as 'ldrop {subcommand}' ended; its outputs are complete"
        if subcommand == "test":
            return f"stopped by {name} during 'ldrop test'; no budget sweep was written"
        if subcommand == "predict":
            writer = self._command_config(True).get("predictions")
            kept = writer.kept if isinstance(writer, JsonlPredictionWriter) else None
            return (f"stopped by {name} during 'ldrop predict'; " + (
                f"the {writer.count} predictions written before it are in {kept}" if kept is not None
                else "no predictions were written"))
        return f"stopped by {name} during 'ldrop {subcommand}'"

    def before_fit(self) -> None:
        ckpt_path = self._command_config(True).get("ckpt_path")
        if ckpt_path and self.trainer.is_global_zero:
            for logger in self.trainer.loggers:  # a resumed run's metrics.csv is continued, not replaced
                keep_csv_metrics(logger)
            self._keep_earlier_config(str(ckpt_path))

    def _keep_earlier_config(self, ckpt_path: str) -> None:
        """A fit resumed with other arguments than its run's ``config.yaml``: that file is kept as
        ``config.until-step-N.yaml`` (the run's steps up to N were trained with it), and a warning says what changed."""
        path = Path(self.trainer.log_dir or self.trainer.default_root_dir, self.save_config_kwargs["config_filename"])
        if not path.is_file():
            return
        try:
            earlier = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            earlier = None  # not a config this run wrote: it is replaced, as before
        now = yaml.safe_load(self.parser.dump(self.config, skip_none=False)).get(self.subcommand)
        changed = _changed_values(earlier, now) if isinstance(earlier, dict) else []
        if not changed:
            return
        step = load_checkpoint_file(ckpt_path, mmap=True).get("global_step", "N")
        kept = path.with_name(f"{path.stem}.until-step-{step}{path.suffix}")
        if not kept.exists():  # else an earlier resume from this step (that failed) kept it: config.yaml is its own
            path.replace(kept)
        schedule = any(key in ("trainer.max_epochs", "trainer.max_steps") for key, _, _ in changed)
        log.warning("resumed with other arguments than the run's %s (%s): the config of its steps up to %s is kept in "
                    "%s%s", path.name,
                    "; ".join(f"{key}: {a!r} -> {b!r}" for key, a, b in changed[:5]) + ("; ..." if changed[5:] else ""),
                    step, kept, ", and the learning-rate schedule is recomputed for the new length (the weights differ from "
                    "an uninterrupted run of either length)" if schedule else "")

    def after_fit(self) -> None:
        trainer = self.trainer
        checkpoint = next((c for c in trainer.callbacks if isinstance(c, TaskCheckpoint)), None)
        if checkpoint is not None and checkpoint.written and trainer.is_global_zero:  # (none under fast_dev_run)
            print(f"checkpoints written to {checkpoint.dirpath}")
        resume = next((c for c in trainer.callbacks if isinstance(c, ExactResume)), None)
        if (resume is not None and trainer.is_global_zero and trainer.global_step == resume.resumed_step
                and not resume.validation_rerun):
            timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
            remaining = timer.time_remaining() if timer is not None else None
            where = f"at its checkpoint (epoch {trainer.current_epoch}, step {trainer.global_step}"
            if remaining is not None and remaining <= 0:  # the restored Timer stopped it again at once
                elapsed = timedelta(seconds=int(timer.time_elapsed()))
                print(f"the run's --trainer.max_time {self._command_config()['trainer'].get('max_time')} had run out "
                      f"{where}; {elapsed} trained): nothing was trained; raise --trainer.max_time to train further")
            else:
                print(f"the run was already complete {where}; max_epochs={trainer.max_epochs}, max_steps="
                      f"{trainer.max_steps}): nothing was trained; raise --trainer.max_epochs or --trainer.max_steps "
                      "to train further")

    def after_test(self) -> None:
        sweep, trainer = self._command_config(True).get("sweep"), self.trainer
        folder = sweep.folder(trainer) if sweep is not None else None  # on every rank: log_dir is a collective
        if folder is None or not trainer.is_global_zero or trainer.fast_dev_run:
            return
        if sweep.rows:  # the sweep ran to its end, where it writes its files
            print(f"budget sweep written to {folder}")
        else:
            print("no test batch was scored" + (" (--trainer.limit_test_batches 0)" if trainer.limit_test_batches == 0
                                                else "") + ": no budget sweep was written")

    def build_trainer(self, config: dict[str, Any], callbacks: list[Any]):
        # Rich progress bar and a learning-rate monitor by default, unless the user turned them off or chose
        # their own (a default callback list in trainer_defaults would be replaced by any user list).
        if config.get("enable_checkpointing") is False:
            # no checkpoints: without ldrop's checkpoint callback (Lightning refuses one with checkpointing off)
            callbacks = [c for c in callbacks if not isinstance(c, TaskCheckpoint)]
        existing = [*callbacks, *(config.get("callbacks") or [])]
        bar = config.get("enable_progress_bar")
        if bar is None and not any(isinstance(c, ProgressBar) for c in existing):
            # a bar is drawn in a terminal only: in a log file (a batch job, nohup, a pipe) it would print nothing
            # until the end, so lines instead, unless asked for (--trainer.enable_progress_bar true)
            bar = sys.stdout.isatty()
            config = {**config, "enable_progress_bar": bar}
        defaults = [
            (ProgressBar, RichProgressBar, bar is not False),
            (ProgressLines, ProgressLines, bar is False),  # lines instead
            (LearningRateMonitor, lambda: LearningRateMonitor(logging_interval="step"),
             config.get("logger", True) not in (False, None)),
            (ExactResume, ExactResume, True),  # a resumed fit draws the same random numbers
            (TargetBudgets, TargetBudgets, True),  # predict resolves a target predict_budget per input
        ]
        callbacks += [make() for kind, make, wanted in defaults
                      if wanted and not any(isinstance(c, kind) for c in existing)]
        if not any(isinstance(c, StopOnSigterm) for c in existing):
            # first, so that a SIGTERM during the last test batch stops the run before the sweep is written
            user = config.get("callbacks")
            user = [] if user is None else list(user) if isinstance(user, list | tuple) else [user]
            config = {**config, "callbacks": [StopOnSigterm(), *user]}
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            # Checkpoints are written to a temporary file and renamed: a crash never truncates one.
            plugins.append(AtomicCheckpointIO())
        if under_slurm() and not TorchElasticEnvironment.detect() and not any(isinstance(p, ClusterEnvironment)
                                                                              for p in plugins):
            # SLURM without Lightning's auto-requeue: no hpc_ckpt_N.ckpt saved in the middle of a step and no
            # 'scontrol requeue' on SIGUSR1, which stops the run as SIGTERM does (stop_signals: last.ckpt, exact)
            plugins.append(SLURMEnvironment(auto_requeue=False))
        config = {**config, "plugins": plugins}
        # Without a logger every run writes its config to --trainer.default_root_dir: validate, test and predict
        # name theirs after themselves, so that fit's config.yaml (which 'ldrop export' reads) is never replaced.
        name = "config.yaml" if self.subcommand in (None, "fit") or config.get("logger") else f"{self.subcommand}_config.yaml"
        self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": name}
        return super().build_trainer(config, callbacks)


class StoppedBySigterm(SIGTERMException):
    """A run that a stop signal (:func:`stop_signals`) stopped; ``line`` says where and what it left. Exit status
    128 + the signal: 143 for SIGTERM, 130 for SIGINT, 138 for SIGUSR1."""

    def __init__(self, line: str) -> None:
        super().__init__(128 + stop_signal())
        self.line = line


_received: list[signal.Signals] = []  # the stop signals received in the current sigterm_stops block, in order


def stop_signal() -> signal.Signals:
    """The signal that stopped the current ``ldrop`` command: the first one received, else SIGTERM."""
    return _received[0] if _received else signal.SIGTERM


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals that stop an ``ldrop`` command: SIGTERM, SIGINT (Ctrl+C) and, under SLURM, SIGUSR1 (``#SBATCH
    --signal=USR1@90``; ldrop turns Lightning's auto-requeue off, see :meth:`LdropCLI.build_trainer`)."""
    usr1 = getattr(signal, "SIGUSR1", None)
    return (signal.SIGTERM, signal.SIGINT, *([usr1] if usr1 is not None and under_slurm() else []))


#: Seconds a stop signal may go unhandled (the main thread waits in C code: a DDP start-up for ranks that never
#: come) before a second stop signal ends the process at once; a handler run within ``_LAG`` of a signal's read
#: (the watching thread may read it late) counts as handling it.
FORCE_AFTER, _LAG = 3.0, 1.0
_WATCH: list[int] = []  # the wakeup pipe's two ends while a sigterm_stops block watches it


def _close_watch_in_child() -> None:
    """In a forked child (a DataLoader worker): its signals are not the parent's stop signals."""
    if _WATCH:
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(-1)
        for fd in _WATCH:
            with contextlib.suppress(OSError):
                os.close(fd)
        _WATCH.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_watch_in_child)


def _force_second_stop(fd: int, stops: Sequence[int], handled: list[float], done: list[bool]) -> None:
    """Read the signal numbers Python's C-level handler writes to the wakeup pipe ``fd`` (even while the main thread
    cannot run Python): a second stop signal after one the main thread left unhandled for :data:`FORCE_AFTER` s
    (``handled[0]``: when it last ran the handler) ends the process at once with one line."""
    pending: tuple[float, int] | None = None  # (when read, signal) of a stop signal not yet seen handled
    while data := os.read(fd, 64):
        for signum in data:
            if signum not in stops:
                continue
            now = time.monotonic()
            if pending is None or handled[0] >= pending[0] - _LAG:
                pending = (now, signum)
                continue
            time.sleep(max(0.0, pending[0] + FORCE_AFTER - now))
            if handled[0] < pending[0] - _LAG and not done[0]:
                name = signal.Signals(pending[1]).name
                os.write(2, f"ldrop: stopped by {name} at once: a second stop signal came while the first went "
                            f"unhandled for {FORCE_AFTER:g} s (the process waited in C code, e.g. a DDP start-up for "
                            "ranks that never came); no checkpoint was written\n".encode())
                _release_folders()  # the main thread is stuck: it cannot
                os._exit(128 + pending[1])
    os.close(fd)


@contextlib.contextmanager
def _second_stop_forces(stops: Sequence[int], handled: list[float]) -> Iterator[None]:
    """While in the block, :func:`_force_second_stop` watches the signals (POSIX; unless the wakeup fd is already
    someone else's, an event loop's)."""
    if os.name != "posix":
        yield
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    earlier = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    if earlier != -1:
        signal.set_wakeup_fd(earlier)
        os.close(read_end)
        os.close(write_end)
        yield
        return
    _WATCH[:], done = [read_end, write_end], [False]
    threading.Thread(target=_force_second_stop, args=(read_end, stops, handled, done), daemon=True,
                     name="ldrop-second-stop").start()
    try:
        yield
    finally:
        done[0] = True
        signal.set_wakeup_fd(-1)
        _WATCH.clear()
        os.close(write_end)  # the thread reads the pipe's end and closes its own


@contextlib.contextmanager
def sigterm_stops() -> Iterator[None]:
    """While in the block, the :func:`stop_signals` (SIGTERM, Ctrl+C's SIGINT, SLURM's SIGUSR1) raise Lightning's
    ``SIGTERMException`` at once outside a trainer's run (once: then a SIGTERM is ignored, a second Ctrl+C raises
    ``KeyboardInterrupt``); during a run, Lightning's SIGTERM handler flags any (it calls this one back, which
    leaves it at that), and the loops and ldrop's callbacks stop at the end of the batch, as for SIGTERM.
    :func:`stop_signal` names the first. A second one while the first could not be handled (the main thread waits in
    C code) for :data:`FORCE_AFTER` seconds ends the process at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    forwarding, owner, stops, handled = False, os.getpid(), stop_signals(), [float("-inf")]

    def handler(signum: int, frame: Any) -> None:
        nonlocal forwarding
        if os.getpid() != owner:  # a forked DataLoader worker: Ctrl+C ends it as before, the run stops the rest
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        handled[0] = time.monotonic()
        if forwarding:  # Lightning's handler calling this one back
            return
        _received.append(signal.Signals(signum))
        if signum == signal.SIGINT and len(_received) > 1:
            raise KeyboardInterrupt  # a second Ctrl+C: at once
        running = signal.getsignal(signal.SIGTERM)
        if running is handler and len(_received) == 1:  # outside a trainer's run
            raise SIGTERMException
        if signum != signal.SIGTERM and callable(running) and running is not handler:
            forwarding = True
            try:
                running(signum, frame)  # a trainer's: it flags the stop
            finally:
                forwarding = False

    _received.clear()
    previous = {signum: signal.getsignal(signum) for signum in stops}
    for signum in stops:
        if signum == signal.SIGTERM or previous[signum] is not signal.SIG_IGN:  # a background job's Ctrl+C: ignored
            signal.signal(signum, handler)
    try:
        with _second_stop_forces(stops, handled):
            yield
    finally:
        for signum in stops:
            if signum == signal.SIGTERM or previous[signum] is not signal.SIG_IGN:
                signal.signal(signum, previous[signum])


#: The version_N folder this process made for its run (:meth:`LdropCLI.before_instantiate_classes`), then the
#: folders above it that this made, deepest first.
_RESERVED: list[Path] = []


#: What every run folder gets before it produces anything: the config, the hyper-parameters, an event file.
BOOKKEEPING_FILES = ("config.yaml", "*_config.yaml", "hparams.yaml", "events.out.tfevents.*")


#: Environment variables of a process's rank that launchers and cluster managers set (torchrun, Lightning's own
#: launcher, SLURM, LSF, MPI): a process where any is not 0 is a worker of a run that another process started.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK",
                  "OMPI_COMM_WORLD_RANK", "PMI_RANK")


def _changed_values(earlier: Any, now: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, earlier, now)`` for each value that differs between two configs (nested mappings); a key that
    only one of them has (an option that a newer ldrop or Lightning added) is not a change."""
    if isinstance(earlier, dict) and isinstance(now, dict):
        return [change for name in earlier if name in now
                for change in _changed_values(earlier[name], now[name], f"{key}.{name}" if key else name)]
    return [] if earlier == now else [(key, earlier, now)]


def _writes_version_folders(logger: Any) -> bool:
    """Whether a logger's config is of Lightning's TensorBoard or CSV logger (or a subclass): one that writes to
    ``<save_dir>/<name>/version_N``, which ldrop settles (a resumed run's, a new run's reserved)."""
    if not hasattr(logger, "get") or logger.get("init_args") is None:
        return False
    module, _, name = str(logger.get("class_path")).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, TensorBoardLogger | CSVLogger)


def _first_process() -> bool:
    """Whether this is the first process of a run (before the trainer exists to say its global rank)."""
    return all(os.environ.get(name, "0") in ("", "0") for name in RANK_VARIABLES)


def remove_if_no_outputs(folder: Path, also_empty: Sequence[Path] = ()) -> bool:
    """Delete a run folder that holds only bookkeeping files (no checkpoint, sweep or prediction file), then
    the folders of ``also_empty`` (deepest first) that are left empty."""
    if not folder.is_dir():
        return False
    files = [p for p in folder.rglob("*") if p.is_file()]
    if not all(any(p.match(pattern) for pattern in BOOKKEEPING_FILES) for p in files):
        return False
    shutil.rmtree(folder)
    for parent in sorted(also_empty, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty (any more: another run's folder), or gone
            parent.rmdir()
    return True


TRAINER_DEFAULTS: dict[str, Any] = {
    # Without a logger, checkpoints, config.yaml (<subcommand>_config.yaml but for fit), budget sweep and
    # predictions land here rather than in the working folder.
    "default_root_dir": "runs",
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "ldrop"},
    },
    # ldrop's samplers shard batches across ranks themselves (length grouping needs whole batches).
    "use_distributed_sampler": False,
}


class LdropArgumentParser(LightningArgumentParser):
    """The parser of every ``ldrop`` subcommand; its one change is to what ``--model.selector.help X`` shows.

    jsonargparse builds the help of a nested option (``--model.selector.help``) with a parser of this class,
    and it listed the options as ``--selector.hidden_dim`` (relative to the task) where the command line takes
    ``--model.selector.hidden_dim``. A task takes its selector as a factory of ``(num_layers, feature_dim)``,
    which the task passes: parsing leaves those two out, but the help listed them (``num_layers`` as required),
    and the parser then refused them.
    """

    #: the command line being parsed (set by :meth:`LdropCLI.parse_arguments`)
    typed: Sequence[str] = ()

    def add_class_arguments(self, theclass: Any, nested_key: str | None = None, *args: Any, **kwargs: Any) -> Any:
        if helped := re.match(r"Help for --([\w.]+)\.help=", str(self.description)):
            # as typed (--model.selector), not relative to the task's own parser (--selector)
            typed = [arg.split("=")[0][2:-5] for arg in self.typed if re.fullmatch(r"--[\w.]+\.help(=.*)?", arg)]
            full = next((key for key in typed if key.endswith(f".{helped[1]}")), helped[1])
            self.description = str(self.description).replace(f"--{helped[1]}.help=", f"--{full}.help=", 1)
            nested_key = full if nested_key == helped[1] else nested_key
            if isinstance(theclass, type) and issubclass(theclass, LayerSelector) and not kwargs.get("skip"):
                kwargs["skip"] = {2}  # the factory's two positional parameters, as parsing skips them
        return super().add_class_arguments(theclass, nested_key, *args, **kwargs)


def run_lightning(args: Sequence[str] | None = None, own_commands: Mapping[str, str] = {}) -> LdropCLI:  # noqa: B006
    """Run the LightningCLI part (``fit``, ``validate``, ``test``, ``predict``); ``own_commands`` (name ->
    summary) are listed in its help."""
    try:
        return _ldrop_cli(own_commands, args)
    finally:
        _release_folders()


def _release_folders() -> None:
    """What a run leaves to release however it ended (also a forced stop, :func:`_force_second_stop`)."""
    release_claims()  # a checkpoint folder this fit claimed
    while _RESERVED:  # a version_N folder reserved for a run that failed before it wrote there (if empty)
        with contextlib.suppress(OSError):
            _RESERVED.pop(0).rmdir()


def _ldrop_cli(own_commands: Mapping[str, str], args: Sequence[str] | None) -> LdropCLI:
    return LdropCLI(
        LayerDropTask,
        AudioDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        own_commands=own_commands,
        parser_class=LdropArgumentParser,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        trainer_defaults=TRAINER_DEFAULTS,
        parser_kwargs={
            "prog": "ldrop",
            "description": f"ldrop {__version__}: input-conditioned layer dropping for speech foundation models. "
            "'ldrop SUBCOMMAND --help' shows a subcommand's options; a task's own options (and its selector's) "
            "with 'ldrop fit --model.help ClassificationTask [--model.selector.help InputConditionedSelector]'. "
            "'ldrop --version' prints the version.",
            "fit": {
                "description": "Train a task. Checkpoints (best-*.ckpt after each validation, last.ckpt) go to "
                "<run>/checkpoints; '--ckpt_path <run>/checkpoints/last.ckpt' resumes an interrupted run exactly, "
                "in the same run folder.",
                "ldrop_subcommand": "fit",
            },
            "validate": {"description": SUBCOMMAND_HELP["validate"], "ldrop_subcommand": "validate"},
            "test": {
                "description": "Run the budget sweep: the test split is scored at every budget in "
                "--sweep.budgets (default: every layer count 1..N), and budget_sweep.csv/.json/.png "
                "and layer_usage.png are written to the run folder (or --sweep.directory), printed at the end.",
                "ldrop_subcommand": "test",
            },
            "predict": {
                "description": SUBCOMMAND_HELP["predict"] + " Without --inputs it predicts the datamodule's "
                "predict split; --predictions.output names the file.",
                "ldrop_subcommand": "predict",
            },
        },
        args=args,
    )
