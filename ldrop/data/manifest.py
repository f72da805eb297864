"""Users' own corpora, listed in CSV/TSV or JSON-lines manifests (one per split)."""

from __future__ import annotations

import csv
import json
import os
from typing import Any, Literal

from ldrop.data.base import AudioDataModule, Split, Task, layout_error
from ldrop.data.datasets import AudioItem

__all__ = ["ManifestDataModule", "read_manifest"]

MANIFEST_LAYOUT = """\
A .csv/.tsv file with a header row, or a .jsonl file with one JSON object per line, with the fields
  path      audio file, absolute or relative to the manifest's folder        (required)
  label     class name (task=classification)                                (required for classification)
  text      transcript (task=ctc)                                           (required for ctc)
  offset    start in seconds                                                (optional, default 0)
  duration  length in seconds                                               (optional, default: to the end)
  id        item id                                                         (optional, default: path[@offset])"""


def read_manifest(path: str, task: Task) -> list[dict[str, Any]]:
    """Read a ``.csv``/``.tsv``/``.jsonl`` manifest into records ``path`` (resolved), ``target``, ``offset``,
    ``duration``, ``id``.

    ``task="classification"`` reads the ``label`` field, ``"ctc"`` the ``text`` field. Raises
    ``DatasetLayoutError`` (missing manifest or column) or ``ValueError`` (a malformed row, naming the line).
    """
    if not os.path.isfile(path):
        raise layout_error("manifest", path, MANIFEST_LAYOUT)
    target_key = "label" if task == "classification" else "text"
    base = os.path.dirname(os.path.abspath(path))
    ext = os.path.splitext(path)[1].lower()
    with open(path, encoding="utf-8", newline="") as f:
        if ext in (".jsonl", ".json", ".ndjson"):
            rows = []
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{line_no}: not a JSON object ({err})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{line_no}: not a JSON object")
                rows.append((line_no, row))
        elif ext in (".csv", ".tsv"):
            reader = csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ",")
            missing = {"path", target_key} - set(reader.fieldnames or ())
            if missing:
                raise layout_error(f"column(s) {sorted(missing)} in manifest {path}", path, MANIFEST_LAYOUT)
            rows = list(enumerate(reader, start=2))
        else:
            raise ValueError(f"manifest {path}: unknown extension {ext!r} (use .csv, .tsv or .jsonl)")
    records = []
    for line_no, row in rows:
        where = f"{path}:{line_no}"
        if not row.get("path") or row.get(target_key) is None:
            raise ValueError(f"{where}: needs a 'path' and a '{target_key}' field\n{MANIFEST_LAYOUT}")
        audio = os.path.expanduser(str(row["path"]))
        offset = _seconds(row.get("offset"), where, "offset") or 0.0
        duration = _seconds(row.get("duration"), where, "duration")
        if duration is not None and duration <= 0:
            raise ValueError(f"{where}: duration must be positive, got {duration}")
        item_id = row.get("id") or (str(row["path"]) + (f"@{offset:g}" if offset else ""))
        records.append(
            {
                "path": audio if os.path.isabs(audio) else os.path.join(base, audio),
                "target": str(row[target_key]).strip(), "offset": offset, "duration": duration,
                "id": str(item_id), "where": where,
            }
        )
    return records


