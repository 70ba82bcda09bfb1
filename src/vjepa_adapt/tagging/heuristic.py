"""A CPU tagger that fills only what it can measure from pixels and motion.

Fields and rules (luma = Rec.601 Y in [0, 1]; thresholds in ``DEFAULT_THRESHOLDS``):

- ``time_of_day``: mean luma < ``night_luma`` (0.18) → night; < ``day_luma`` (0.35) → dusk_or_dawn;
  also dusk_or_dawn when luma < ``warm_dusk_luma`` (0.50) and the light is warm (mean R / mean B ≥
  ``warm_ratio`` 1.3, the orange cast of a low sun or sodium lamps); otherwise day.
- ``lighting``: night → artificial_light if ≥ ``light_source_fraction`` (0.2 %) of pixels are near
  white (luma > 0.9: lamps, headlights), else low_light; dusk → low_light; day → bright_daylight
  when the luma spread (std) ≥ ``sun_contrast`` (0.20: hard shadows), else overcast_daylight.
- ``crowd_density`` / ``traffic_density``: the share of pixels that move between frames after
  cancelling the camera's global shift (phase correlation), thresholds ``density_edges``
  (0.2 %, 2 %, 8 %, 20 %). The moving share cannot tell people from vehicles, so both fields get
  the same level and their confidence is scaled by ``density_confidence_cap`` (0.6). A walking
  camera (forward motion is not a shift) inflates the share. When the segmentation stage exists,
  density will come from its per-class agent counts instead.
- ``video_quality``: the worst of three levels — sharpness (variance of the Laplacian on a frame
  scaled to at most 360 px short side: < 30 poor, < 100 fair), 8×8 blockiness (mean jump across
  8-px block edges / mean jump elsewhere: ≥ 1.6 poor, ≥ 1.3 fair), and resolution (short side
  < 144 poor, < 240 fair).

Every other field is left to the parser, which sets it to "unknown" (this backend's
``measured_fields`` keeps them out of the default count).

Confidence is 0.5 at a threshold and grows linearly to 1.0 one ``scale`` away from the nearest
threshold (scales in ``DEFAULT_THRESHOLDS``; density distances are in log10 units).
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from vjepa_adapt.errors import ConfigError
from vjepa_adapt.tagging.frames import check_frames

DEFAULT_THRESHOLDS: dict[str, Any] = {
    "night_luma": 0.18,
    "day_luma": 0.35,
    "warm_dusk_luma": 0.50,
    "warm_ratio": 1.3,
    "luma_scale": 0.10,
    "warm_scale": 0.3,
    "light_source_fraction": 0.002,
    "sun_contrast": 0.20,
    "contrast_scale": 0.08,
    "density_edges": (0.002, 0.02, 0.08, 0.20),
    "density_scale": 0.5,  # log10 units: a factor of ~3 away from an edge is full confidence
    "density_confidence_cap": 0.6,
    "motion_diff": 25.0,  # grey levels (0–255) a pixel must change by to count as moving
    "motion_width": 160,  # frames are shrunk to this width before differencing (speed, noise)
    "motion_pairs": 8,
    "sharp_edges": (30.0, 100.0),
    "sharp_scale": 0.5,  # log10 units
    "block_edges": (1.3, 1.6),
    "block_scale": 0.2,
    "resolution_edges": (144, 240),
    "resolution_scale": 60.0,
    "quality_frames": 4,
}

CROWD_LEVELS = ("none", "sparse", "moderate", "dense", "very_dense")
TRAFFIC_LEVELS = ("none", "light", "moderate", "heavy", "heavy")  # gridlock is not visible as motion
QUALITY_LEVELS = ("poor", "fair", "good")


def threshold_confidence(x: float, edges: tuple[float, ...] | list[float], scale: float) -> float:
    """0.5 at the nearest threshold, rising linearly to 1.0 at ``scale`` away from it."""
    if not edges:
        return 1.0
    d = min(abs(x - e) for e in edges)
    return 0.5 + 0.5 * min(1.0, d / scale)


def bin_index(x: float, edges: tuple[float, ...] | list[float]) -> int:
    """How many of the ascending ``edges`` are <= x (the level x falls in)."""
    return int(sum(x >= e for e in edges))


def luma(frames: np.ndarray) -> np.ndarray:
    """Rec.601 luma in [0, 1].  # (T, H, W)"""
    rgb = frames.astype(np.float32) / 255.0
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def measure_light(frames: np.ndarray) -> dict[str, float]:
    """Mean luma, luma spread, warmth (mean R / mean B) and the share of near-white pixels."""
    y = luma(frames)  # (T, H, W)
    mean_r = float(frames[..., 0].mean())
    mean_b = float(frames[..., 2].mean())
    return {
        "mean_luma": float(y.mean()),
        "luma_std": float(y.std()),
        "warmth": (mean_r + 1.0) / (mean_b + 1.0),  # +1: a black frame is neutral, not infinite
        "highlight_fraction": float((y > 0.9).mean()),
    }


