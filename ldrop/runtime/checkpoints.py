"""Load a trained ldrop model in plain Python: from a ``.ckpt`` (``ldrop fit``) or an exported folder
(``ldrop export``)."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import tempfile
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ldrop._io import CheckpointError, exception_chain, load_checkpoint_file
from ldrop.backbones import backbone_problem
from ldrop.tasks import LayerDropTask
from ldrop.tasks.calibration import has_validation_split, validation_limit
from ldrop.tasks.checkpointing import BACKBONE_FILES_KEY, EXPORT_STATE_FILE
from ldrop.tasks.uncalibrated import (  # noqa: F401 - the warning and its check, ldrop.runtime's names
    UncalibratedSelectorWarning,
    warn_if_uncalibrated,
    warn_when_used_uncalibrated,
)

log = logging.getLogger(__name__)

#: Hyper-parameters that only describe how a model was built or trained, not what it is.
_BUILD_ONLY = ("_class_path", "_instantiator", "init_from", "backbone_overrides")


def import_failure(module: str, err: ImportError) -> str:
    """Why ``module`` did not import, with what to do: ``"No module named 'mypkg' (put the folder that holds
    mypkg on PYTHONPATH)"``, or the error inside the module (a dependency of its own)."""
    missing = getattr(err, "name", None) or ""
    if missing and (module + ".").startswith(missing + "."):
        return f"{err} (put the folder that holds {missing.split('.')[0]} on PYTHONPATH)"
    return f"importing {module} failed: {err}"


def _task_class(class_path: str) -> type[LayerDropTask]:
    """The task class a checkpoint names; :class:`CheckpointError` (one line) if it cannot be imported."""
    module, _, name = class_path.rpartition(".")
    if not module:
        module = "ldrop.tasks"
    try:
        cls = getattr(importlib.import_module(module), name, None)
    except ImportError as err:
        raise CheckpointError(f"its task class {class_path} cannot be imported: {import_failure(module, err)}") from err
    if cls is None and module == "__main__":
        raise CheckpointError(f"its task class {name} was defined in a script (__main__), which other programs "
                              "cannot import: define it in a module and train again, or load the checkpoint with "
                              f"{name}.load_from_checkpoint in that script")
    if not (isinstance(cls, type) and issubclass(cls, LayerDropTask)):
        raise CheckpointError(f"{class_path!r} is not an ldrop task class")
    return cls


def load_task_checkpoint(path: str | os.PathLike) -> LayerDropTask:
    """Load any ldrop task from a ``ldrop fit`` checkpoint (the task class is recorded in it).

    The backbone's weights come from the checkpoint, not from the folder or hub id it was trained from; where that
    is not here (another machine), its config comes from the checkpoint too (a warning says so).
    ``FileNotFoundError`` without a file; :class:`CheckpointError` (one line) for a damaged file or one that
    does not fit its task class.
    """
    path = str(path)
    # memory-mapped: only the entries are read here, the tensors once, by load_from_checkpoint
    checkpoint = load_checkpoint_file(path, mmap=True)
    class_path = checkpoint.get("ldrop_task_class") if isinstance(checkpoint, dict) else None
    if not class_path:
        raise CheckpointError(f"{path!r} was not written by an ldrop task (no 'ldrop_task_class' entry)")
    try:
        cls = _task_class(class_path)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from err
    hparams, files = checkpoint.get(cls.CHECKPOINT_HYPER_PARAMS_KEY) or {}, checkpoint.get(BACKBONE_FILES_KEY)
    # not pretrained, no init_from: every weight comes from the checkpoint, not the hub (a download) or the file an
    # earlier stage left (which another machine lacks)
    kept, overrides = ({k: hparams[k] for k in ("pretrained", "backbone", "init_from") if k in hparams},
                       loadable_budget(hparams, path))
    if hparams.get("init_from"):
        overrides["init_from"] = None
    del checkpoint
    with contextlib.ExitStack() as stack:
        backbone = backbone_here(hparams.get("backbone"), path, lambda: files, stack)
        if backbone != hparams.get("backbone"):
            overrides["backbone"] = backbone
        task = _load_from_checkpoint(cls, path, pretrained=False, **overrides)
    task.hparams.update({k: v for k, v in kept.items() if k in task.hparams})  # what training used, for a re-save
    return task


