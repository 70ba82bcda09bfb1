"""Which encoder a stage starts from: the device, the frozen weights, a random-init model."""

from __future__ import annotations

from pathlib import Path

import torch

from vjepa_adapt.config import PipelineConfig
from vjepa_adapt.errors import UserError


def resolve_device(cfg: PipelineConfig) -> str:
    if cfg.run.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.run.device == "cuda" and not torch.cuda.is_available():
        raise UserError("run.device=cuda but no CUDA device is visible; use run.device=cpu or auto")
    return cfg.run.device


def _setup_threads(cfg: PipelineConfig) -> None:
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)


def frozen_weights(cfg: PipelineConfig, run_dir: Path) -> str:
    """The encoder every arm starts from: model.weights, or the demo's base model."""
    if cfg.model.weights:
        return cfg.model.weights
    return str(run_dir / "base" / "final" / "encoder")


def _perf(model, cfg: PipelineConfig):
    from vjepa_adapt.models.vjepa import apply_performance_switches

    return apply_performance_switches(model, gradient_checkpointing=cfg.model.gradient_checkpointing,
                                      compile=cfg.model.compile)


def build_random(cfg: PipelineConfig):
    from vjepa_adapt.models.vjepa import build_model

    torch.manual_seed(cfg.run.seed)
    extra = {"patch_size": cfg.model.patch_size} if cfg.model.patch_size else {}
    return _perf(build_model(cfg.model.preset, crop_size=cfg.data.size, frames_per_clip=cfg.data.num_frames,
                             attn_implementation=cfg.model.attn_implementation, **extra), cfg)


def load_frozen(cfg: PipelineConfig, run_dir: Path):
    from vjepa_adapt.models.vjepa import load_model

    # The preset is checked against the weights' own config, unless the patch size was overridden.
    preset = None if cfg.model.patch_size else cfg.model.preset
    model, report = load_model(frozen_weights(cfg, run_dir), preset=preset, crop_size=cfg.data.size,
                               frames_per_clip=cfg.data.num_frames, min_loaded_fraction=cfg.model.min_loaded_fraction,
                               attn_implementation=cfg.model.attn_implementation)
    return _perf(model, cfg)


def _mask_index(cfg: PipelineConfig) -> int:
    from vjepa_adapt.models.vjepa import DEFAULT_PREDICTOR_MASK_INDEX

    return cfg.model.predictor_mask_index if cfg.model.predictor_mask_index is not None \
        else DEFAULT_PREDICTOR_MASK_INDEX