def _grey_small(frame: np.ndarray, width: int) -> np.ndarray:
    g = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    h, w = g.shape
    if w > width:
        g = cv2.resize(g, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(g.astype(np.float32), (3, 3), 0)


def measure_moving_fraction(frames: np.ndarray, diff_threshold: float, width: int, pairs: int) -> float:
    """Share of pixels that change by more than ``diff_threshold`` between frames, after
    undoing the global (camera) shift between the two frames with phase correlation."""
    t = frames.shape[0]
    if t < 2:
        return 0.0
    starts = np.unique(np.linspace(0, t - 2, min(pairs, t - 1)).round().astype(int))
    window = None
    shares = []
    for i in starts:
        a = _grey_small(frames[i], width)
        b = _grey_small(frames[i + 1], width)
        if window is None:
            window = cv2.createHanningWindow(a.shape[::-1], cv2.CV_32F)
        (dx, dy), _ = cv2.phaseCorrelate(a, b, window)
        # Shift a onto b, then compare only where both frames have content.
        m = np.float32([[1, 0, dx], [0, 1, dy]])
        a_shift = cv2.warpAffine(
            a, m, (a.shape[1], a.shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        bx, by = int(math.ceil(abs(dx))) + 1, int(math.ceil(abs(dy))) + 1
        h, w = a.shape
        raw = float((np.abs(b - a) > diff_threshold).mean())
        if 2 * bx >= w or 2 * by >= h:
            shares.append(raw)  # the "shift" is more than half the frame: not a usable estimate
            continue
        shifted = float((np.abs(b - a_shift)[by : h - by, bx : w - bx] > diff_threshold).mean())
        # Moving agents can pull the shift estimate off a static camera; keep whichever
        # explanation (camera still, or camera shifted) leaves less unexplained change.
        shares.append(min(raw, shifted))
    return float(np.mean(shares)) if shares else 0.0


def measure_sharpness(frames: np.ndarray, num_frames: int, max_short_side: int = 360) -> float:
    """Mean variance of the Laplacian (grey 0–255) on frames scaled to at most ``max_short_side``."""
    idx = np.linspace(0, frames.shape[0] - 1, min(num_frames, frames.shape[0])).round().astype(int)
    values = []
    for i in idx:
        g = cv2.cvtColor(frames[i], cv2.COLOR_RGB2GRAY)
        h, w = g.shape
        s = min(h, w)
        if s > max_short_side:  # compare clips of different resolutions on one scale
            f = max_short_side / s
            g = cv2.resize(g, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
        # Not contrast-normalised on purpose: a dim, low-contrast clip shows little detail and
        # should score low; normalising would also undo the blur it is meant to detect.
        values.append(float(cv2.Laplacian(g.astype(np.float32), cv2.CV_32F, ksize=3).var()))
    return float(np.mean(values))


def measure_blockiness(frames: np.ndarray, num_frames: int, block: int = 8) -> float:
    """Mean grey jump across ``block``-px boundaries over the mean jump elsewhere (≈1 when clean)."""
    idx = np.linspace(0, frames.shape[0] - 1, min(num_frames, frames.shape[0])).round().astype(int)
    ratios = []
    for i in idx:
        g = cv2.cvtColor(frames[i], cv2.COLOR_RGB2GRAY).astype(np.float32)
        ratios_frame = []
        for d in (np.abs(np.diff(g, axis=1)), np.abs(np.diff(g, axis=0)).T):  # (H, W-1) then (W, H-1)
            n = d.shape[1]
            if n < 2 * block:
                continue
            at_edge = np.zeros(n, dtype=bool)
            at_edge[block - 1 :: block] = True  # the jump from pixel 7 to 8, 15 to 16, ...
            inside = d[:, ~at_edge].mean()
            edge = d[:, at_edge].mean()
            ratios_frame.append((edge + 1e-3) / (inside + 1e-3))
        if ratios_frame:
            ratios.append(float(np.mean(ratios_frame)))
    return float(np.mean(ratios)) if ratios else 1.0


class HeuristicBackend:
    """Measured tags for lighting, time_of_day, crowd/traffic density and video_quality (CPU)."""

    name = "heuristic"
    measured_fields = ("time_of_day", "lighting", "crowd_density", "traffic_density", "video_quality")

    def __init__(self, thresholds: dict[str, Any] | None = None) -> None:
        unknown = set(thresholds or {}) - set(DEFAULT_THRESHOLDS)
        if unknown:
            raise ConfigError(
                f"tag heuristic thresholds: unknown key(s) {sorted(unknown)}; allowed: {sorted(DEFAULT_THRESHOLDS)}"
            )
        self.th = {**DEFAULT_THRESHOLDS, **(thresholds or {})}

    def tag(self, clip_id: str, frames: np.ndarray) -> dict:
        frames = check_frames(clip_id, frames)
        th = self.th
        light = measure_light(frames)
        moving = measure_moving_fraction(frames, th["motion_diff"], th["motion_width"], th["motion_pairs"])
        sharp = measure_sharpness(frames, th["quality_frames"])
        blocky = measure_blockiness(frames, th["quality_frames"])
        short_side = int(min(frames.shape[1:3]))

        out: dict[str, Any] = {}
        out["time_of_day"], out["lighting"] = self._light_tags(light)
        out["crowd_density"], out["traffic_density"] = self._density_tags(moving)
        out["video_quality"] = self._quality_tag(sharp, blocky, short_side)
        out["measurements"] = {
            **{k: round(v, 5) for k, v in light.items()},
            "moving_fraction": round(moving, 5),
            "sharpness": round(sharp, 2),
            "blockiness": round(blocky, 4),
            "short_side": short_side,
        }
        return out

    def _light_tags(self, m: dict[str, float]) -> tuple[dict, dict]:
        th = self.th
        y, warm = m["mean_luma"], m["warmth"]
        conf_y = threshold_confidence(y, (th["night_luma"], th["day_luma"]), th["luma_scale"])
        if y < th["night_luma"]:
            tod = {"value": "night", "confidence": conf_y}
        elif y < th["day_luma"]:
            tod = {"value": "dusk_or_dawn", "confidence": conf_y}
        elif y < th["warm_dusk_luma"] and warm >= th["warm_ratio"]:
            conf = min(
                threshold_confidence(warm, (th["warm_ratio"],), th["warm_scale"]),
                threshold_confidence(y, (th["warm_dusk_luma"],), th["luma_scale"]),
            )
            tod = {"value": "dusk_or_dawn", "confidence": conf}
        else:
            tod = {"value": "day", "confidence": conf_y}

        if tod["value"] == "night":
            lit = m["highlight_fraction"] >= th["light_source_fraction"]
            conf = threshold_confidence(
                math.log10(m["highlight_fraction"] + 1e-6), (math.log10(th["light_source_fraction"]),), 0.5
            )
            lighting = {"value": "artificial_light" if lit else "low_light", "confidence": conf}
        elif tod["value"] == "dusk_or_dawn":
            lighting = {"value": "low_light", "confidence": tod["confidence"]}
        else:
            sunny = m["luma_std"] >= th["sun_contrast"]
            conf = threshold_confidence(m["luma_std"], (th["sun_contrast"],), th["contrast_scale"])
            lighting = {"value": "bright_daylight" if sunny else "overcast_daylight", "confidence": conf}
        return tod, lighting

    def _density_tags(self, moving: float) -> tuple[dict, dict]:
        th = self.th
        edges = th["density_edges"]
        level = bin_index(moving, edges)
        conf = threshold_confidence(
            math.log10(moving + 1e-6), [math.log10(e) for e in edges], th["density_scale"]
        ) * th["density_confidence_cap"]
        return (
            {"value": CROWD_LEVELS[level], "confidence": conf},
            {"value": TRAFFIC_LEVELS[level], "confidence": conf},
        )

    def _quality_tag(self, sharp: float, blocky: float, short_side: int) -> dict:
        th = self.th
        # Each measure gives a level (0 poor, 1 fair, 2 good) and a confidence; the worst one decides.
        s_level = bin_index(sharp, th["sharp_edges"])
        log_edges = [math.log10(e) for e in th["sharp_edges"]]
        s_conf = threshold_confidence(math.log10(sharp + 1e-6), log_edges, th["sharp_scale"])
        b_level = 2 - bin_index(blocky, th["block_edges"])  # more blocky = worse
        b_conf = threshold_confidence(blocky, th["block_edges"], th["block_scale"])
        r_level = bin_index(short_side, th["resolution_edges"])
        r_conf = threshold_confidence(short_side, th["resolution_edges"], th["resolution_scale"])
        level, conf = min((s_level, s_conf), (b_level, b_conf), (r_level, r_conf), key=lambda lc: (lc[0], -lc[1]))
        if level == 2:
            conf = min(s_conf, b_conf, r_conf)  # "good" needs all three to agree
        return {"value": QUALITY_LEVELS[level], "confidence": conf}
