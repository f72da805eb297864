"""The ``ldrop`` command: LightningCLI (fit, validate, test, predict) plus ``compare``, ``export`` and
``profile``.

Model and data are chosen in YAML by ``class_path`` (short names work: ``ClassificationTask``,
``SpeechCommandsDataModule``); the task's output labels (class names, CTC characters) are linked from the
datamodule, so they are never typed twice. A failure a user can fix (an argument, a configuration, a file,
the data) is printed as one ``ldrop: error: ...`` line with exit status 2 (:func:`user_error_line`).
"""

from __future__ import annotations

import difflib
import errno
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentError, ArgumentParser
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

# Imported so that YAML can name every class by its short name.
import ldrop.data  # noqa: F401, E402
import ldrop.selectors  # noqa: F401, E402
import ldrop.tasks  # noqa: F401, E402
from ldrop import __version__
from ldrop._io import CheckpointError, load_checkpoint_file
from ldrop.budgets import budget_list
from ldrop.callbacks import AtomicCheckpointIO, ExactResume, JsonlPredictionWriter, TaskCheckpoint
from ldrop.data import AudioDataModule
from ldrop.data.audio import AudioReadError
from ldrop.data.base import DatasetLayoutError
from ldrop.runtime import TargetBudgets
from ldrop.runtime.checkpoints import load_task_checkpoint  # noqa: F401 (kept importable from here)
from ldrop.sweeps import BudgetSweep
from ldrop.sweeps.report import IncompleteSweepError
from ldrop.tasks import LayerDropTask
from ldrop.tasks.labels import model_labels  # noqa: F401 (public in ldrop.tasks; kept importable from here)

