"""Data modules: audio in, padded :class:`AudioBatch` out, from length-grouped, DDP-aware samplers. They know
no model."""

from ldrop.data.audio import (
    AudioFileNotFoundError,
    AudioInfo,
    AudioReadError,
    audio_info,
    check_audio,
    read_audio,
    resample,
)
from ldrop.data.base import AudioDataModule, DatasetLayoutError, Split, Task
from ldrop.data.batch import AudioBatch, AudioExample, SkippedExample, collate_audio, collate_targets
from ldrop.data.datasets import AudioDataset, AudioFileDataset, AudioItem, SubsetAudioDataset, resolve_items
from ldrop.data.esc50 import ESC10_TARGETS, ESC50_CLASSES, ESC50_FOLDS, ESC50DataModule, summarize_folds
from ldrop.data.librispeech import LIBRISPEECH_SUBSETS, LibriSpeechDataModule
from ldrop.data.manifest import ManifestDataModule, read_manifest
from ldrop.data.samplers import DynamicBatchSampler, LengthGroupedSampler, ResumableDataLoader
from ldrop.data.speechcommands import KEYWORDS_12, SPEECH_COMMANDS_WORDS, SpeechCommandsDataModule
from ldrop.data.synthetic import (
    SyntheticClassificationDataModule,
    SyntheticClassificationDataset,
    SyntheticCTCDataModule,
    SyntheticCTCDataset,
    SyntheticMixedClassificationDataModule,
    SyntheticMixedClassificationDataset,
)
from ldrop.data.tedlium import TedliumDataModule, read_stm
from ldrop.data.text import normalize_tedlium_transcript

__all__ = [
    "AudioBatch", "AudioDataModule", "AudioDataset", "AudioExample", "AudioFileDataset",
    "AudioFileNotFoundError", "AudioInfo", "AudioItem", "AudioReadError", "DatasetLayoutError",
    "DynamicBatchSampler", "ESC10_TARGETS", "ESC50_CLASSES", "ESC50_FOLDS", "ESC50DataModule", "KEYWORDS_12",
    "LIBRISPEECH_SUBSETS", "LengthGroupedSampler", "LibriSpeechDataModule", "ManifestDataModule",
    "ResumableDataLoader", "SPEECH_COMMANDS_WORDS", "SkippedExample", "SpeechCommandsDataModule", "Split",
    "SubsetAudioDataset", "SyntheticCTCDataModule", "SyntheticCTCDataset",
    "SyntheticClassificationDataModule", "SyntheticClassificationDataset",
    "SyntheticMixedClassificationDataModule", "SyntheticMixedClassificationDataset", "Task",
    "TedliumDataModule", "audio_info", "check_audio", "collate_audio", "collate_targets",
    "normalize_tedlium_transcript", "read_audio", "read_manifest", "read_stm", "resample", "resolve_items",
    "summarize_folds",
]
