"""One interface over the Hugging Face speech encoders: front end, one encoder layer at a time, final norm.

The adapter calls the model's own sub-modules in the order its ``forward`` does (running every layer
reproduces ``last_hidden_state``) and adds running *one* layer on *any* sub-batch, for the gated engine.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    Data2VecAudioConfig,
    Data2VecAudioModel,
    HubertConfig,
    HubertModel,
    PretrainedConfig,
    PreTrainedModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
    WavLMConfig,
    WavLMModel,
)
from transformers.masking_utils import create_bidirectional_mask

from ldrop._io import usual_permissions
from ldrop.backbones import geometry

log = logging.getLogger(__name__)

# WavLM hands F.multi_head_attention_forward a bool padding mask next to its float position bias; torch
# merges them correctly but warns on every call.
warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask and attn_mask")

Family = Literal["wavlm", "hubert", "wav2vec2", "data2vec"]

#: Family name -> (config class, model class, the ``model_type`` string of its configs).
FAMILIES: dict[str, tuple[type[PretrainedConfig], type[PreTrainedModel], str]] = {
    "wavlm": (WavLMConfig, WavLMModel, "wavlm"), "hubert": (HubertConfig, HubertModel, "hubert"),
    "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model, "wav2vec2"),
    "data2vec": (Data2VecAudioConfig, Data2VecAudioModel, "data2vec-audio"),
}
_MODEL_TYPE_TO_FAMILY = {model_type: name for name, (_, _, model_type) in FAMILIES.items()}
#: Family name -> the :class:`SpeechBackbone` subclass that drives it (families not listed use the base class).
_ADAPTERS: dict[str, type[SpeechBackbone]] = {}


def register_family(
    name: str, config_class: type[PretrainedConfig], model_class: type[PreTrainedModel], model_type: str,
    adapter_class: type[SpeechBackbone] | None = None,
) -> None:
    """Make another Hugging Face speech encoder family loadable (``from_pretrained``, ``tiny_config``).

    The family must have the wav2vec 2.0 layout; one whose layers need more context (WavLM's position bias)
    passes an ``adapter_class`` overriding ``prepare_layers`` and ``run_layer``.
    """
    if adapter_class is not None and not (isinstance(adapter_class, type) and issubclass(adapter_class, SpeechBackbone)):
        raise TypeError(f"adapter_class must be a SpeechBackbone subclass, got {adapter_class!r}")
    FAMILIES[name] = (config_class, model_class, model_type)
    _MODEL_TYPE_TO_FAMILY[model_type] = name
    if adapter_class is not None:
        _ADAPTERS[name] = adapter_class
    else:
        _ADAPTERS.pop(name, None)


def adapter_class_for(family: str) -> type[SpeechBackbone]:
    """The :class:`SpeechBackbone` (sub)class registered for ``family`` (the base class by default)."""
    return _ADAPTERS.get(family, SpeechBackbone)


def family_of(config: PretrainedConfig) -> str:
    """The ldrop family name of a Hugging Face config; ``ValueError`` for an unsupported ``model_type``."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _MODEL_TYPE_TO_FAMILY:
        raise ValueError(
            f"unsupported backbone model_type {model_type!r}; ldrop knows {sorted(_MODEL_TYPE_TO_FAMILY)} (another "
            "family: ldrop.backbones.register_family, called in a module the run imports, such as your task's)"
        )
    return _MODEL_TYPE_TO_FAMILY[model_type]


def _is_local_reference(name_or_path: str | os.PathLike) -> bool:
    """Whether ``name_or_path`` names a local folder rather than a hub id (``"org/name"`` or ``"name"``)."""
    text = str(name_or_path)
    if Path(text).expanduser().exists() or text.startswith((".", "/", "~")) or text.endswith(("/", os.sep)):
        return True
    # A hub id has at most one "/"; anything deeper (or with a Windows separator) can only be a path.
    return text.count("/") > 1 or (os.sep != "/" and os.sep in text)


def resolve_checkpoint(name_or_path: str | os.PathLike) -> str:
    """``name_or_path`` ready for ``from_pretrained``: a checked local folder (``~`` expanded) or a hub id.

    Raises ``FileNotFoundError`` for a local-looking path that does not exist or has no ``config.json``.
    """
    if not _is_local_reference(name_or_path):
        return str(name_or_path)
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"backbone checkpoint folder {str(name_or_path)!r} does not exist (resolved to {str(path.absolute())!r}); "
            "give a folder written by save_pretrained / ldrop export, or a Hugging Face hub id such as "
            "'microsoft/wavlm-base-plus'"
        )
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"backbone directory {str(path)!r} has no config.json; expected a folder written by "
            "save_pretrained (config.json + model.safetensors) or a Hugging Face hub id"
        )
    return str(path)