@contextlib.contextmanager
def stored_backbone(files: Mapping[str, str]) -> Iterator[str]:
    """A temporary folder holding the backbone files a checkpoint stores (``config.json``,
    ``preprocessor_config.json``): a backbone to build, randomly initialised, before the checkpoint's weights."""
    with tempfile.TemporaryDirectory(prefix="ldrop-backbone-") as folder:
        for name, text in files.items():
            Path(folder, name).write_text(text, encoding="utf-8")
        yield folder


def backbone_here(backbone: Any, path: str, files: Callable[[], Mapping[str, str] | None],
                  stack: contextlib.ExitStack) -> Any:
    """``backbone`` (a folder or hub id), or where it is not here (a model moved to another machine), a folder
    with the backbone files the checkpoint ``path`` stores (``files()`` reads them), which lives as long as
    ``stack`` (a warning says so). A checkpoint without them keeps ``backbone``: loading it names what is missing."""
    problem = backbone_problem(backbone) if isinstance(backbone, str) else None
    stored = files() if problem else None
    if not stored:
        return backbone
    log.warning("%s; the backbone is built from the config %s holds", problem, path)
    return stack.enter_context(stored_backbone(stored))


def weights_from_checkpoint(init_args: Any, path: str, stack: contextlib.ExitStack) -> dict[str, Any]:
    """Set a task's arguments (``init_args``, as a config gives them) for a model whose weights all come from the
    checkpoint ``path``: no pretrained weights to read (a download on a new machine), no ``init_from``, and, where
    the backbone's folder or hub id is not here, the backbone config the checkpoint holds (a warning says so; the
    folder lives as long as ``stack``). Returns the arguments as given, to record what the model was built from."""
    given = {key: init_args[key] for key in ("pretrained", "init_from", "backbone") if key in init_args}
    if "pretrained" not in given:  # a task of its own, without ldrop's backbone arguments
        return {}
    init_args["pretrained"] = False
    if given.get("init_from"):
        init_args["init_from"] = None
    if "backbone" in given:
        init_args["backbone"] = backbone_here(
            given["backbone"], path, lambda: load_checkpoint_file(path, mmap=True).get(BACKBONE_FILES_KEY), stack)
    return given


def _load_from_checkpoint(cls: type[LayerDropTask], path: str, **overrides: Any) -> LayerDropTask:
    try:
        return cls.load_from_checkpoint(path, map_location="cpu", **overrides)
    except CheckpointError as err:
        if repr(path) in str(err):  # it names the file already
            raise
        raise CheckpointError(f"{path}: {err}") from err
    except TypeError as err:  # hyper-parameters the class does not take (e.g. a renamed argument)
        raise CheckpointError(f"{path}: the hyper-parameters it stores do not fit {cls.__name__}: {err}") from err
    except Exception as err:  # a backbone not found (FileNotFoundError), maybe wrapped by Lightning's jsonargparse
        cause = next((e for e in exception_chain(err) if isinstance(e, FileNotFoundError)), None)
        if cause is None:
            raise
        raise CheckpointError(f"{path}: {cause}") from err


def loadable_budget(hparams: Mapping[str, Any], source: str | os.PathLike) -> dict[str, Any]:
    """``{"predict_budget": <the target without its profile>}`` when the device profile that ``hparams``' target
    names is not here (the model was moved): a warning says so, and a time target measures a quick profile."""
    budget = hparams.get("predict_budget")
    if not isinstance(budget, Mapping) or not budget.get("profile") or Path(str(budget["profile"])).is_file():
        return {}
    target = {k: v for k, v in budget.items() if k != "profile"}
    log.warning("%s: its predict_budget's device profile %s is not here: the target %s is kept without it (measure "
                "one here with 'ldrop profile')", source, budget["profile"], target)
    return {"predict_budget": target}


def refuse_onnx_export(path: str | os.PathLike, instead: str) -> None:
    """``FileNotFoundError`` if ``path`` is an ONNX export folder (PyTorch cannot load one): ``instead`` says what
    to do."""
    from ldrop.runtime.onnx_runtime import MANIFEST

    if (Path(path) / MANIFEST).is_file():
        raise FileNotFoundError(f"{str(path)!r} is an ONNX export ({MANIFEST}): {instead}")


