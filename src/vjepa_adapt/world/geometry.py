"""A planned clip, the frame/canvas geometry, and a thing on the canvas (sprite + path per frame)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vjepa_adapt.world.sprites import Sprite
from vjepa_adapt.world.style import _CROSS_APPEAR_Y


@dataclass(frozen=True)
class ClipPlan:
    """What one clip is generated for; fixed before anything is rendered."""

    clip_id: str
    video_id: str
    video_index: int
    clip_index: int
    style: str
    tier: str
    direction: str

    @property
    def motion_class(self) -> str:
        return f"{self.tier}_{self.direction}"


@dataclass(frozen=True)
class _Geometry:
    width: int
    height: int
    num_frames: int
    margin_x: int  # canvas margin left/right: room for pans and shake
    margin_y: int  # canvas margin top/bottom: room for shake

    @property
    def canvas_w(self) -> int:
        return self.width + 2 * self.margin_x

    @property
    def canvas_h(self) -> int:
        return self.height + 2 * self.margin_y

    def y(self, frac: float) -> float:
        """Canvas y of a height fraction of the (unmoved) frame."""
        return self.margin_y + frac * self.height

    def persp(self, y: np.ndarray | float) -> np.ndarray | float:
        """Perspective scale of something standing at canvas y (nearer = lower = bigger)."""
        f = np.clip((np.asarray(y, dtype=np.float64) - self.y(0.42)) / (0.56 * self.height), 0.0, 1.0)
        return 0.55 + 0.45 * f


def _make_geometry(width: int, height: int, num_frames: int) -> _Geometry:
    return _Geometry(width, height, num_frames, margin_x=int(math.ceil(0.2 * width)) + 2,
                     margin_y=int(math.ceil(0.04 * height)) + 2)


@dataclass
class _Thing:
    """One object in the world canvas over the clip."""

    category: str
    role: str
    sprite: Sprite
    anchor: np.ndarray  # (T, 2) float64 canvas coords of the ground-contact point
    scale: np.ndarray  # (T,) drawn size relative to the sprite
    shown: np.ndarray  # (T,) bool: drawn at all (crossers step on/off the far pavement)
    kind: str = "static"  # "static" | "lane" | "walk" | "cross"
    path: np.ndarray | None = None  # (T, 2) displacement from frame 0 at the planned speed
    events: dict[str, Any] = field(default_factory=dict)  # stop / turn windows of an agent
    rgba: np.ndarray = field(init=False, repr=False)  # premultiplied colour + alpha

    def __post_init__(self) -> None:
        a = self.sprite.alpha[..., None]
        self.rgba = np.concatenate([self.sprite.rgb * a, a], axis=-1).astype(np.float32)
        self.origin = self.anchor[0].copy()

    def set_speed_factor(self, factor: float, geo: _Geometry) -> None:
        """Move at ``factor`` x the planned speed (same route, stops and swerves)."""
        if self.path is None:
            return
        self.anchor = self.origin + factor * self.path
        if self.kind == "cross":  # crossers grow as they come nearer and appear at the far pavement
            self.scale = np.asarray(geo.persp(self.anchor[:, 1]) / geo.persp(geo.y(1.0)), float)
            self.shown = self.anchor[:, 1] >= geo.y(_CROSS_APPEAR_Y)


def _static_thing(category: str, role: str, sprite: Sprite, x: float, y: float, T: int) -> _Thing:
    return _Thing(category, role, sprite, np.tile([x, y], (T, 1)).astype(np.float64), np.ones(T), np.ones(T, bool))
