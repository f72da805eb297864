"""The output labels a task takes from its datamodule (class names, CTC characters), for any CLI that links
them, as ``ldrop fit`` does."""

from __future__ import annotations

from typing import Any

from ldrop.tasks.ctc import ENGLISH_CHARACTERS, build_vocabulary


def model_labels(datamodule: Any) -> list[str] | None:
    """The output labels a task needs from its datamodule.

    Classification: the class names in id order. CTC: the characters: the datamodule's ``alphabet`` (the
    generated sets), English letters for LibriSpeech and TED-LIUM, else every character of the training
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
    # Only here does the task package meet the data package (on first use): the two English corpora
    # normalise their transcripts to lower-case letters, apostrophe and space.
    from ldrop.data import LibriSpeechDataModule, TedliumDataModule

    if isinstance(datamodule, LibriSpeechDataModule | TedliumDataModule):
        return list(ENGLISH_CHARACTERS)
    return build_vocabulary(datamodule.transcripts("train"))

