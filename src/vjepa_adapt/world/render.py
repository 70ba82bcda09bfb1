"""Rendering one planned clip: paste things per frame, light, camera warp; the clip's ground truth."""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from vjepa_adapt.world.agents import _SPEED_FACTOR, _build_agents
from vjepa_adapt.world.camera import _build_camera
from vjepa_adapt.world.geometry import ClipPlan, _Geometry, _make_geometry, _Thing
from vjepa_adapt.world.layout import _build_layout, _Layout
from vjepa_adapt.world.style import (
    _STYLE,
    DIRECTION_VECTOR,
    DUSK_NOISE_GAIN,
    _style_code,
)
from vjepa_adapt.world.truth import Truth, extract_tracks, find_interactions


def _paste(canvas: np.ndarray | None, ids: np.ndarray, thing: _Thing, t: int, label: int) -> None:
    s = float(thing.scale[t])
    X, Y = thing.anchor[t]
    ax, ay = thing.sprite.anchor
    h, w = thing.sprite.alpha.shape
    Hc, Wc = ids.shape
    x0, y0 = max(0, int(math.floor(X - s * ax))), max(0, int(math.floor(Y - s * ay)))
    x1, y1 = min(Wc, int(math.ceil(X + s * (w - ax))) + 1), min(Hc, int(math.ceil(Y + s * (h - ay))) + 1)
    if x1 <= x0 or y1 <= y0:
        return
    M = np.array([[s, 0.0, X - s * ax - x0], [0.0, s, Y - s * ay - y0]])
    src = thing.rgba if canvas is not None else thing.sprite.alpha
    patch = cv2.warpAffine(src, M, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if canvas is None:  # labels only
        ids[y0:y1, x0:x1][patch > 0.5] = label
        return
    a = patch[..., 3:4]
    roi = canvas[y0:y1, x0:x1]
    roi *= 1.0 - a
    roi += patch[..., :3]
    ids[y0:y1, x0:x1][a[..., 0] > 0.5] = label


def _render(layout: _Layout, things: list[_Thing], affines: np.ndarray, geo: _Geometry
            ) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) uint8 and canvas-label maps warped to frames (T, H, W) uint16."""
    T, W, H = geo.num_frames, geo.width, geo.height
    frames = np.empty((T, H, W, 3), np.uint8)
    labels = np.empty((T, H, W), np.uint16)
    # Static things drawn below every moving one are baked into the background once.
    moving = [i for i, th in enumerate(things) if th.role == "agent"]
    z_min = min((float(things[i].anchor[:, 1].min()) for i in moving), default=np.inf)
    base = layout.background.copy()
    base_ids = np.zeros(base.shape[:2], np.uint16)
    order0 = sorted(range(len(things)), key=lambda i: (things[i].anchor[0, 1], i))
    dynamic = []
    for i in order0:
        th = things[i]
        if th.role != "agent" and th.anchor[0, 1] < z_min:
            _paste(base, base_ids, th, 0, i + 1)
        else:
            dynamic.append(i)
    for t in range(T):
        canvas = base.copy()
        ids = base_ids.copy()
        for i in sorted(dynamic, key=lambda i: (things[i].anchor[t, 1], i)):
            if things[i].shown[t]:
                _paste(canvas, ids, things[i], t, i + 1)
        canvas *= layout.light
        A = affines[t]
        frame = cv2.warpAffine(canvas, A, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        frames[t] = np.clip(frame + 0.5, 0, 255).astype(np.uint8)
        labels[t] = cv2.warpAffine(ids, A, (W, H), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                                   borderValue=0)
    return frames, labels


def _visible_moving_share(things: list[_Thing], affines: np.ndarray, geo: _Geometry, frames: np.ndarray) -> float:
    """Mean share of frame pixels showing a moving agent on ``frames`` (labels only, no colour)."""
    moving = [th for th in things if th.role == "agent"]
    if not moving:
        return 0.0
    z_min = min(float(th.anchor[:, 1].min()) for th in moving)
    front = [th for th in things if th.role == "agent" or th.anchor[0, 1] >= z_min]  # what can hide agents
    shares = []
    for t in frames:
        ids = np.zeros((geo.canvas_h, geo.canvas_w), np.uint8)
        for th in sorted(front, key=lambda th: th.anchor[t, 1]):
            if th.shown[t]:
                _paste(None, ids, th, int(t), 1 if th.role == "agent" else 2)
        seen = cv2.warpAffine(ids, affines[t], (geo.width, geo.height), flags=cv2.INTER_NEAREST)
        shares.append(float((seen == 1).mean()))
    return float(np.mean(shares))


def render_clip(
    plan: ClipPlan, *, seed: int, width: int = 128, height: int = 96, num_frames: int = 32, fps: float = 16.0,
    interaction_distance: float = 0.2, interaction_min_frames: int = 4,
) -> tuple[np.ndarray, Truth]:
    """Render one planned clip: frames (T, H, W, 3) uint8 RGB and its :class:`Truth`."""
    if width < 16 or height < 16:
        raise ValueError(f"frame size must be at least 16x16, got {width}x{height}")
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2, got {num_frames}")
    geo = _make_geometry(width, height, num_frames)
    code = _style_code(plan.style)
    layout = _build_layout(np.random.default_rng([seed, code, plan.video_index]), plan.style, geo)
    clip_rng = np.random.default_rng([seed, code, plan.video_index, 1000 + plan.clip_index])
    agents, agent_info = _build_agents(clip_rng, plan, geo)
    affines, cam_info = _build_camera(clip_rng, plan.style, plan.tier, geo)
    things = layout.things + agents
    # Foreground flow ~ speed x visible moving coverage. Occlusion and agents entering/leaving
    # make the coverage differ from the plan, so measure it (labels only, a few frames) and set
    # the clip's speed so their product lands on the tier's target.
    sample = np.unique(np.linspace(0, num_frames - 1, min(num_frames, 8)).round().astype(int))
    factor = 1.0
    for it in range(2):
        share = _visible_moving_share(things, affines, geo, sample)
        if it == 0:
            agent_info["laid_out_coverage"] = share
        if share <= 0:
            break
        factor = float(np.clip(factor * agent_info["target_coverage"] / share, *_SPEED_FACTOR))
        for th in agents:
            th.set_speed_factor(factor, geo)
    agent_info["speed_factor"] = factor
    agent_info["speed_px"] = agent_info["planned_speed_px"] * factor
    frames, labels = _render(layout, things, affines, geo)
    noise = _STYLE[plan.style].sensor_noise * (DUSK_NOISE_GAIN if layout.lighting == "dusk" else 1.0)
    if noise > 0:
        # its own stream, so the clip's layout, agents and camera are the same with or without noise
        noise_rng = np.random.default_rng([seed, code, plan.video_index, 2000 + plan.clip_index])
        frames = np.clip(frames + noise_rng.normal(0.0, noise, frames.shape), 0, 255).astype(np.uint8)

    # Keep only objects seen in some frame; number them 1..N in that order.
    seen = np.zeros(len(things) + 1, bool)
    seen[np.unique(labels)] = True
    seen[0] = False
    keep = np.flatnonzero(seen[1:])
    lut = np.zeros(len(things) + 1, np.uint16)
    lut[keep + 1] = np.arange(1, len(keep) + 1, dtype=np.uint16)
    instance_map = lut[labels]
    bbox, centroid, area = extract_tracks(instance_map, len(keep))
    anchors = np.stack([things[i].anchor for i in keep]) if len(keep) else np.zeros((0, num_frames, 2))
    position = np.einsum("tij,ntj->nti", affines[:, :, :2], anchors) + affines[None, :, :, 2]
    objects = [{"id": int(j + 1), "category": things[i].category, "role": things[i].role,
                "is_agent": things[i].role == "agent", **things[i].events} for j, i in enumerate(keep)]
    is_agent = np.array([o["is_agent"] for o in objects], bool)
    interactions = find_interactions(centroid, is_agent, width, DIRECTION_VECTOR[plan.direction],
                                     interaction_distance, interaction_min_frames)
    cam_motion = np.zeros((num_frames, 3))
    cam_motion[:, 2] = 1.0
    centres = np.stack([(np.array([width / 2, height / 2]) - affines[t, :, 2]) / affines[t, 0, 0]
                        for t in range(num_frames)])  # canvas point at the frame centre
    for t in range(1, num_frames):
        cam_motion[t, :2] = affines[t, :, :2] @ centres[t - 1] + affines[t, :, 2] - [width / 2, height / 2]
        cam_motion[t, 2] = affines[t, 0, 0] / affines[t - 1, 0, 0]
    moving_cov = float(np.isin(instance_map, np.flatnonzero(is_agent) + 1).mean()) if len(keep) else 0.0
    meta = {
        "tier": plan.tier, "direction": plan.direction, "lighting": layout.lighting, "camera": cam_info,
        "sensor_noise": round(noise, 3),
        "width": width, "height": height, "num_frames": num_frames, "fps": fps, "seed": seed,
        "video_index": plan.video_index, "clip_index": plan.clip_index,
        "moving_coverage": round(moving_cov, 5), "interaction_distance": interaction_distance,
        "interaction_min_frames": interaction_min_frames, **{k: _round(v) for k, v in agent_info.items()},
    }
    truth = Truth(plan.clip_id, plan.video_id, plan.style, plan.motion_class, instance_map, bbox, centroid,
                  area, position.astype(np.float32), affines.astype(np.float32), cam_motion.astype(np.float32),
                  objects, interactions, meta)
    return frames, truth


def _round(v: Any) -> Any:
    return round(float(v), 6) if isinstance(v, (float, np.floating)) else v