def _hub_reachable(endpoint: str, timeout: float = 5.0) -> bool:
    """Whether the hub's host answers at all (a machine offline fails at once, in its name lookup); behind a
    proxy (``HTTPS_PROXY``, ...) only a download can tell, so it is assumed to."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                                              "all_proxy")):
        return True
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname or "", url.port or (80 if url.scheme == "http" else 443)), timeout).close()
    except OSError:
        return False
    return True


def check_hub_id_readable(backbone: str) -> bool:
    """``FileNotFoundError`` (one line) at once for a hub id that is neither in the local Hugging Face cache nor
    downloadable (offline: ``HF_HUB_OFFLINE``, or the hub cannot be reached), rather than a minute of retries.

    Returns whether to read ``backbone`` from the cache alone (``local_files_only``): a cached hub id offline, for
    which Hugging Face would otherwise ask the hub, with retries, for each file the cache lacks.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    if _is_local_reference(backbone):  # a folder: resolve_checkpoint checks it
        return False
    try:
        cached = isinstance(try_to_load_from_cache(backbone, "config.json"), str)
    except ValueError:  # not a valid hub id: from_pretrained says so
        return False
    offline = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else (
        None if _hub_reachable(constants.ENDPOINT) else f"{constants.ENDPOINT} cannot be reached")
    if offline and not cached:
        raise FileNotFoundError(
            f"backbone {backbone!r}: no such local folder, and no such hub id in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}), the only place a hub id is read from offline ({offline}); give a folder "
            "written by save_pretrained / ldrop export, or download the model while online")
    return bool(offline)


def backbone_problem(backbone: str) -> FileNotFoundError | None:
    """Why ``backbone`` (a folder or hub id) cannot be read here, or ``None`` (``tiny:``/``random:`` always can)."""
    if backbone.startswith(("tiny:", "random:")):
        return None
    try:
        check_hub_id_readable(backbone)
        resolve_checkpoint(backbone)
    except FileNotFoundError as err:
        return err
    return None


def load_feature_extractor(name_or_path: str | os.PathLike,
                           local_files_only: bool = False) -> Wav2Vec2FeatureExtractor | None:
    """The checkpoint's ``preprocessor_config.json`` as a feature extractor, or ``None`` without one."""
    name = str(name_or_path)
    try:
        return Wav2Vec2FeatureExtractor.from_pretrained(name, local_files_only=local_files_only)
    except OSError as err:
        # Hugging Face's message (one for every reason) says neither whether the file is there nor why it was not read
        if _is_local_reference(name):
            absent = None if (Path(name).expanduser() / "preprocessor_config.json").is_file() else "the folder has none"
        else:
            from huggingface_hub import try_to_load_from_cache

            absent = None if isinstance(try_to_load_from_cache(name, "preprocessor_config.json"), str) else (
                "none in the local Hugging Face cache, the only place read offline" if local_files_only else
                "the hub has none, or it could not be downloaded")
        log.warning("no preprocessor_config.json for backbone %r (%s): waveforms are passed on unnormalised; set "
                    "normalize_waveforms to choose explicitly", name, absent or str(err).splitlines()[0])
        return None