def load_exported(directory: str | os.PathLike) -> LayerDropTask:
    """Rebuild a task from an ``ldrop export`` folder (``save_pretrained`` backbone + ``ldrop_task_state.pt``)."""
    directory = Path(directory)
    refuse_onnx_export(directory, "run it with OnnxAdaptiveModel, or load the .ckpt it was exported from")
    state_file = directory / EXPORT_STATE_FILE
    if not (directory / "config.json").is_file() or not state_file.is_file():
        raise FileNotFoundError(
            f"{str(directory)!r} is not an exported ldrop model: expected config.json and {EXPORT_STATE_FILE} "
            "(written by 'ldrop export CHECKPOINT DIR')"
        )
    payload = load_checkpoint_file(state_file, what="exported task state")
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise CheckpointError(f"{str(state_file)!r} is not an ldrop export's task state (no 'state_dict' entry)")
    class_path = payload.get("task_class")
    if not class_path:
        raise CheckpointError(f"{str(state_file)!r} does not say its task class (no 'task_class' entry): "
                              "export the checkpoint again with 'ldrop export'")
    hparams = {k: v for k, v in payload.get("hparams", {}).items() if k not in _BUILD_ONLY}
    # The folder's config.json already holds any overrides; its weights come from the state dict below.
    hparams.update(backbone=str(directory), pretrained=False, **loadable_budget(hparams, state_file))
    try:
        cls = _task_class(class_path)
    except CheckpointError as err:
        raise CheckpointError(f"{state_file}: {err}") from err
    model = cls(**hparams)
    try:
        model.load_state_dict(payload["state_dict"])
    except CheckpointError as err:
        raise CheckpointError(f"{state_file}: {err}") from err
    return model


def run_config(checkpoint: str | os.PathLike) -> Path:
    """Where ``ldrop fit`` wrote the run's ``config.yaml`` for ``checkpoint`` (``<run>/checkpoints/x.ckpt``)."""
    return Path(checkpoint).resolve().parent.parent / "config.yaml"


def read_config_file(config: str | os.PathLike, sections: bool = True) -> Any:
    """The sections of a YAML config file (``{}`` for an empty one); ``ValueError`` (one line naming the file, and
    the line and column of a YAML error) for a file that is not UTF-8 text, not YAML, or (``sections``) not a
    mapping; ``sections=False``: whatever YAML value the file holds."""
    import yaml

    try:
        text = Path(config).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{config}: not a YAML config file: not UTF-8 text (byte {err.object[err.start]:#04x} at "
                         f"offset {err.start})") from err
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"{config}: not valid YAML{where}: {getattr(err, 'problem', None) or err}") from err
    if not sections:
        return value
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"{config}: expected a YAML mapping of sections (trainer:, model:, data:, ...), not a "
                         f"{type(value).__name__}")
    return value or {}


def config_datamodule(config: str | os.PathLike) -> Any:
    """The DataModule of a run's config file (its ``data:`` section, e.g. the ``config.yaml`` that ``ldrop fit``
    writes into the run folder), not set up; ``ValueError`` (one line naming the file) if it has none."""
    import lightning as L
    from jsonargparse import ArgumentError, ArgumentParser

    import ldrop.data  # noqa: F401 - short class names (SyntheticClassificationDataModule) resolve among these

    section = read_config_file(config).get("data")
    if not section:
        raise ValueError(f"{config}: no 'data' section to build the run's datamodule from")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--data", type=L.LightningDataModule)
    try:
        return parser.instantiate_classes(parser.parse_object({"data": section})).data
    except ArgumentError as err:
        raise ValueError(f"{config}: its 'data' section does not build a datamodule: "
                         f"{str(err).strip().splitlines()[-1]}") from err