#: The commands ``main`` runs itself, before LightningCLI: listed among the subcommands of ``ldrop --help``.
OWN_COMMANDS = {
    "compare": "Overlay budget sweeps (run folders or sweep files) in one plot and one Markdown table.",
    "export": "Write the backbone of a trained checkpoint as a Hugging Face save_pretrained folder.",
    "profile": "Measure a device cost model (the input of ms / rtf budget targets).",
}
#: Options that only 'ldrop predict' takes: the other subcommands neither list nor accept them.
PREDICT_ONLY = ("predictions", "inputs")

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

    _parser_subcommand: str | None = None

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # which subcommand the parser is for (None: the main parser, or a CLI without subcommands)
        self._parser_subcommand = kwargs.pop("ldrop_subcommand", None)
        kwargs.setdefault("allow_abbrev", False)  # '--trainer.max_epoch 1' is an error, never max_epochs
        kwargs.setdefault("exit_on_error", False)  # errors come to main, which prints them as one line
        return super().init_parser(**kwargs)

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        commands = getattr(self.parser, "_subcommands_action", None)
        if add_subcommands and commands is not None:
            # listed in 'ldrop --help' beside Lightning's; main() runs them before LightningCLI is built
            for name, summary in OWN_COMMANDS.items():
                commands.add_subcommand(name, ArgumentParser(prog=f"ldrop {name}", description=summary), help=summary)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            argv = list(args) if isinstance(args, list | tuple) else sys.argv[1:]
            raise ConfigError(argument_error_line(str(err), argv, _option_strings(parser))) from err
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            # a damaged or foreign file is named now, as one line, before LightningCLI or the run reads it
            # (memory-mapped: cheap even for a large checkpoint)
            load_checkpoint_file(ckpt_path, weights_only=True, mmap=True)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data", "model.init_args.labels", compute_fn=model_labels, apply_on="instantiate")
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
        config = self.config[self.subcommand] if self.subcommand else self.config
        model = config.get("model")
        init_args = model.get("init_args") if model is not None and hasattr(model, "get") else None
        # jsonargparse resolves the task's signature (its **kwargs included): no 'labels' there, no link
        self._model_takes_labels = init_args is not None and "labels" in init_args
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
        if not getattr(self, "_model_takes_labels", True) and isinstance(self.model, LayerDropTask):
            # jsonargparse skips the labels link for a task without 'labels', but LightningCLI still records the
            # linked value among its hyper-parameters: the checkpoint would then fail to load (an unexpected
            # keyword argument). The model never received it, so it is not one of its hyper-parameters.
            self.model.hparams.pop("labels", None)

    def after_instantiate_classes(self) -> None:
        sweep = next((c for c in self.trainer.callbacks if isinstance(c, BudgetSweep)), None)
        if sweep is not None:
            try:  # a bad budget fails here, as one line, not after the model and data are set up
                budget_list(sweep.budgets, self.model.num_layers)
            except ValueError as err:
                raise ConfigError(f"--sweep.budgets: {err}") from err
        config = self.config[self.subcommand] if self.subcommand else self.config
        inputs = config.get("inputs")
        if inputs:
            if self.subcommand not in (None, "predict"):
                raise ConfigError("--inputs applies to 'ldrop predict' only")
            try:
                self.datamodule.predict_on_files([inputs] if isinstance(inputs, str) else list(inputs))
            except (ValueError, FileNotFoundError) as err:
                raise ConfigError(f"--inputs: {err}") from err
        writer = next((c for c in self.trainer.callbacks if isinstance(c, JsonlPredictionWriter)), None)
        if self.subcommand == "predict" and writer is not None and self.trainer.is_global_zero:
            try:  # before the model and data are set up and any inference runs
                writer.check_writable(self.trainer)
            except OSError as err:
                raise ConfigError(f"--predictions.output: cannot write {writer.target(self.trainer)}: "
                                  f"{os_error_line(err)}") from err

    def _run_subcommand(self, subcommand: str) -> None:
        # Rank 0 only: other ranks must not settle the logger's version before it is shared with them.
        log_dir = self.trainer.log_dir if self.trainer.logger is not None and self.trainer.is_global_zero else None
        new_folders = _missing_folders(Path(log_dir)) if log_dir is not None else []
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            # A run that failed before it produced anything leaves no empty folder behind: neither its
            # version_N folder nor the logger's folders above it that it created (runs/, runs/ldrop/).
            if new_folders and (subcommand != "fit" or self.trainer.global_step == 0):
                remove_if_no_outputs(Path(log_dir), also_empty=new_folders)
            raise
        if new_folders and subcommand == "predict":
            # the predictions went to --predictions.output elsewhere
            remove_if_no_outputs(Path(log_dir), also_empty=new_folders)

    def after_fit(self) -> None:
        resume = next((c for c in self.trainer.callbacks if isinstance(c, ExactResume)), None)
        if resume is None or resume.resumed_step is None or not self.trainer.is_global_zero:
            return
        if self.trainer.global_step == resume.resumed_step:
            trainer = self.trainer
            print(f"the run was already complete at its checkpoint (epoch {trainer.current_epoch}, step "
                  f"{trainer.global_step}; max_epochs={trainer.max_epochs}, max_steps={trainer.max_steps}): "
                  "nothing was trained; raise --trainer.max_epochs or --trainer.max_steps to train further")

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
        if not any(isinstance(c, TargetBudgets) for c in existing):
            callbacks.append(TargetBudgets())  # predict resolves a target predict_budget per input
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            # Checkpoints are written to a temporary file and renamed: a crash never truncates one.
            config = {**config, "plugins": [*plugins, AtomicCheckpointIO()]}
        return super()._instantiate_trainer(config, callbacks)


#: What every run folder gets before it produces anything: the config, the hyper-parameters, an event file.
BOOKKEEPING_FILES = ("config.yaml", "hparams.yaml", "events.out.tfevents.*")


def remove_if_no_outputs(folder: Path, also_empty: Sequence[Path] = ()) -> bool:
    """Delete a run folder that holds only bookkeeping files (no checkpoint, sweep or prediction file), then
    the folders of ``also_empty`` (deepest first) that are left empty."""
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
    for parent in sorted(also_empty, key=lambda p: len(p.parts), reverse=True):
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
    return True


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and each of its parents that does not exist yet (what a run creates), deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


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
            "validate": {"ldrop_subcommand": "validate"},
            "test": {
                "description": "Run the budget sweep: the test split is scored at every budget in "
                "--sweep.budgets (default: every layer count 1..N), and budget_sweep.csv/.json/.png "
                "and layer_usage.png are written to the run folder (or --sweep.directory), printed at the end.",
                "ldrop_subcommand": "test",
            },
            "predict": {"ldrop_subcommand": "predict"},
        },
        args=args,
    )


