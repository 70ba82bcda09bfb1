"""The two styles of the street world and its vocabulary: tiers, directions, categories, street bands."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STYLES = ("source", "target")
MOTION_TIERS = ("still", "slow", "medium", "fast")
MOTION_DIRECTIONS = ("right", "up", "left", "down")
# Planned speed of the moving agents per tier, as a fraction of the frame width per frame (so the
# world behaves the same at any resolution). Adjacent tiers are ~2.6x apart; together with the
# moving coverage held near a per-style target, this keeps the foreground flow magnitude of
# neighbouring tiers apart. "still" is a slow but measurable drift, so its flow direction is still
# the class direction. The fast tier stays at <= ~5 px/frame at 128 px wide, where Farnebaeck
# still tracks thin shapes (two-wheelers, people) without aliasing.
TIER_SPEED = {"still": 0.002, "slow": 0.005, "medium": 0.013, "fast": 0.034}
DIRECTION_VECTOR = {"right": (1.0, 0.0), "left": (-1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
AGENT_CATEGORIES = ("pedestrian", "cow", "auto_rickshaw", "car", "two_wheeler")
LAYOUT_CATEGORIES = ("pole", "sign", "stall")
CATEGORIES = AGENT_CATEGORIES + LAYOUT_CATEGORIES
# role of an object in a clip: "agent" moves on its own; "static" is an agent category that
# does not move in this clip (a standing pedestrian, a resting cow); "layout" is part of the
# scene (parked vehicles, poles, signs, stalls). is_agent == (role == "agent").
ROLES = ("agent", "static", "layout")
CAMERA_MODES = ("static", "pan_left", "pan_right", "zoom", "shake")

# Vertical layout of the street, as fractions of the frame height (side view, camera across the road).
_BUILDING_BASE = 0.44
_FAR_WALK = (0.44, 0.53)
_FAR_KERB = (0.53, 0.55)
_ROAD = (0.55, 0.89)
_NEAR_KERB = (0.89, 0.91)
_FAR_WALK_Y = 0.505  # anchor (feet) of things standing on the far pavement
_FAR_WALK_STREAM_Y = 0.52
_PARKING_Y = 0.6
_NEAR_WALK_Y = 0.985
_CROSS_APPEAR_Y = 0.52  # crossers appear / vanish here (they step off / onto the far pavement)
# Height of each category at perspective scale 1, as a fraction of the frame height.
_NOMINAL_HEIGHT = {"car": 0.23, "auto_rickshaw": 0.28, "two_wheeler": 0.26, "pedestrian": 0.28,
                   "cow": 0.24, "stall": 0.3, "sign": 0.34}


@dataclass(frozen=True)
class _StyleParams:
    coverage: tuple[float, float]  # share of the frame covered by moving agents
    lanes: tuple[float, ...]  # lane anchor y (fractions of H)
    lane_mix: dict[str, float]
    walk_mix: dict[str, float]
    walk_streams: tuple[int, int]  # pavement streams of walkers (min, max)
    cross_mix: dict[str, float]
    parked: tuple[int, int]
    parked_mix: dict[str, float]
    standing: tuple[int, int]
    near_standing: tuple[int, int]
    stalls: tuple[int, int]
    signs: tuple[int, int]
    wires: tuple[int, int]
    resting_cows: tuple[int, int]
    pole_gap: tuple[float, float]  # pole spacing, fraction of W
    building_width: tuple[float, float]  # fraction of H
    camera: dict[str, float]
    dusk: float
    stop: float
    turn: float
    # Optical flow reads end-on motion (toward/away from the camera) lower per moving pixel than
    # side-on motion (fewer edges across the direction of travel; in the sparse, flat source street
    # side-on flow also spreads further around each vehicle). Up/down clips carry this much more
    # moving area so their foreground flow lands in the same tier; measured with Farnebaeck.
    vertical_coverage_gain: float = 1.0
    # Sensor noise of the footage: per-pixel Gaussian sigma (0-255 scale) added to every frame,
    # x DUSK_NOISE_GAIN at dusk (phone footage in low light). 0 = clean.
    sensor_noise: float = 0.0
    # Traffic speed of the style, x TIER_SPEED. The probe's tiers are quartiles of each domain's own
    # flow, so this shifts what "fast" means between the styles, not the class balance.
    speed_scale: float = 1.0


DUSK_NOISE_GAIN = 1.6


_STYLE = {
    "source": _StyleParams(
        coverage=(0.08, 0.095), lanes=(0.70, 0.845),
        lane_mix={"car": 0.8, "two_wheeler": 0.08, "auto_rickshaw": 0.12},
        walk_mix={"pedestrian": 1.0}, walk_streams=(0, 0),
        cross_mix={"car": 0.8, "two_wheeler": 0.08, "auto_rickshaw": 0.12},
        parked=(0, 2), parked_mix={"car": 1.0}, standing=(0, 2), near_standing=(0, 0),
        stalls=(0, 0), signs=(1, 2), wires=(0, 2), resting_cows=(0, 0),
        pole_gap=(0.55, 0.6), building_width=(0.8, 1.3),
        camera={"static": 0.9, "shake": 0.1},
        dusk=0.0, stop=0.1, turn=0.1, vertical_coverage_gain=1.45, speed_scale=0.45,
    ),
    "target": _StyleParams(
        coverage=(0.125, 0.15), lanes=(0.665, 0.765, 0.865),
        lane_mix={"auto_rickshaw": 0.3, "two_wheeler": 0.32, "car": 0.18, "cow": 0.08, "pedestrian": 0.12},
        walk_mix={"pedestrian": 0.8, "cow": 0.2}, walk_streams=(1, 2),
        cross_mix={"pedestrian": 0.3, "cow": 0.15, "auto_rickshaw": 0.3, "two_wheeler": 0.15, "car": 0.1},
        parked=(2, 5), parked_mix={"two_wheeler": 0.5, "auto_rickshaw": 0.3, "car": 0.2},
        standing=(3, 7), near_standing=(1, 2), stalls=(1, 3), signs=(2, 5), wires=(3, 7),
        resting_cows=(0, 1), pole_gap=(0.3, 0.5), building_width=(0.4, 0.8),
        camera={"static": 0.25, "pan_left": 0.15, "pan_right": 0.15, "zoom": 0.15, "shake": 0.3},
        dusk=0.35, stop=0.25, turn=0.3, vertical_coverage_gain=1.12,
    ),
}


def tier_speed(style: str, tier: str) -> float:
    """Planned agent speed of ``tier`` in ``style``, as a fraction of the frame width per frame."""
    return TIER_SPEED[tier] * _STYLE[style].speed_scale


def _style_code(style: str) -> int:
    return STYLES.index(style)


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")


def _pick(rng: np.random.Generator, mix: dict[str, float]) -> str:
    names = list(mix)
    p = np.array([mix[n] for n in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _rint(rng: np.random.Generator, lo_hi: tuple[int, int]) -> int:
    return int(rng.integers(lo_hi[0], lo_hi[1] + 1))