def zero_mean_unit_var(waveforms: Tensor, lengths: Tensor, eps: float = 1e-7) -> Tensor:
    """Per-utterance zero mean and unit variance over the real samples; padding stays zero.

    The padding-aware ``Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm`` (same ``eps``).
    """
    real = torch.arange(waveforms.shape[1], device=waveforms.device)[None, :] < lengths[:, None]
    weights = real.to(waveforms.dtype)
    count = weights.sum(1, keepdim=True).clamp(min=1.0)
    mean = (waveforms * weights).sum(1, keepdim=True) / count
    var = (((waveforms - mean) * weights) ** 2).sum(1, keepdim=True) / count
    return ((waveforms - mean) / torch.sqrt(var + eps)) * weights


@dataclass
class LayerContext:
    """Batch-independent state shared by every encoder layer of one forward pass.

    ``position_bias`` (WavLM only, ``[heads, frames, frames]``) is computed once so that it exists even for
    samples that skip layer 0, and sliced to each sub-batch's length.
    """

    max_frames: int
    position_bias: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: whether any input of the batch is padded (``False``: its layers run without an attention mask)
    padded: bool = True


class SpeechBackbone(nn.Module):
    """Adapter over a pre-trained Hugging Face speech encoder (WavLM, HuBERT, wav2vec 2.0, Data2VecAudio).

    The forward is split into ``extract_features`` (CNN) -> ``frontend`` (projection, SpecAugment in training,
    positional convolution, pre-stack norm) -> ``run_layer(i)`` for the layers that run -> ``finalize``.

    Args:
        model: a ``WavLMModel``, ``HubertModel``, ``Wav2Vec2Model`` or ``Data2VecAudioModel``.
        freeze_feature_encoder: keep the CNN frozen (it then runs without autograd).
        apply_spec_augment: SpecAugment in training; ``None`` keeps the config's setting.
        feature_extractor: the checkpoint's input preprocessing (:func:`load_feature_extractor`), or ``None``.
        normalize_waveforms: zero mean, unit variance per waveform; ``None`` follows
            ``feature_extractor.do_normalize``.
        batch_independent: each waveform's output is what it gets alone, whatever padding its batch-mates
            bring: the CNN's first group norm (``feat_extract_norm: group``) normalises it over its own samples
            and Data2VecAudio's positional convolutions see zeros past its end; off: as Hugging Face batches.
    """

    def __init__(
        self, model: PreTrainedModel, freeze_feature_encoder: bool = True,
        apply_spec_augment: bool | None = None, feature_extractor: Wav2Vec2FeatureExtractor | None = None,
        normalize_waveforms: bool | None = None, batch_independent: bool = False,
    ) -> None:
        super().__init__()
        self.batch_independent = bool(batch_independent)
        self.family = family_of(model.config)
        required = adapter_class_for(self.family)
        if not isinstance(self, required):
            # The base class would run such a family's layers without the context they need (WavLM's
            # position bias): a wrong result, not an error, so refuse it here.
            raise TypeError(
                f"{self.family} models need {required.__name__} (or a subclass), not {type(self).__name__}; "
                "build them with SpeechBackbone.from_pretrained / from_config, which pick it"
            )
        # HF's own LayerDrop skips one layer for the whole batch, at random, in training only: ldrop decides
        # which layers run, so the model's own dropping is switched off.
        model.config.layerdrop = 0.0
        if apply_spec_augment is not None:
            model.config.apply_spec_augment = apply_spec_augment
        if getattr(model, "adapter", None) is not None:
            raise ValueError("backbones with add_adapter=True change the frame rate and are not supported")
        self.model = model
        self.freeze_feature_encoder = freeze_feature_encoder
        if freeze_feature_encoder:
            for p in self.model.feature_extractor.parameters():
                p.requires_grad_(False)
        self._mask_accepts_attention = (
            "attention_mask" in inspect.signature(self.model._mask_hidden_states).parameters
        )
        self.feature_extractor = feature_extractor
        if normalize_waveforms is None:
            normalize_waveforms = bool(feature_extractor is not None and feature_extractor.do_normalize)
        self.normalize_waveforms = bool(normalize_waveforms)
        if feature_extractor is not None and not feature_extractor.return_attention_mask:
            # Hugging Face passes such models (e.g. wav2vec2-base) no padding mask and normalises over the
            # padded array. ldrop always masks padding and normalises waveforms over real samples (and, with
            # batch_independent, the CNN's group norm too), so an utterance gets what HF gives it unbatched.
            log.warning(
                "this checkpoint's feature extractor has return_attention_mask=False (Hugging Face runs it "
                "without a padding mask); ldrop masks padding frames anyway, which matches Hugging Face on "
                "unpadded (single-utterance) input but not on zero-padded batches"
            )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, overrides: dict[str, Any] | None = None, **kwargs: Any
    ) -> SpeechBackbone:
        """Load a pre-trained encoder from a hub id or a local ``save_pretrained`` directory.

        Weights must load with no missing keys; unused keys (a CTC head) are ignored. Called on
        :class:`SpeechBackbone`, it returns the adapter registered for the family. ``overrides`` change config
        attributes before loading; ``**kwargs`` go to the adapter's constructor. Raises ``FileNotFoundError``
        (no such folder; a hub id offline that is not cached) or ``ValueError`` (unsupported model type, missing weights).
        """
        local_only = check_hub_id_readable(str(name_or_path))  # a hub id offline: cached, or FileNotFoundError
        name_or_path = resolve_checkpoint(name_or_path)
        config = AutoConfig.from_pretrained(name_or_path, local_files_only=local_only, **(overrides or {}))
        try:
            family = family_of(config)
        except ValueError as err:
            raise ValueError(f"backbone {str(name_or_path)!r}: {err}") from None
        model_cls = FAMILIES[family][1]
        # Hugging Face randomly initialises weights the checkpoint lacks and only reports them here.
        model, info = model_cls.from_pretrained(name_or_path, config=config, output_loading_info=True,
                                                local_files_only=local_only)
        if info.get("missing_keys"):
            raise ValueError(
                f"checkpoint {str(name_or_path)!r} lacks weights {sorted(info['missing_keys'])[:8]}... "
                f"for {model_cls.__name__}: they would be randomly initialised"
            )
        if info.get("unexpected_keys"):
            log.info("ignoring %d checkpoint keys not used by the encoder", len(info["unexpected_keys"]))
        model.train()
        kwargs.setdefault("feature_extractor", load_feature_extractor(name_or_path, local_only))
        return cls._adapter_for(family)(model, **kwargs)

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs: Any) -> SpeechBackbone:
        """A randomly initialised encoder from a Hugging Face config (the family's registered adapter)."""
        family = family_of(config)
        return cls._adapter_for(family)(FAMILIES[family][1](config), **kwargs)

    @classmethod
    def _adapter_for(cls, family: str) -> type[SpeechBackbone]:
        """The registered adapter of ``family`` when it refines ``cls``; ``cls`` itself otherwise."""
        registered = adapter_class_for(family)
        return registered if issubclass(registered, cls) else cls

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the encoder and its input preprocessing (``preprocessor_config.json``)."""
        with usual_permissions(Path(directory)):  # not owner-only weights (Hugging Face's), as other files
            self.model.save_pretrained(directory)
            self.input_processor().save_pretrained(directory)

    def input_processor(self) -> Wav2Vec2FeatureExtractor:
        """The input preprocessing in use (a 16 kHz default for models built from a config)."""
        if self.feature_extractor is None:
            return Wav2Vec2FeatureExtractor(do_normalize=self.normalize_waveforms, return_attention_mask=True)
        processor = Wav2Vec2FeatureExtractor.from_dict(self.feature_extractor.to_dict())
        processor.do_normalize = self.normalize_waveforms
        return processor

    @property
    def sample_rate(self) -> int:
        """The sample rate the backbone takes: its ``preprocessor_config.json``'s ``sampling_rate`` (16 kHz for a
        model built from a config)."""
        rate = getattr(self.feature_extractor, "sampling_rate", None)
        return int(rate) if isinstance(rate, int) else 16_000

    def prepare_waveforms(self, waveforms: Tensor, lengths: Tensor) -> Tensor:
        """The model's input: waveforms normalised over their real samples when the checkpoint asks."""
        if not self.normalize_waveforms:
            return waveforms
        return zero_mean_unit_var(waveforms.float(), lengths).to(waveforms.dtype)

    # ------------------------------------------------------------------ shape facts
    @property
    def config(self) -> PretrainedConfig:
        return self.model.config

    @property
    def num_layers(self) -> int:
        """Number of transformer encoder layers ``N``."""
        return len(self.model.encoder.layers)

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def feature_dim(self) -> int:
        """Channels of the CNN feature encoder's output (what the selector reads)."""
        return int(self.config.conv_dim[-1])

    @property
    def stable_layer_norm(self) -> bool:
        """True for the pre-norm ("large") layout with a LayerNorm after the stack."""
        return bool(getattr(self.config, "do_stable_layer_norm", False))

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.encoder.layers

    def frame_lengths(self, sample_lengths: Tensor) -> Tensor:
        """Frames the CNN produces for waveforms of ``sample_lengths`` samples, ``[batch]`` long."""
        return geometry.frame_lengths(self.config, sample_lengths.to(torch.long))

    @property
    def receptive_field(self) -> int:
        """Samples the CNN needs to produce one frame (400 at the usual 16 kHz configuration)."""
        return geometry.receptive_field(self.config)

    # ------------------------------------------------------------------ forward pieces
    def extract_features(self, waveforms: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Run the CNN on ``[batch, samples]`` waveforms (``lengths=None``: no padding).

        Returns ``features [batch, frames, feature_dim]`` and ``frame_mask [batch, frames]`` (True on real
        frames); ``ValueError`` for a waveform shorter than the receptive field.
        """
        if waveforms.dim() != 2:
            raise ValueError(f"waveforms must be [batch, samples], got shape {tuple(waveforms.shape)}")
        batch, samples = waveforms.shape
        if lengths is None:
            lengths = torch.full((batch,), samples, dtype=torch.long, device=waveforms.device)
        # not while exporting: a check on values is a data-dependent branch (the ONNX runtime checks lengths)
        host_lengths = None if torch.compiler.is_exporting() else lengths.tolist()  # one host sync
        if host_lengths and min(host_lengths) < self.receptive_field:
            raise ValueError(
                f"waveforms must have at least {self.receptive_field} samples (the CNN receptive field); "
                f"got a length of {min(host_lengths)}: zero-pad short clips to that many samples and give the "
                "padded length as theirs (ldrop predict does this itself)"
            )
        frozen = self.freeze_feature_encoder and not any(
            p.requires_grad for p in self.model.feature_extractor.parameters()
        )
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            features = self._cnn(waveforms, lengths, host_lengths).transpose(1, 2)
        frames = self.frame_lengths(lengths).clamp(max=features.shape[1])
        frame_mask = torch.arange(features.shape[1], device=features.device)[None, :] < frames[:, None]
        return features, frame_mask

    def _cnn(self, waveforms: Tensor, lengths: Tensor, host_lengths: list[int] | None) -> Tensor:
        """``[batch, channels, frames]``: the CNN, its first group norm over each row's own frames when
        :attr:`batch_independent` (``host_lengths``: the lengths read on the host, ``None`` while exporting)."""
        cnn = self.model.feature_extractor
        first = cnn.conv_layers[0]
        norm = getattr(first, "layer_norm", None)
        if not (self.batch_independent and isinstance(norm, nn.GroupNorm)):
            return cnn(waveforms)
        hidden = first.conv(waveforms[:, None])
        kernel, stride = self.config.conv_kernel[0], self.config.conv_stride[0]
        frames = (geometry.conv_output_length(lengths, kernel, stride) if host_lengths is None
                  else [(n - kernel) // stride + 1 for n in host_lengths])
        hidden = first.activation(_masked_group_norm(hidden, frames, norm))
        for layer in cnn.conv_layers[1:]:
            hidden = layer(hidden)
        return hidden

    def frontend(self, features: Tensor, frame_mask: Tensor) -> Tensor:
        """Projection, SpecAugment (training), positional convolution and pre-stack norm: layer 0's input."""
        projected = self.model.feature_projection(features)
        hidden = projected[0] if isinstance(projected, tuple) else projected
        masking = {"attention_mask": frame_mask} if self._mask_accepts_attention else {}
        hidden = self.model._mask_hidden_states(hidden, **masking)
        hidden = hidden.masked_fill(~frame_mask[..., None], 0.0)
        encoder = self.model.encoder
        hidden = hidden + self._positions(hidden, frame_mask)
        if not self.stable_layer_norm:
            hidden = encoder.layer_norm(hidden)
        return encoder.dropout(hidden)

    def _positions(self, hidden: Tensor, frame_mask: Tensor) -> Tensor:
        """The positional convolution; Data2VecAudio's stack of them with padding zeroed between layers when
        :attr:`batch_independent` (each layer would spread its bias into the padding, the next layer back)."""
        embed = self.model.encoder.pos_conv_embed
        if not (self.batch_independent and isinstance(getattr(embed, "layers", None), nn.ModuleList)):
            return embed(hidden)
        padding, out = ~frame_mask[:, None, :], hidden.transpose(1, 2)
        for layer in embed.layers:
            out = layer(out).masked_fill(padding, 0.0)
        return out.transpose(1, 2)

    def prepare_layers(self, frame_mask: Tensor) -> LayerContext:
        """Per-forward state every layer needs, computed once (a family adapter adds its own); reads on the
        host whether the batch is padded (an exported graph always takes the mask)."""
        padded = torch.compiler.is_exporting() or not bool(frame_mask.all())
        return LayerContext(max_frames=frame_mask.shape[1], padded=padded)

    def run_layer(self, index: int, hidden: Tensor, frame_mask: Tensor | None, context: LayerContext) -> Tensor:
        """Run encoder layer ``index`` on a ``[batch, frames, hidden]`` (sub-)batch. ``frame_mask`` is ``None``
        when none of its frames is padding: the caller knows, so no layer reads the mask on the host."""
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=frame_mask,
                                         allow_is_bidirectional_skip=frame_mask is None)
        out = self.layers[index](hidden, attention_mask=mask)
        return out[0] if isinstance(out, tuple) else out

    def finalize(self, hidden: Tensor) -> Tensor:
        """The post-stack LayerNorm of pre-norm (``do_stable_layer_norm``) models; identity otherwise."""
        if self.stable_layer_norm:
            return self.model.encoder.layer_norm(hidden)
        return hidden

    def forward(self, waveforms: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Full-depth pass: ``(hidden [batch, frames, hidden], frame_mask [batch, frames])``."""
        features, frame_mask = self.extract_features(waveforms, lengths)
        hidden = self.frontend(features, frame_mask)
        context = self.prepare_layers(frame_mask)
        for index in range(self.num_layers):
            hidden = self.run_layer(index, hidden, frame_mask if context.padded else None, context)
        return self.finalize(hidden), frame_mask


class WavLMBackbone(SpeechBackbone):
    """WavLM: every layer consumes the relative position bias that layer 0 owns."""

    def prepare_layers(self, frame_mask: Tensor) -> LayerContext:
        """The layer context with ``position_bias [heads, frames, frames]`` from layer 0's embedding."""
        context = super().prepare_layers(frame_mask)
        context.position_bias = self.layers[0].attention.compute_bias(context.max_frames, context.max_frames)
        return context

    def run_layer(self, index: int, hidden: Tensor, frame_mask: Tensor | None, context: LayerContext) -> Tensor:
        """Run WavLM layer ``index`` with the shared position bias (see :meth:`SpeechBackbone.run_layer`)."""
        layer = self.layers[index]
        batch, frames, _ = hidden.shape
        heads = layer.attention.num_heads
        bias = context.position_bias[:, :frames, :frames]
        bias = bias.unsqueeze(0).expand(batch, heads, frames, frames).reshape(batch * heads, frames, frames)
        # WavLM's attention takes the 2-D padding mask (it calls F.multi_head_attention_forward)
        return layer(hidden, attention_mask=frame_mask, position_bias=bias)[0]


register_family("wavlm", WavLMConfig, WavLMModel, "wavlm", WavLMBackbone)


def _masked_group_norm(x: Tensor, frames: Tensor | list[int], norm: nn.GroupNorm) -> Tensor:
    """``norm(x)`` for ``x [batch, channels, time]`` with each row's statistics over its first ``frames`` only: row
    by row from a host list, by masked sums from a tensor (an exported graph). In float32, as autocast runs
    ``group_norm``; the padding is normalised too (no real frame of a later layer reads it)."""
    batch, channels, time = x.shape
    groups = norm.num_groups
    if isinstance(frames, list):
        rows = [torch.var_mean(x[i, :, :n].float().reshape(groups, -1, n), dim=(1, 2), correction=0)
                for i, n in enumerate(frames)]
        var, mean = torch.stack([v for v, _ in rows]), torch.stack([m for _, m in rows])
    else:
        grouped = x.float().reshape(batch, groups, -1, time)
        weight = (torch.arange(time, device=x.device) < frames[:, None])[:, None, None, :].to(grouped.dtype)
        count = (weight.sum(-1, keepdim=True) * grouped.shape[2]).clamp(min=1)
        mean = ((grouped * weight).sum((2, 3), keepdim=True) / count).flatten(1)
        var = (((grouped - mean[..., None, None]).square() * weight).sum((2, 3), keepdim=True) / count).flatten(1)
    scale = torch.rsqrt(var + norm.eps).repeat_interleave(channels // groups, dim=1)  # [batch, channels]
    mean = mean.repeat_interleave(channels // groups, dim=1)
    if norm.affine:
        scale = scale * norm.weight
    shift = (norm.bias - mean * scale) if norm.affine else -mean * scale
    out = torch.addcmul(shift[..., None], x.float(), scale[..., None])
    return out if torch.is_autocast_enabled(x.device.type) else out.to(x.dtype)


def check_overrides(config_cls: type[PretrainedConfig], overrides: dict[str, Any]) -> None:
    """A ``ValueError`` naming the keys of ``overrides`` that ``config_cls`` does not have: a config takes any
    keyword and keeps it, so a misspelt one would be ignored without a word."""
    known = config_cls().to_dict()
    unknown = sorted(key for key in overrides if key not in known)
    if unknown:
        raise ValueError(f"backbone overrides {unknown}: not options of {config_cls.__name__} (e.g. num_hidden_layers, "
                         "hidden_size, intermediate_size, num_attention_heads)")


def tiny_config(
    family: Family = "wavlm", *, num_layers: int = 4, hidden_size: int = 32, num_heads: int = 2,
    intermediate_size: int = 64, conv_channels: int = 32, stable_layer_norm: bool = False, **overrides: Any,
) -> PretrainedConfig:
    """A tiny config of a supported family, for tests, the quickstart and timing-free experiments.

    The CNN keeps the real kernel/stride layout (400-sample receptive field, 50 frames/s at 16 kHz), only
    narrower; ``stable_layer_norm=True`` gives the pre-norm layout (not for Data2VecAudio).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown backbone family {family!r} in 'tiny:{family}'; choose from {sorted(FAMILIES)}")
    config_cls = FAMILIES[family][0]
    check_overrides(config_cls, overrides)
    kwargs: dict[str, Any] = dict(
        num_hidden_layers=num_layers, hidden_size=hidden_size, num_attention_heads=num_heads,
        intermediate_size=intermediate_size, conv_dim=(conv_channels,) * 7,
        conv_kernel=geometry.STOCK_CNN.conv_kernel, conv_stride=geometry.STOCK_CNN.conv_stride,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer" if stable_layer_norm else "group", layerdrop=0.0, mask_time_prob=0.0,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
    )
    if family == "data2vec":
        if stable_layer_norm:
            raise ValueError("Data2VecAudio has only the post-norm layout")
        kwargs.update(num_conv_pos_embeddings=3, conv_pos_kernel_size=5, feat_extract_norm="layer")
    else:
        kwargs["do_stable_layer_norm"] = stable_layer_norm
    if family == "wavlm":
        kwargs.update(num_buckets=32, max_bucket_distance=64)
    kwargs.update(overrides)
    return config_cls(**kwargs)