def compare_main(argv: Sequence[str]) -> int:
    """``ldrop compare RUN_OR_CSV... [--out DIR] [--metric NAME] [--labels A,B,...]``."""
    from ldrop.sweeps import compare_sweeps

    parser = _own_parser(
        "compare",
        "Overlay budget sweeps (run directories, budget_sweep.csv or .json files) in one plot and one Markdown "
        "table. Only complete sweeps are read: a folder whose sweep_manifest.json is missing or does not match "
        "its files (an interrupted 'ldrop test') is an error.",
    )
    parser.add_argument("runs", nargs="+", help="run directories or sweep files")
    parser.add_argument("--out", default="compare", help="output folder for compare.png and compare.md")
    parser.add_argument("--metric", type=str | None, default=None,
                        help="metric column (default: the sweeps' first metric)")
    parser.add_argument("--labels", type=str | None, default=None, help="comma-separated labels, one per run")
    ns = _parse(parser, argv)
    labels = ns.labels.split(",") if ns.labels else None
    if labels is not None and len(labels) != len(ns.runs):
        raise ConfigError(f"--labels has {len(labels)} names for {len(ns.runs)} runs")
    try:
        table, plot = compare_sweeps(ns.runs, ns.out, metric=ns.metric, labels=labels)
    except KeyError as err:
        raise ConfigError(f"--metric: no column {err} in the sweeps") from err
    print(table)
    print(f"\nplot: {plot}\ntable: {plot.with_name('compare.md')}")
    return 0


def export_main(argv: Sequence[str]) -> int:
    """``ldrop export CHECKPOINT OUT_DIR``: a trained backbone as a ``save_pretrained`` directory."""
    parser = _own_parser(
        "export",
        "Write the backbone of a trained ldrop checkpoint as a Hugging Face save_pretrained directory (usable as "
        "model.backbone), with the heads and selector in ldrop_task_state.pt beside it.",
    )
    parser.add_argument("checkpoint", help="a .ckpt written by ldrop fit")
    parser.add_argument("out_dir", help="output directory")
    ns = _parse(parser, argv)
    model = load_task_checkpoint(ns.checkpoint)
    out = model.export_pretrained(ns.out_dir)
    print(f"exported {type(model).__name__} backbone to {out}")
    return 0


def _option_strings(parser: ArgumentParser) -> list[str]:
    """Every option string of ``parser`` and of its subcommands' parsers."""
    options = [o for action in parser._actions for o in action.option_strings]
    for action in parser._actions:
        for sub in (getattr(action, "choices", None) or {}).values():
            if isinstance(sub, ArgumentParser):
                options += _option_strings(sub)
    return options


def _own_parser(name: str, description: str) -> ArgumentParser:
    """The parser of one of ldrop's own commands: no abbreviated options, errors raised (as one line)."""
    return ArgumentParser(prog=f"ldrop {name}", description=description, allow_abbrev=False, exit_on_error=False)


def _parse(parser: ArgumentParser, argv: Sequence[str]) -> Any:
    try:
        return parser.parse_args(list(argv))
    except ArgumentError as err:
        raise ConfigError(argument_error_line(str(err), list(argv), _option_strings(parser))) from err


