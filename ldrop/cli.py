"""The ``ldrop`` command: LightningCLI (fit, validate, test, predict) plus ``compare`` and ``export``.

Model and data are chosen in YAML by ``class_path`` (short names work: ``ClassificationTask``,
``SpeechCommandsDataModule``); the task's output labels (class names, CTC characters) are linked from the
datamodule, so they are never typed twice.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

# Imported so that YAML can name every class by its short name.
import ldrop.data  # noqa: F401, E402
import ldrop.selectors  # noqa: F401, E402
import ldrop.tasks  # noqa: F401, E402
from ldrop.callbacks import AtomicCheckpointIO, JsonlPredictionWriter, TaskCheckpoint
from ldrop.data import AudioDataModule, LibriSpeechDataModule, TedliumDataModule
from ldrop.runtime.loading import load_task_checkpoint  # noqa: F401 (kept importable from here)
from ldrop.tasks import ENGLISH_CHARACTERS, LayerDropTask, build_vocabulary


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


#: Model arguments that only shape evaluation: with ``--ckpt_path`` the config/command line decides them,
#: not the checkpoint's hyper-parameters (which otherwise override the config in LightningCLI).
EVALUATION_ARGUMENTS = frozenset({
    "val_budgets", "test_budgets", "predict_budget", "sweep_repeats", "sweep_controls", "static_search",
    "method_name", "exit_policy", "exit_confidence",
})


class LdropCLI(LightningCLI):
    """LightningCLI with ldrop's links, checkpointing and prediction writer."""

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        hparams = torch.load(ckpt_path, weights_only=True, map_location="cpu").get("hyper_parameters", {})
        hparams = {k: v for k, v in hparams.items() if k not in EVALUATION_ARGUMENTS and k != "_instantiator"}
        hparams.pop("labels", None)  # linked from the datamodule at instantiation
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        else:
            hparams = {"init_args": hparams}
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data", "model.init_args.labels", compute_fn=model_labels, apply_on="instantiate")
        parser.add_lightning_class_args(TaskCheckpoint, "checkpoint")
        parser.add_lightning_class_args(JsonlPredictionWriter, "predictions")
        parser.add_argument(
            "--inputs",
            type=list[str] | None,
            default=None,
            help="predict only: audio files or folders to predict on instead of the datamodule's predict split",
        )

    def after_instantiate_classes(self) -> None:
        inputs = self._get(self.config, "inputs") if self.subcommand else self.config.get("inputs")
        if inputs:
            if self.subcommand != "predict":
                raise ValueError("--inputs applies to 'ldrop predict' only")
            self.datamodule.predict_on_files(inputs)

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
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            # Checkpoints are written to a temporary file and renamed: a crash never truncates one.
            config = {**config, "plugins": [*plugins, AtomicCheckpointIO()]}
        return super()._instantiate_trainer(config, callbacks)


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
            "description": "ldrop: input-conditioned layer dropping for speech foundation models. Besides the "
            "Lightning subcommands below: 'ldrop compare RUN...' overlays budget sweeps, 'ldrop export CKPT DIR' "
            "writes a trained backbone as a save_pretrained folder, 'ldrop profile' measures a device cost model.",
        },
        args=args,
    )


def compare_main(argv: Sequence[str]) -> int:
    """``ldrop compare RUN_OR_CSV... [--out DIR] [--metric NAME] [--labels A,B,...]``."""
    from ldrop.sweeps import compare_sweeps

    parser = argparse.ArgumentParser(
        prog="ldrop compare",
        description="Overlay budget sweeps (run directories, budget_sweep.csv or .json files) in one plot "
        "and one Markdown table.",
    )
    parser.add_argument("runs", nargs="+", help="run directories or sweep files")
    parser.add_argument("--out", default="compare", help="output folder for compare.png and compare.md")
    parser.add_argument("--metric", default=None, help="metric column (default: the sweeps' first metric)")
    parser.add_argument("--labels", default=None, help="comma-separated labels, one per run")
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
    parser = argparse.ArgumentParser(
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
    """Entry point of the ``ldrop`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "compare":
        return compare_main(args[1:])
    if args and args[0] == "export":
        return export_main(args[1:])
    if args and args[0] == "profile":
        from ldrop.runtime.profile import profile_main

        return profile_main(args[1:])
    run_lightning(None if argv is None else args)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
