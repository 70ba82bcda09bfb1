"""V-JEPA 2 on top of ``transformers.VJEPA2Model``: presets, loading, masked forward, export.

The ViT itself is HF's (``VJEPA2Encoder`` / ``VJEPA2Predictor`` and their ``VJEPA2Layer``s); this
module only adds what JEPA training needs and HF's ``forward`` does not offer:

* ``encode_context`` runs the encoder on the *context tokens only*, with RoPE fed the tokens' true
  grid positions (HF's encoder forward always runs every token);
* ``predict`` runs the predictor on already-masked context states with an explicit mask-token
  index (HF's predictor forward re-masks full-length states and hard-wires ``mask_index=1``);
* ``load_model`` reads Hub ids, HF folders, official facebookresearch/vjepa2 ``.pt`` files and this
  toolkit's checkpoints, and refuses a model that is mostly random (``WeightsError``).

Token order everywhere: index = t * H'W' + h * W' + w (HF Conv3d patch embedding, RoPE decomposition).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import VJEPA2Config, VJEPA2Model
from transformers.models.vjepa2.modeling_vjepa2 import VJEPA2Encoder, VJEPA2Predictor

from vjepa_adapt.errors import WeightsError
from vjepa_adapt.progress import get_logger

log = get_logger("models.vjepa")

# The official trainer (app/vjepa/train.py + PredictorMultiSeqWrapper) calls the predictor with
# ``mask_index = i``, the index of the clip-length group; with one clip length that is 0, so token 0
# is the one pretrained weights learned. HF (and the official predictor's own default) use 1.
# A model carries the index its weights were trained with as ``config.predictor_mask_index``, so
# ``save_pretrained`` records it in config.json; weights without the record are official ones (0).
DEFAULT_PREDICTOR_MASK_INDEX = 0

# What the encoder is fed. "rgb" (normalised frames) is what Meta's weights and every real-scale
# preset see. "frame_diff" feeds temporal differences of the normalised frames instead: the demo's
# tiny stand-in base is trained on it because a 6-block ViT on 128 tokens does not learn speed x
# direction from raw RGB within a CPU budget (measured: supervised, RGB stays at chance — 11-13%
# after 400 steps at 32 and 64 px, also with a difference-initialised tubelet — while the same
# model on differences reaches 70% held-out). Like the mask index, a model carries its transform
# in ``config.input_transform`` (saved in config.json), and every encode path below applies it, so
# a model is never fed the other kind of input by mistake.
INPUT_TRANSFORMS = ("rgb", "frame_diff")

# Architectures of the released checkpoints. Values from transformers' convert_vjepa2_to_hf.py
# (get_vjepa2_config) and the official src/hub/backbones.py: patch 16, tubelet 2, fpc 64, predictor
# 12 layers x 384 wide x 12 heads, 10 mask tokens; ViT-g uses 22 heads and mlp_ratio 48/11
# (fc1 width 6144). Everything not listed keeps VJEPA2Config's defaults (ln eps 1e-6, qkv bias, gelu).
_RELEASED_PREDICTOR = dict(
    pred_hidden_size=384, pred_num_attention_heads=12, pred_num_hidden_layers=12,
    pred_num_mask_tokens=10, pred_mlp_ratio=4.0,
)
PRESETS: dict[str, dict[str, Any]] = {
    # CPU demo/tests. Patch 8 at 64 px gives an 8x8 spatial grid (x8 in time = 512 tokens): with
    # patch 16 the 4x4 grid makes multiblock masks degenerate (a 0.15-scale block is 2.4 patches).
    "tiny": dict(
        crop_size=64, frames_per_clip=16, patch_size=8, tubelet_size=2,
        hidden_size=192, num_hidden_layers=6, num_attention_heads=3, mlp_ratio=4.0,
        pred_hidden_size=96, pred_num_hidden_layers=4, pred_num_attention_heads=3,
        pred_num_mask_tokens=10, pred_mlp_ratio=4.0,
    ),
    "vitl-256": dict(
        crop_size=256, frames_per_clip=64, patch_size=16, tubelet_size=2,
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4.0, **_RELEASED_PREDICTOR,
    ),
    "vith-256": dict(
        crop_size=256, frames_per_clip=64, patch_size=16, tubelet_size=2,
        hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, mlp_ratio=4.0, **_RELEASED_PREDICTOR,
    ),
    "vitg-256": dict(
        crop_size=256, frames_per_clip=64, patch_size=16, tubelet_size=2,
        hidden_size=1408, num_hidden_layers=40, num_attention_heads=22, mlp_ratio=48 / 11, **_RELEASED_PREDICTOR,
    ),
    "vitg-384": dict(
        crop_size=384, frames_per_clip=64, patch_size=16, tubelet_size=2,
        hidden_size=1408, num_hidden_layers=40, num_attention_heads=22, mlp_ratio=48 / 11, **_RELEASED_PREDICTOR,
    ),
}
HUB_IDS: dict[str, str] = {
    "vitl-256": "facebook/vjepa2-vitl-fpc64-256",
    "vith-256": "facebook/vjepa2-vith-fpc64-256",
    "vitg-256": "facebook/vjepa2-vitg-fpc64-256",
    "vitg-384": "facebook/vjepa2-vitg-fpc64-384",
}


# --------------------------------------------------------------------------------------- building


def build_config(
    preset: str, crop_size: int | None = None, frames_per_clip: int | None = None, **overrides: Any
) -> VJEPA2Config:
    """A ``VJEPA2Config`` for ``preset``; ``crop_size`` must equal the input resolution (RoPE grid)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    values = {**PRESETS[preset], "predictor_mask_index": DEFAULT_PREDICTOR_MASK_INDEX, "input_transform": "rgb"}
    if crop_size is not None:
        values["crop_size"] = int(crop_size)
    if frames_per_clip is not None:
        values["frames_per_clip"] = int(frames_per_clip)
    values.update(overrides)
    if values["input_transform"] not in INPUT_TRANSFORMS:
        raise ValueError(f"input_transform must be one of {INPUT_TRANSFORMS}, got {values['input_transform']!r}")
    if values["crop_size"] % values["patch_size"]:
        raise ValueError(f"crop_size {values['crop_size']} is not a multiple of patch_size {values['patch_size']}")
    return VJEPA2Config(**values)