# ---------------------------------------------------------------------------------- one line per failure
def argument_error_line(message: str, argv: Sequence[str] = (), options: Sequence[str] = ()) -> str:
    """jsonargparse's (multi-line, nested) parse error as one line: the option as typed, its value, and what
    is accepted.

    jsonargparse reports an error inside a subclass (``--model.init_args.selector.init_args.mode``) as a
    failure of ``model``, with the real reason nested a few levels down and the value of every level; the
    innermost reason and the outermost nested key are the ones a user can act on.

    Args:
        message: the ``ArgumentError`` text.
        argv: the command line (to name the option as it was typed).
        options: the parser's option strings (to suggest one for an unrecognised, e.g. abbreviated, option).
    """
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "bad arguments"
    command = argv[0] if argv and not str(argv[0]).startswith("-") else "fit"
    if lines[0].lower().startswith("unrecognized arguments"):
        given = [t.split("=", 1)[0] for t in lines[0].split(":", 1)[-1].split() if t.startswith("--")]
        predict_only = [t for t in given if t.lstrip("-").split(".")[0] in PREDICT_ONLY]
        if predict_only:
            return f"{predict_only[0]} applies to 'ldrop predict' only"
        guesses = difflib.get_close_matches(given[0], options, n=1, cutoff=0.8) if given else []
        return lines[0] + (f"; did you mean {guesses[0]}? (options are never abbreviated)" if guesses else "")
    keys = re.findall(r'Parser key "([^"]+)"', message)
    if not keys:
        return " ".join(lines[:2])[:300]
    nested = re.findall(r"Given value: NestedArg\(key='([^']*)', val='(.*)'\)$", message, flags=re.M)
    values = re.findall(r"^\s*Given value: (?!NestedArg\(|Namespace\()(.*)$", message, flags=re.M)
    # the outermost level names the whole key (model + selector.init_args.mode) and the value as given
    key, value = (f"{keys[0]}.{nested[-1][0]}", nested[-1][1]) if nested else (keys[0], values[-1] if values else None)
    option = _option_as_typed(key, argv)
    given = f"{option} {value!r}" if value is not None else option
    classes = re.findall(r"class_path[ =]'([^']+)'", message)
    not_accepted = re.search(r"Option '([^']+)' is not accepted", message)
    if not_accepted:
        owner = (re.findall(r"class_path[ =]'([^']+)'", message[not_accepted.start() - 400: not_accepted.end() + 400])
                 or classes or [keys[0]])[-1].rsplit(".", 1)[-1]
        helps = " ".join(f"--{k}.help {c.rsplit('.', 1)[-1]}" for k, c in _help_chain(key, classes))
        return f"{given}: {owner} has no option {not_accepted.group(1)!r} (its options: 'ldrop {command} {helps}')"
    missing = re.search(r"Expected a path but (\S+) either not accessible or invalid", message)
    if missing:
        guess = _closest_class_name(missing.group(1))
        return (f"{option} {missing.group(1)!r}: no such class" + (f"; did you mean {guess}?" if guess else "")
                + " (give a class name, a dotted import path, or null)")
    innermost = re.search(r"Expected an? (.+?)\. Got value: (.*?)(?:\. Got value: .*)?$", message, flags=re.M)
    if innermost:
        return f"{given}: expected {_accepted([innermost.group(1)])}"
    subtypes = re.findall(r"Subtypes: \[(.*)\]$", message, flags=re.M)
    if subtypes:
        return f"{given}: expected {_accepted(_split_types(subtypes[-1]))}"
    return f"{given}: " + lines[-1][:200]


def _help_chain(key: str, classes: Sequence[str]) -> list[tuple[str, str]]:
    """The ``--<key>.help <Class>`` options that show the options of the classes along ``key``
    (``model.selector.init_args.x`` with ClassificationTask, InputConditionedSelector)."""
    parts = [p for p in key.split(".") if p != "init_args"]
    chain, prefix = [], []
    for part, cls in zip(parts, dict.fromkeys(classes), strict=False):
        prefix.append(part)
        chain.append((".".join(prefix), cls))
    return chain


def _option_as_typed(key: str, argv: Sequence[str]) -> str:
    """The command-line option that set ``key`` (``model.predict_budget`` may have been typed as
    ``--model.init_args.predict_budget``), else ``--key`` (it came from a config file)."""
    parts = [p for p in key.split(".") if p != "init_args"]
    for token in argv:
        name = str(token).split("=", 1)[0]
        if name.startswith("--") and [p for p in name[2:].split(".") if p != "init_args"] == parts:
            return name
    return "--" + key


