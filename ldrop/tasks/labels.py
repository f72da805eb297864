"""The output labels a task takes from its datamodule (class names, CTC characters), for any CLI that links
them, as ``ldrop fit`` does."""

from __future__ import annotations

from typing import Any

from ldrop.tasks.ctc import build_vocabulary


def model_labels(datamodule: Any) -> list[str] | None:
    """The output labels a task needs from its datamodule.

    Classification: the class names in id order. CTC: the characters: the datamodule's ``alphabet`` (English
    letters for LibriSpeech and TED-LIUM, the generated sets' own), else every character of the training
    transcripts. Any other target kind (``"regression"``, tensors): ``None``, there are no labels.

    A downstream ``LightningCLI`` links them as ``ldrop fit`` does, for a task that takes ``labels``::

        parser.link_arguments("data", "model.init_args.labels", compute_fn=model_labels, apply_on="instantiate")
    """
    if datamodule.task == "classification":
        return list(datamodule.class_names)
    if datamodule.task != "ctc":
        return None
    alphabet = getattr(datamodule, "alphabet", None)
    if alphabet:
        return sorted(set(alphabet) | {" "})
    return build_vocabulary(datamodule.transcripts("train"))