def _overlaid(saved: Any, given: Any) -> Any:
    """``saved`` with what ``given`` sets over it (nested dicts merged); a ``class_path`` keeps ``saved``'s
    spelling when both name the same class (``ldrop.selectors.X`` is ``ldrop.selectors.module.X``)."""
    if not (isinstance(saved, Mapping) and isinstance(given, Mapping)):
        return given
    merged = dict(saved)
    for key, value in given.items():
        same_class = key == "class_path" and str(value).rsplit(".", 1)[-1] == str(saved.get(key)).rsplit(".", 1)[-1]
        merged[key] = saved[key] if same_class else _overlaid(saved.get(key), value)
    return merged


def check_config_fits(model: LayerDropTask, config: str | os.PathLike, datamodule: Any) -> None:
    """:class:`CheckpointError` (one line, as ``ldrop test`` and ``predict`` give it) if a run config describes
    another model than ``model``'s checkpoint: the options of its ``model:`` section, and the labels its datamodule
    gives, that differ from those the checkpoint was trained with."""
    from ldrop.tasks import model_labels
    from ldrop.tasks.checkpointing import hparams_difference

    saved = {k: v for k, v in dict(model.hparams).items() if k not in _BUILD_ONLY}
    section = read_config_file(config).get("model")
    given = dict(section.get("init_args") or {}) if isinstance(section, Mapping) else {}
    if "labels" in saved:
        given["labels"] = model_labels(datamodule)
    options = hparams_difference(saved, _overlaid(saved, {k: v for k, v in given.items() if k in saved}))
    if options:
        raise CheckpointError(f"the checkpoint's weights do not fit the model of {config}: options that differ: "
                              f"{options}; use the configuration the checkpoint was trained with")


def fit_on_run_validation_data(model: LayerDropTask, config: str | os.PathLike,
                               say: Any = print) -> bool:
    """Fit what ``model`` fits on validation data before ``ldrop test`` and ``ldrop predict`` (a selector's
    fallback and thresholds, early-exit thresholds) on the validation split of the run's datamodule, built from
    ``config``, so that an export makes the decisions that ``ldrop predict`` makes; returns whether it fitted."""
    depth = model.depth
    if depth.calibrated_for(range(1, model.num_layers + 1)):  # fitted already, or nothing to fit
        return False
    datamodule = config_datamodule(config)
    check_config_fits(model, config, datamodule)
    if not has_validation_split(datamodule):
        raise ValueError(f"{config}: its datamodule has no validation split to fit {depth} on")
    datamodule.setup("validate")
    loader = datamodule.val_dataloader()
    # as many batches as 'ldrop test' and 'ldrop predict' with this config take: its trainer's limit_val_batches
    trainer = read_config_file(config).get("trainer")
    limit = trainer.get("limit_val_batches") if isinstance(trainer, Mapping) else None
    count, described = validation_limit(types.SimpleNamespace(limit_val_batches=limit), loader)
    if count == 0:
        raise ValueError(f"{config}: its trainer.limit_val_batches is 0, which leaves no validation batch to fit "
                         f"{depth} on: give --no-fit to export its unfitted decisions")
    say(f"fitting {depth} on the validation split of {type(datamodule).__name__} ({config})"
        f"{f' [{described}]' if described else ''}, as 'ldrop test' and 'ldrop predict' do")
    model.calibrate_on_dataloader(loader, max_batches=count)
    return True


def load_model(path: str | os.PathLike) -> LayerDropTask:
    """A trained ldrop model in eval mode, from a ``.ckpt`` file or an exported folder.

    ``logits, keep_mask = model(waveforms, lengths, budget)``. A selector that needs fitting on validation
    data and was not fitted warns once (:class:`UncalibratedSelectorWarning`) at its first call below full
    depth. Raises ``FileNotFoundError`` or :class:`CheckpointError`.
    """
    path = Path(path)
    if path.is_dir():
        model = load_exported(path)
    elif path.is_file():
        model = load_task_checkpoint(path)
    else:
        raise FileNotFoundError(
            f"no model at {str(path)!r}: give a .ckpt written by 'ldrop fit' or a folder written by 'ldrop export'"
        )
    # a loaded model is a trained one: warn (once) if it runs a budget before its selector is fitted (a .ckpt's
    # load_from_checkpoint armed it already, as for any task loaded that way)
    warn_when_used_uncalibrated(model)
    return model.eval()