def _seconds(value: Any, where: str, name: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {name} must be a number of seconds, got {value!r}") from None
    if seconds < 0:
        raise ValueError(f"{where}: {name} must be >= 0, got {seconds}")
    return seconds


class ManifestDataModule(AudioDataModule):
    """Classification or CTC on your own audio, listed in one manifest per split.

    A manifest is a ``.csv``/``.tsv`` with a header or a ``.jsonl`` file with the fields ``path`` (absolute,
    or relative to the manifest's folder), ``label`` (classification) or ``text`` (CTC), and optionally
    ``offset`` and ``duration`` in seconds (only that segment is decoded) and ``id``. The classes are
    ``class_names`` when given, else the sorted distinct training labels (numerically when all are integers);
    a label outside them is an error.

    Args:
        train_manifest: manifest of the training split.
        val_manifest: manifest of the validation split (``None``: no validation loop).
        test_manifest: manifest of the test split.
        predict_manifest: manifest of the predict split; ``None`` = the test manifest.
        task: ``"classification"`` or ``"ctc"``.
        class_names: the classes, in id order (classification).
        root: folder that relative manifest paths (the manifest files, not the audio) are relative to.
        **kwargs: the common arguments of :class:`~ldrop.data.base.AudioDataModule` (``batch_size``,
            ``max_batch_seconds``, ``max_train_seconds``, ``long_clip_policy``, ``skip_bad_files``, ``seed``,
            ...).
    """

    def __init__(
        self, train_manifest: str | None = None, val_manifest: str | None = None,
        test_manifest: str | None = None, predict_manifest: str | None = None,
        task: Literal["classification", "ctc"] = "classification",
        class_names: list[str] | None = None, root: str | None = None, **kwargs,
    ) -> None:
        if task not in ("classification", "ctc"):
            raise ValueError(f"task must be 'classification' or 'ctc', got {task!r}")
        self.task = task  # set before the base resolves and checks the clip policy against it
        super().__init__(root=root, **kwargs)
        if class_names is not None:
            if task != "classification":
                raise ValueError("class_names only applies to task='classification'")
            class_names = [str(c) for c in class_names]
            if len(set(class_names)) != len(class_names) or not class_names:
                raise ValueError(f"class_names must be distinct and non-empty, got {class_names}")
        self._class_names = class_names
        predict = predict_manifest if predict_manifest is not None else test_manifest
        given = {"train": train_manifest, "val": val_manifest, "test": test_manifest, "predict": predict}
        self.manifests: dict[str, str | None] = {split: self._resolve(m) for split, m in given.items()}
        if not any(self.manifests.values()):
            raise ValueError("give at least one manifest (train_manifest, val_manifest, test_manifest, ...)")

    def _resolve(self, manifest: str | None) -> str | None:
        if manifest is None:
            return None
        manifest = os.path.expanduser(manifest)
        return manifest if os.path.isabs(manifest) or self.root is None else os.path.join(self.root, manifest)

    @property
    def class_names(self) -> list[str]:
        """The classes in id order (classification); read from the training manifest if not given."""
        if self.task != "classification":
            raise AttributeError("class_names only exists for task='classification'")
        if self._class_names is None:
            train = self.manifests["train"]
            if train is None:
                raise ValueError(
                    "without a train_manifest, pass class_names (in the order the model was trained on)"
                )
            labels = {r["target"] for r in read_manifest(train, "classification")}
            if not labels:
                raise ValueError(f"the training manifest {train} has no rows")
            numeric = all(_is_int(label) for label in labels)
            self._class_names = sorted(labels, key=int) if numeric else sorted(labels)
        return self._class_names

    def list_items(self, split: Split) -> list[AudioItem]:
        manifest = self.manifests[split]
        if manifest is None:
            raise ValueError(f"ManifestDataModule has no manifest for split '{split}'")
        records = read_manifest(manifest, self.task)
        if self.task == "classification":
            index = {name: i for i, name in enumerate(self.class_names)}
            for r in records:
                if r["target"] not in index:
                    raise ValueError(
                        f"{r['where']}: label {r['target']!r} is not in the class list {self.class_names}"
                    )
                r["target"] = index[r["target"]]
        return [AudioItem(r["id"], r["path"], r["target"], r["offset"], r["duration"]) for r in records]

    def has_split(self, split: Split) -> bool:
        return self.manifests[split] is not None

    def val_dataloader(self):
        # No validation manifest: an empty list tells Lightning to skip the validation loop.
        return [] if self.manifests["val"] is None else super().val_dataloader()


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