def _split_types(text: str) -> list[str]:
    """``"<class 'int'>, dict[str, typing.Any]"`` -> the top-level items (brackets kept together)."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += (char in "[(") - (char in "])")
        if char == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += char
    return [*items, current.strip()] if current.strip() else items


def _accepted(types: Sequence[str]) -> str:
    """Types as jsonargparse prints them, in words: ``an int, a float or null``; ``one of 'topk', 'threshold'``."""
    literals: list[str] = []
    words: list[str] = []
    for text in types:
        text = text.strip()
        literal = re.fullmatch(r"(?:typing\.)?Literal\[(.*)\]", text)
        if literal:
            literals += [v for v in _split_types(literal.group(1)) if v not in literals]
            continue
        name = (re.fullmatch(r"<class '([^']+)'>", text) or re.fullmatch(r"(.*)", text)).group(1)
        callable_of = re.search(r"Callable\[.*,\s*([\w.]+)\]$", name)
        if name.endswith("NoneType"):
            word = "null"
        elif name.startswith(("dict", "typing.Dict")):
            word = "a dict"
        elif name.startswith(("list", "typing.List")):
            word = "a list"
        elif callable_of:
            word = f"a {callable_of.group(1).rsplit('.', 1)[-1]} class"
        else:
            short = name.rsplit(".", 1)[-1]
            word = f"an {short}" if short[:1].lower() in "aeiou" else f"a {short}"
        if word not in words:
            words.append(word)
    if literals:
        words.insert(0, "one of " + ", ".join(literals))
    return ", ".join(words[:-1]) + f" or {words[-1]}" if len(words) > 1 else (words[0] if words else "another value")


def _closest_class_name(name: str) -> str | None:
    """The ldrop class whose name is closest to a misspelt ``name`` (``InputConditonedSelector``)."""
    known = [n for module in (ldrop.selectors, ldrop.tasks, ldrop.data) for n in dir(module)
             if isinstance(getattr(module, n), type)]
    matches = difflib.get_close_matches(name.rsplit(".", 1)[-1], known, n=1, cutoff=0.75)
    return matches[0] if matches else None


def os_error_line(err: OSError) -> str:
    """``"no space left on runs/ldrop (writing last.ckpt)"``, ``"Read-only file system: /mnt/x"``."""
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        reason = err.strerror if err.strerror and err.strerror.startswith("no space left") else (
            f"no space left on {Path(err.filename).parent}" if err.filename else "no space left on the device")
        return reason + (f" (writing {err.filename})" if err.filename else "")
    if err.strerror and err.filename:
        return f"{err.strerror}: {err.filename}"
    return str(err)


#: Exceptions ldrop raises for what a user can fix, printed as one line whatever raised them.
USER_ERRORS = (ConfigError, CheckpointError, AudioReadError, IncompleteSweepError, FloatingPointError,
               MisconfigurationException)


def _raised_in_ldrop(err: BaseException) -> bool:
    """Whether ``err`` was raised by ldrop's own code (a deliberate message), not deep inside a library."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    package = os.path.dirname(os.path.abspath(__file__))
    return tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(package + os.sep)


def _from_worker(err: BaseException) -> str | None:
    """The message of a user error that a DataLoader worker raised (PyTorch re-raises it as a multi-line
    ``Caught X in DataLoader worker process N`` error, often as a ``RuntimeError``)."""
    text = str(err)
    match = re.match(r"Caught (\w+) in DataLoader worker process", text)
    names = {cls.__name__ for cls in (*USER_ERRORS, FileNotFoundError, DatasetLayoutError)}
    if not match or match.group(1) not in names | {"AudioFileNotFoundError"}:
        return None
    last = text.rstrip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last


def user_error_line(err: BaseException) -> str | None:
    """The one line that reports ``err`` if a user can fix it (an argument, a configuration, a file, the
    data, a full disk), classified by type; ``None`` for anything else (a bug: the full traceback)."""
    if (worker := _from_worker(err)) is not None:
        return worker
    if isinstance(err, ArgumentError):  # a parser with exit_on_error=False that main did not wrap
        return argument_error_line(str(err))
    if isinstance(err, DatasetLayoutError):  # the expected layout follows on the next lines
        return str(err).strip()
    if isinstance(err, USER_ERRORS) or isinstance(err, FileNotFoundError) and not err.filename:
        text = str(err).strip() or type(err).__name__
        return text.splitlines()[0]
    if isinstance(err, OSError):
        return os_error_line(err)
    if isinstance(err, ValueError | RuntimeError) and _raised_in_ldrop(err):
        return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return None


def main(argv: Sequence[str] | None = None) -> int | None:
    """Entry point of the ``ldrop`` console script.

    A failure a user can fix (a bad argument or configuration, a missing, damaged or mismatched file, bad
    audio, an empty split, a NaN loss, a full disk) is printed as one ``ldrop: error: ...`` line with exit
    status 2; ``LDROP_DEBUG=1`` raises it with the full traceback instead.
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
    except Exception as err:
        line = user_error_line(err)
        if line is None or os.environ.get("LDROP_DEBUG", "0") not in ("", "0"):
            raise
        print(f"ldrop: error: {line} (LDROP_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