def build_model(
    preset: str,
    crop_size: int | None = None,
    frames_per_clip: int | None = None,
    attn_implementation: str = "sdpa",
    **overrides: Any,
) -> VJEPA2Model:
    """A randomly initialised ``VJEPA2Model`` (encoder + predictor) for ``preset``."""
    config = build_config(preset, crop_size=crop_size, frames_per_clip=frames_per_clip, **overrides)
    return _model_from_config(config, attn_implementation)


def _model_from_config(config: VJEPA2Config, attn_implementation: str) -> VJEPA2Model:
    return VJEPA2Model._from_config(config, attn_implementation=attn_implementation)


def token_grid(config: VJEPA2Config, num_frames: int | None = None) -> tuple[int, int, int]:
    """(T', H', W') for a clip of ``num_frames`` (default: config.frames_per_clip) at config.crop_size."""
    frames = config.frames_per_clip if num_frames is None else num_frames
    side = config.crop_size // config.patch_size
    return (max(frames // config.tubelet_size, 1), side, side)


def predictor_mask_index(config: VJEPA2Config) -> int:
    """The predictor mask token these weights were trained with (see DEFAULT_PREDICTOR_MASK_INDEX)."""
    return int(getattr(config, "predictor_mask_index", DEFAULT_PREDICTOR_MASK_INDEX))


def input_transform(config: VJEPA2Config) -> str:
    """What these weights expect as input (see INPUT_TRANSFORMS); weights without the record take RGB."""
    kind = getattr(config, "input_transform", "rgb")
    if kind not in INPUT_TRANSFORMS:
        raise WeightsError(f"config.input_transform {kind!r} is not one of {INPUT_TRANSFORMS}")
    return kind


def frame_difference(video: torch.Tensor) -> torch.Tensor:
    """(B, T, C, H, W) -> (B, T, C, H, W): 2·(x[t] − x[t−1]); frame 0 repeats the first difference.

    The factor 2 brings differences of normalised frames to about the spread of a normalised frame,
    and repeating the first difference (rather than zeros) keeps tubelet 0 a real (x1 − x0) pair
    like every other one.
    """
    if video.shape[1] < 2:
        raise ValueError(f"frame differences need at least 2 frames, got {video.shape[1]}")
    d = video[:, 1:] - video[:, :-1]  # (B, T-1, C, H, W)
    return 2.0 * torch.cat([d[:, :1], d], dim=1)


def model_input(encoder: VJEPA2Encoder, video: torch.Tensor) -> torch.Tensor:
    """The video as this encoder's weights expect it (RGB, or frame differences)."""
    return frame_difference(video) if input_transform(encoder.config) == "frame_diff" else video


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


# ----------------------------------------------------------------------------------- forward paths


def _check_video(encoder: VJEPA2Encoder, video: torch.Tensor) -> None:
    # HF's RoPE derives (t, h, w) from a flat index with grid_size = crop_size // patch_size; a video
    # of another size would silently get scrambled positions, so fail loudly instead.
    if video.ndim != 5 or video.shape[2] != encoder.config.in_chans:
        raise ValueError(f"video must be (B, T, {encoder.config.in_chans}, H, W), got {tuple(video.shape)}")
    h, w = video.shape[-2:]
    crop = encoder.config.crop_size
    if h != crop or w != crop:
        raise ValueError(
            f"video is {h}x{w} px but the model's config.crop_size is {crop}: RoPE positions come from "
            f"crop_size, so build/load the model with crop_size={h} (square inputs only)"
        )


def encode_full(encoder: VJEPA2Encoder, video: torch.Tensor) -> torch.Tensor:
    """All tokens through the encoder: (B, T, 3, H, W) -> (B, N, D)."""
    _check_video(encoder, video)
    x = encoder.embeddings(model_input(encoder, video))  # (B, N, D)
    for layer in encoder.layer:
        x = layer(x, None)[0]
    return encoder.layernorm(x)


def encode_context(encoder: VJEPA2Encoder, video: torch.Tensor, context_ids: torch.Tensor) -> torch.Tensor:
    """Student path: only the context tokens enter the transformer.

    video (B, T, 3, H, W); context_ids (B, Nc) long grid indices -> (B, Nc, D). Every layer gets
    ``position_mask=context_ids`` so RoPE rotates each token by its true (t, h, w). Activation
    checkpointing applies when enabled on the model (the layers are GradientCheckpointingLayers).
    """
    _check_video(encoder, video)
    if context_ids.ndim != 2 or context_ids.shape[0] != video.shape[0]:
        raise ValueError(f"context_ids must be (B, Nc) with B={video.shape[0]}, got {tuple(context_ids.shape)}")
    x = encoder.embeddings(model_input(encoder, video))  # (B, N, D)
    ids = context_ids.to(device=x.device, dtype=torch.long)
    x = torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, Nc, D)
    for layer in encoder.layer:
        x = layer(x, ids)[0]
    return encoder.layernorm(x)


def teacher_targets(encoder: VJEPA2Encoder, video: torch.Tensor) -> torch.Tensor:
    """JEPA targets: full-clip encoder output, layer-normed without affine parameters, no grad. (B, N, D)"""
    with torch.no_grad():
        h = encode_full(encoder, video)
        return F.layer_norm(h, (h.shape[-1],))


def predict(
    predictor: VJEPA2Predictor,
    context_states: torch.Tensor,  # (B, Nc, D) encoder outputs at context_ids
    context_ids: torch.Tensor,  # (B, Nc) long
    target_ids: torch.Tensor,  # (B, Nt) long
    mask_index: int = DEFAULT_PREDICTOR_MASK_INDEX,
) -> torch.Tensor:  # (B, Nt, D)
    """Predictor on masked context states; mask token ``mask_index`` stands at every target position.

    Same computation as ``VJEPA2Predictor.forward`` (embed, mask tokens, sort by position, layers
    with position ids, norm, unsort, proj) but without re-gathering full-length states and with the
    mask-token index explicit.
    """
    emb = predictor.embeddings
    if not 0 <= mask_index < emb.num_mask_tokens:
        # HF silently wraps (mask_index % num_mask_tokens); a wrong index must not train quietly.
        raise ValueError(f"mask_index {mask_index} out of range: the predictor has {emb.num_mask_tokens} mask tokens")
    b, n_ctx, _ = context_states.shape
    if context_ids.shape != (b, n_ctx) or target_ids.ndim != 2 or target_ids.shape[0] != b:
        raise ValueError(
            f"ids must be context_ids (B, Nc)=({b}, {n_ctx}) and target_ids (B, Nt); got "
            f"{tuple(context_ids.shape)} and {tuple(target_ids.shape)}"
        )
    ctx = emb.predictor_embeddings(context_states)  # (B, Nc, P)
    n_tgt = target_ids.shape[1]
    tgt = emb.mask_tokens[mask_index].to(ctx.dtype).expand(b, n_tgt, -1)  # (1, 1, P) -> (B, Nt, P)
    x = torch.cat([ctx, tgt], dim=1)  # (B, Nc+Nt, P)
    positions = torch.cat([context_ids, target_ids], dim=1).to(device=x.device, dtype=torch.long)
    argsort = torch.argsort(positions, dim=1)  # RoPE does not need order; kept to match official numerics
    x, positions = predictor.sort_tokens(x, positions, argsort)
    for layer in predictor.layer:
        x = layer(x, positions)[0]
    x = predictor.layernorm(x)
    x = predictor.unsort_tokens(x, argsort)[:, n_ctx:]  # (B, Nt, P)
    return predictor.proj(x)  # (B, Nt, D)


# ------------------------------------------------------------------------------------ perf switches


def autocast_context(device: torch.device | str, dtype: str = "bf16") -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA and CPU (where supported); ``fp32`` is a no-op context."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    if dtype != "bf16":
        raise ValueError(f"dtype must be 'bf16' or 'fp32', got {dtype!r}")
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def enable_activation_checkpointing(model: VJEPA2Model) -> None:
    """Recompute each VJEPA2Layer in backward (non-reentrant). Active only in train mode."""
    unwrap_model(model).activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def compile_blocks(model: VJEPA2Model) -> None:
    """``torch.compile`` every encoder/predictor block in place (``nn.Module.compile``), so parameter
    names and checkpoints are unchanged; dynamic shapes because context/target counts vary per step."""
    model = unwrap_model(model)
    for layer in [*model.encoder.layer, *model.predictor.layer]:
        layer.compile(dynamic=True)


def apply_performance_switches(model: VJEPA2Model, gradient_checkpointing: bool = False,
                               compile: bool = False) -> VJEPA2Model:
    """The model.* performance settings of the config, applied in one place."""
    if gradient_checkpointing:
        enable_activation_checkpointing(model)
    if compile:
        compile_blocks(model)
    return model


# ------------------------------------------------------------------------------------------ loading


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What ``load_model`` read and how much of the model it covered."""

    source: str
    kind: str  # 'hub' | 'hf_folder' | 'official' | 'toolkit' | 'state_dict'
    loaded: int  # counted model tensors filled from the checkpoint
    total: int  # counted model tensors (encoder + predictor, or encoder only)
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]  # (key, checkpoint, model)
    encoder_key: str | None = None  # which entry of the checkpoint fed the encoder
    ignored: tuple[str, ...] = ()  # known-unused checkpoint keys (absolute pos_embed under RoPE)
    # the mask token the weights were trained with: recorded in config.json by our exports, else
    # the official trainer's (DEFAULT_PREDICTOR_MASK_INDEX); the loaded model's config carries it
    predictor_mask_index: int = DEFAULT_PREDICTOR_MASK_INDEX

    @property
    def fraction(self) -> float:
        return self.loaded / self.total if self.total else 0.0

    def summary(self) -> str:
        return (
            f"{self.kind} weights from {self.source}: {self.loaded}/{self.total} tensors "
            f"({100 * self.fraction:.1f}%), missing {len(self.missing)}, unexpected {len(self.unexpected)}, "
            f"shape mismatches {len(self.mismatched)}"
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["fraction"] = self.fraction
        return d


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_SUFFIXES = (".pt", ".pth", ".tar", ".bin", ".ckpt", ".safetensors")
_EXPECTED = (
    "a Hugging Face model folder (config.json + model.safetensors), a Hub id such as "
    "'facebook/vjepa2-vitl-fpc64-256', an official V-JEPA 2 .pt checkpoint, or a vjepa-adapt checkpoint"
)


def load_model(
    source: str | os.PathLike,
    preset: str | None = None,
    crop_size: int | None = None,
    frames_per_clip: int | None = None,
    min_loaded_fraction: float = 0.99,
    attn_implementation: str = "sdpa",
    require_predictor: bool = True,
) -> tuple[VJEPA2Model, LoadReport]:
    """Load V-JEPA 2 weights from a Hub id, HF folder, official ``.pt`` or toolkit checkpoint.

    ``crop_size`` / ``frames_per_clip`` override the stored config (crop_size must equal the input
    resolution). With ``require_predictor=False`` only encoder tensors count towards the fraction
    (evaluation of an encoder-only export). Raises ``WeightsError`` if less than
    ``min_loaded_fraction`` of the counted tensors were loaded.
    """
    source_str = os.fspath(source)
    path = Path(source_str).expanduser()
    if path.is_dir():
        model, report = _load_hf(source_str, path, "hf_folder", preset, crop_size, frames_per_clip,
                                 attn_implementation, require_predictor)
    elif path.is_file():
        obj = _read_weights_file(path)
        model, report = _load_from_object(obj, source_str, preset, crop_size, frames_per_clip,
                                          attn_implementation, require_predictor)
    elif _HUB_ID.match(source_str) and not source_str.endswith(_WEIGHT_SUFFIXES):
        model, report = _load_hf(source_str, None, "hub", preset, crop_size, frames_per_clip,
                                 attn_implementation, require_predictor)
    else:
        raise WeightsError(f"weights not found: {source_str!r} does not exist; expected {_EXPECTED}")
    index = predictor_mask_index(model.config)
    model.config.predictor_mask_index = index  # explicit from here on: exports record it again
    report = dataclasses.replace(report, predictor_mask_index=index)
    _enforce_fraction(report, min_loaded_fraction)
    log.info(report.summary())
    if report.missing:
        log.warning("missing tensors (left at random init): %s", _preview(report.missing))
    return model, report


def _preview(keys: Any, n: int = 8) -> str:
    keys = list(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(str(k) for k in keys[:n]) + more


def _enforce_fraction(report: LoadReport, min_loaded_fraction: float) -> None:
    if report.fraction >= min_loaded_fraction:
        return
    parts = [
        f"only {report.loaded} of {report.total} model tensors ({100 * report.fraction:.1f}%) were loaded "
        f"from {report.source} ({report.kind}); at least {100 * min_loaded_fraction:.1f}% is required so a "
        f"mostly random model is never trained or evaluated by mistake"
    ]
    if report.mismatched:
        shown = [f"{k} checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in report.mismatched[:4]]
        parts.append(f"shape mismatches ({len(report.mismatched)}): {'; '.join(shown)} - wrong preset or crop/patch size?")
    if report.missing:
        parts.append(f"missing ({len(report.missing)}): {_preview(report.missing, 6)}")
    if report.unexpected:
        parts.append(f"unexpected ({len(report.unexpected)}): {_preview(report.unexpected, 6)}")
    raise WeightsError(". ".join(parts))


def _read_weights_file(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise WeightsError(f"cannot read safetensors file {path}: {exc}") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        raise WeightsError(
            f"cannot read weights from {path} with torch.load(weights_only=True): {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}. Expected {_EXPECTED}; files that need full "
            "unpickling (arbitrary code) are refused"
        ) from exc


def _load_hf(
    source: str,
    path: Path | None,
    kind: str,
    preset: str | None,
    crop_size: int | None,
    frames_per_clip: int | None,
    attn_implementation: str,
    require_predictor: bool,
) -> tuple[VJEPA2Model, LoadReport]:
    if path is not None and not (path / "config.json").is_file():
        raise WeightsError(f"{source} is a folder without config.json; expected {_EXPECTED}")
    local_only = path is not None
    target = str(path) if path is not None else source
    try:
        config = VJEPA2Config.from_pretrained(target, local_files_only=local_only)
        if crop_size is not None:
            config.crop_size = int(crop_size)
        if frames_per_clip is not None:
            config.frames_per_clip = int(frames_per_clip)
        _check_preset_matches(config, preset, source)
        model, info = VJEPA2Model.from_pretrained(
            target, config=config, attn_implementation=attn_implementation, output_loading_info=True,
            ignore_mismatched_sizes=True, local_files_only=local_only,
        )
    except OSError as exc:
        if kind == "hub":
            raise WeightsError(
                f"could not download or find {source!r} in the Hugging Face cache ({exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0]}). Pre-download it on a machine with internet "
                f"(`huggingface-cli download {source}` with the same HF_HOME, or `save_pretrained` to a folder) "
                "and point HF_HOME at that cache or pass the local folder as the weights source"
            ) from exc
        raise WeightsError(f"cannot load the Hugging Face folder {source}: {exc}") from exc
    model_keys = list(model.state_dict())
    counted = _counted_keys(model_keys, require_predictor)
    missing = [k for k in counted if k in info["missing_keys"]]
    mismatched = [(k, tuple(a), tuple(b)) for k, a, b in sorted(info["mismatched_keys"]) if k in counted]
    bad = set(missing) | {k for k, _, _ in mismatched}
    report = LoadReport(
        source=source, kind=kind, loaded=sum(k not in bad for k in counted), total=len(counted),
        missing=tuple(missing), unexpected=tuple(sorted(info["unexpected_keys"])), mismatched=tuple(mismatched),
    )
    return model, report


def _check_preset_matches(config: VJEPA2Config, preset: str | None, source: str) -> None:
    if preset is None:
        return
    want = build_config(preset)
    fields = ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "tubelet_size")
    diff = {f: (getattr(config, f), getattr(want, f)) for f in fields if getattr(config, f) != getattr(want, f)}
    if diff:
        shown = ", ".join(f"{f} {a} (preset {b})" for f, (a, b) in diff.items())
        raise WeightsError(f"{source} does not match preset {preset!r}: {shown}")


def _counted_keys(model_keys: list[str], require_predictor: bool) -> list[str]:
    return [k for k in model_keys if require_predictor or not k.startswith("predictor.")]


def _strip_wrappers(key: str) -> str:
    # Official checkpoints: 'module.backbone.' (DDP + MultiSeqWrapper); torch.compile: '_orig_mod.'.
    for prefix in ("module.", "backbone.", "_orig_mod."):
        key = key.replace(prefix, "")
    return key


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _looks_official(sd: Mapping[str, Any]) -> bool:
    return any(_strip_wrappers(k).startswith(("blocks.", "patch_embed.", "predictor_blocks.")) for k in sd)


def _load_from_object(
    obj: Any,
    source: str,
    preset: str | None,
    crop_size: int | None,
    frames_per_clip: int | None,
    attn_implementation: str,
    require_predictor: bool,
) -> tuple[VJEPA2Model, LoadReport]:
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{source} holds a {type(obj).__name__}, not a dict of weights; expected {_EXPECTED}")
    stored_config: dict[str, Any] | None = None
    if any(k in obj for k in ("target_encoder", "ema_encoder", "encoder")) and not _is_tensor_dict(obj):
        kind = "official"
        encoder_key = next(k for k in ("target_encoder", "ema_encoder", "encoder") if _is_tensor_dict(obj.get(k)))
        hf_sd, ignored = official_to_hf_state_dict(obj[encoder_key], obj.get("predictor"))
    elif "teacher" in obj or "student" in obj:
        kind = "toolkit"
        encoder_key, hf_sd = _toolkit_state_dict(obj, source)
        ignored = []
        stored_config = obj.get("model_config")
    elif _is_tensor_dict(obj):
        encoder_key = None
        if _looks_official(obj):
            kind = "official"
            hf_sd, ignored = official_to_hf_state_dict(obj, None)
        else:
            kind = "state_dict"
            hf_sd, ignored = {_strip_wrappers(k): v for k, v in obj.items()}, []
    else:
        raise WeightsError(
            f"unrecognised checkpoint layout in {source}: top-level keys {_preview(obj.keys())}; expected {_EXPECTED}"
        )
    config = _config_for_state_dict(hf_sd, stored_config, preset, crop_size, frames_per_clip, source)
    model = _model_from_config(config, attn_implementation)
    counted = _counted_keys(list(model.state_dict()), require_predictor)
    loaded, missing, unexpected, mismatched = _apply_state_dict(model, hf_sd, counted)
    report = LoadReport(
        source=source, kind=kind, loaded=loaded, total=len(counted), missing=tuple(missing),
        unexpected=tuple(unexpected), mismatched=tuple(mismatched), encoder_key=encoder_key, ignored=tuple(ignored),
    )
    return model, report


def _toolkit_state_dict(obj: Mapping[str, Any], source: str) -> tuple[str, dict[str, torch.Tensor]]:
    """Our checkpoint: 'teacher' (preferred) / 'student' state dicts in HF naming, optional 'predictor'.

    Encoder entries may use VJEPA2Model keys ('encoder.*') or bare VJEPA2Encoder keys ('embeddings.*',
    'layer.*', 'layernorm.*'). The predictor comes from 'predictor' ('predictor.*' or bare
    VJEPA2Predictor keys), else from the 'predictor.*' keys of the student, else of the teacher.
    """
    encoder_key = "teacher" if _is_tensor_dict(obj.get("teacher")) else "student"
    if not _is_tensor_dict(obj.get(encoder_key)):
        raise WeightsError(f"{source}: the 'teacher'/'student' entries are not state dicts of tensors")
    sd: dict[str, torch.Tensor] = {}
    for raw, value in obj[encoder_key].items():
        key = _strip_wrappers(raw)
        if not key.startswith("predictor."):
            sd[key if key.startswith("encoder.") else "encoder." + key] = value
    pred: dict[str, torch.Tensor] = {}
    if _is_tensor_dict(obj.get("predictor")):
        for raw, value in obj["predictor"].items():
            key = _strip_wrappers(raw)
            pred[key if key.startswith("predictor.") else "predictor." + key] = value
    else:
        for entry in ("student", "teacher"):
            if _is_tensor_dict(obj.get(entry)):
                pred = {k: v for k, v in ((_strip_wrappers(r), v) for r, v in obj[entry].items())
                        if k.startswith("predictor.")}
            if pred:
                break
    sd.update(pred)
    return encoder_key, sd


def _config_for_state_dict(
    sd: Mapping[str, torch.Tensor],
    stored_config: dict[str, Any] | None,
    preset: str | None,
    crop_size: int | None,
    frames_per_clip: int | None,
    source: str,
) -> VJEPA2Config:
    if stored_config is not None:
        config = VJEPA2Config.from_dict(dict(stored_config))
        if crop_size is not None:
            config.crop_size = int(crop_size)
        if frames_per_clip is not None:
            config.frames_per_clip = int(frames_per_clip)
        _check_preset_matches(config, preset, source)
        return config
    if preset is None:
        preset = _infer_preset(sd, crop_size, source)
    return build_config(preset, crop_size=crop_size, frames_per_clip=frames_per_clip)


def _infer_preset(sd: Mapping[str, torch.Tensor], crop_size: int | None, source: str) -> str:
    """Match (width, depth) of the weights to a preset; needs crop_size to split vitg-256 from vitg-384."""
    patch = sd.get("encoder.embeddings.patch_embeddings.proj.weight")
    if patch is None:
        raise WeightsError(f"{source}: no patch-embedding weight found, cannot tell the architecture; pass preset=")
    width = patch.shape[0]
    depth = len({k.split(".")[2] for k in sd if k.startswith("encoder.layer.")})
    matches = [p for p, v in PRESETS.items() if v["hidden_size"] == width and v["num_hidden_layers"] == depth]
    if crop_size is not None and len(matches) > 1:
        exact = [p for p in matches if PRESETS[p]["crop_size"] == crop_size]
        matches = exact or matches[:1]  # same weights shapes; crop_size is overridden anyway
    if len(matches) != 1:
        found = f"presets {matches}" if matches else "no preset"
        raise WeightsError(
            f"{source}: encoder width {width}, {depth} layers matches {found}; pass preset= (one of {sorted(PRESETS)})"
        )
    return matches[0]


def _apply_state_dict(
    model: nn.Module, sd: Mapping[str, torch.Tensor], counted: list[str]
) -> tuple[int, list[str], list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]:
    model_sd = model.state_dict()
    good: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    for k, v in sd.items():
        if k not in model_sd:
            unexpected.append(k)
        elif tuple(v.shape) != tuple(model_sd[k].shape):
            mismatched.append((k, tuple(v.shape), tuple(model_sd[k].shape)))
        else:
            good[k] = v
    model.load_state_dict(good, strict=False)
    counted_set = set(counted)
    mismatched = [m for m in mismatched if m[0] in counted_set]
    bad = {m[0] for m in mismatched}
    missing = [k for k in counted if k not in good and k not in bad]
    loaded = sum(k in good for k in counted)
    return loaded, missing, sorted(unexpected), mismatched


# ------------------------------------------------------------------- official <-> HF key mapping

_BLOCK_RENAMES = (("attn.proj.", "attention.proj."), ("norm1.", "norm1."), ("norm2.", "norm2."), ("mlp.", "mlp."))
_IGNORED_OFFICIAL = ("pos_embed", "predictor_pos_embed")  # absolute embeddings unused under RoPE


def _map_block(rest: str, value: torch.Tensor, out_prefix: str, out: dict[str, torch.Tensor]) -> bool:
    """Map one block's parameter ('attn.qkv.weight', 'mlp.fc1.bias', ...) into HF names."""
    if rest.startswith("attn.qkv."):
        suffix = rest[len("attn.qkv."):]
        q, k, v = value.chunk(3, dim=0)  # qkv rows are [q; k; v] (official Linear(dim, 3*dim))
        out[f"{out_prefix}attention.query.{suffix}"] = q.clone()
        out[f"{out_prefix}attention.key.{suffix}"] = k.clone()
        out[f"{out_prefix}attention.value.{suffix}"] = v.clone()
        return True
    for old, new in _BLOCK_RENAMES:
        if rest.startswith(old):
            out[out_prefix + new + rest[len(old):]] = value
            return True
    return False


def official_to_hf_state_dict(
    encoder_sd: Mapping[str, torch.Tensor], predictor_sd: Mapping[str, torch.Tensor] | None = None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename official facebookresearch/vjepa2 encoder/predictor weights to ``VJEPA2Model`` keys.

    Returns (hf_state_dict, ignored_keys). Unknown keys are kept under their cleaned name so they
    surface as 'unexpected' in the load report rather than vanishing.
    """
    out: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for raw, value in encoder_sd.items():
        key = _strip_wrappers(raw)
        if key in _IGNORED_OFFICIAL:
            ignored.append(raw)
        elif key.startswith("patch_embed."):
            out["encoder.embeddings.patch_embeddings." + key[len("patch_embed."):]] = value
        elif key.startswith("norm."):
            out["encoder.layernorm." + key[len("norm."):]] = value
        elif key.startswith("blocks."):
            _, idx, rest = key.split(".", 2)
            if not _map_block(rest, value, f"encoder.layer.{idx}.", out):
                out["encoder.unmapped." + key] = value
        else:
            out["encoder.unmapped." + key] = value
    if predictor_sd is None:
        return out, ignored
    mask_tokens: dict[int, torch.Tensor] = {}
    for raw, value in predictor_sd.items():
        key = _strip_wrappers(raw)
        if key in _IGNORED_OFFICIAL:
            ignored.append(raw)
        elif key.startswith("mask_tokens."):
            mask_tokens[int(key.split(".")[1])] = value  # each (1, 1, P)
        elif key.startswith("predictor_embed."):
            out["predictor.embeddings.predictor_embeddings." + key[len("predictor_embed."):]] = value
        elif key.startswith("predictor_norm."):
            out["predictor.layernorm." + key[len("predictor_norm."):]] = value
        elif key.startswith("predictor_proj."):
            out["predictor.proj." + key[len("predictor_proj."):]] = value
        elif key.startswith("predictor_blocks."):
            _, idx, rest = key.split(".", 2)
            if not _map_block(rest, value, f"predictor.layer.{idx}.", out):
                out["predictor.unmapped." + key] = value
        else:
            out["predictor.unmapped." + key] = value
    if mask_tokens:
        if sorted(mask_tokens) != list(range(len(mask_tokens))):
            raise WeightsError(f"official predictor mask tokens are not numbered 0..n-1: {sorted(mask_tokens)}")
        out["predictor.embeddings.mask_tokens"] = torch.stack([mask_tokens[i] for i in range(len(mask_tokens))])
    return out, ignored


# ------------------------------------------------------------------------------------------- export


def export_encoder(
    model: VJEPA2Model,
    out_dir: str | os.PathLike,
    encoder_state: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """``save_pretrained`` (config.json + model.safetensors) into ``out_dir``, atomically.

    Writes into a temp folder beside ``out_dir`` and renames it into place, so a crash leaves either
    the previous export or none, never a half-written one. The whole VJEPA2Model (encoder and
    predictor) is saved: ``VJEPA2Model.from_pretrained(out_dir)`` then loads with nothing missing.
    ``encoder_state`` (bare VJEPA2Encoder keys or 'encoder.*' keys, e.g. the EMA teacher's
    ``state_dict()``) replaces the model's encoder weights in the export without touching ``model``.
    """
    model = unwrap_model(model)
    state_dict = None
    if encoder_state is not None:
        state_dict = dict(model.state_dict())
        for raw, value in encoder_state.items():
            key = raw if raw.startswith("encoder.") else "encoder." + raw
            if key not in state_dict or tuple(state_dict[key].shape) != tuple(value.shape):
                raise ValueError(f"encoder_state entry {raw!r} {tuple(value.shape)} does not fit the model's encoder")
            state_dict[key] = value
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, state_dict=state_dict)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{out.name}.", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
