"""The street world itself: layout, agents, camera, light, and rendering of one planned clip.

A side view of a street (camera across the road): buildings and shop fronts, a far pavement, a
road with lanes, a near pavement; poles, overhead wires, signs, stalls and parked vehicles
(layout); pedestrians, cows, auto-rickshaws, cars and two-wheelers (agents) that move, stop,
turn and pass each other; a camera that holds still, pans, pushes forward (zoom) or shakes; day
or dusk light. Everything is drawn on a world canvas a little larger than the frame, then each
frame is the camera's view of that canvas (so masks and colours stay pixel-aligned).

Motion design (why the probe's flow labels match the plan): the moving agents of a clip travel
in its class direction at its tier's speed (fractions of the frame width per frame), laid out in
streams whose moving area per pixel of path is held constant; a labels-only pass then measures
the visible moving coverage and scales the clip's speed so speed x coverage lands on the tier's
target. Camera steps are whole pixels (sub-pixel resampling blur reads as motion to optical
flow) and the zoom rate follows the tier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from vjepa_adapt.data.street_sprites import Palette, Sprite, build_sprite
from vjepa_adapt.data.street_truth import Truth, extract_tracks, find_interactions

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


_STYLE = {
    "source": _StyleParams(
        coverage=(0.08, 0.095), lanes=(0.70, 0.845),
        lane_mix={"car": 0.8, "two_wheeler": 0.08, "auto_rickshaw": 0.12},
        walk_mix={"pedestrian": 1.0}, walk_streams=(0, 0),
        cross_mix={"car": 0.8, "two_wheeler": 0.08, "auto_rickshaw": 0.12},
        parked=(0, 2), parked_mix={"car": 1.0}, standing=(0, 2), near_standing=(0, 0),
        stalls=(0, 0), signs=(1, 2), wires=(0, 2), resting_cows=(0, 0),
        pole_gap=(0.55, 0.6), building_width=(0.8, 1.3),
        camera={"static": 0.5, "pan_left": 0.12, "pan_right": 0.12, "zoom": 0.12, "shake": 0.14},
        dusk=0.25, stop=0.1, turn=0.1, vertical_coverage_gain=1.45,
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


def _grain(rng: np.random.Generator, shape: tuple[int, int], sigma: float, strength: float) -> np.ndarray:
    noise = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    noise /= max(float(noise.std()), 1e-6)
    return 1.0 + strength * noise


def _static_thing(category: str, role: str, sprite: Sprite, x: float, y: float, T: int) -> _Thing:
    return _Thing(category, role, sprite, np.tile([x, y], (T, 1)).astype(np.float64), np.ones(T), np.ones(T, bool))


@dataclass
class _Layout:
    background: np.ndarray  # (Hc, Wc, 3) float32
    light: np.ndarray  # (Hc, Wc, 3) float32 multiplicative light map
    things: list[_Thing]
    lighting: str


def _build_layout(rng: np.random.Generator, style: str, geo: _Geometry) -> _Layout:
    """Buildings, pavements, road, wires, lighting and the static objects of one video."""
    sp = _STYLE[style]
    pal = Palette(style, rng)
    W, H, Wc, Hc, T = geo.width, geo.height, geo.canvas_w, geo.canvas_h, geo.num_frames
    dusk = bool(rng.random() < sp.dusk)
    img = np.zeros((Hc, Wc, 3), np.float32)
    emissive = np.zeros((Hc, Wc), np.float32)
    yi = lambda f: int(round(geo.y(f)))  # noqa: E731 - tiny local converter

    # Sky: a vertical gradient with soft clouds.
    top, bottom = ((250, 150, 95), (110, 85, 140)) if dusk else ((150, 190, 235), (210, 228, 245))
    ramp = np.linspace(0, 1, Hc, dtype=np.float32)[:, None, None]
    img[:] = np.array(bottom, np.float32) * ramp + np.array(top, np.float32) * (1 - ramp)
    img *= _grain(rng, (Hc, Wc), sigma=3.0, strength=0.05)[..., None]

    # Buildings with windows and a shop front each.
    x = -int(rng.integers(0, max(2, H // 4)))
    while x < Wc:
        bw = int(max(6, rng.uniform(*sp.building_width) * H))
        top_y = yi(rng.uniform(-0.05, 0.14 if style == "target" else 0.06))
        wall = np.array(pal.wall(), np.float32)
        x0, x1 = max(0, x), min(Wc, x + bw)
        if x1 > x0:
            region = img[top_y:yi(_BUILDING_BASE), x0:x1]
            region[:] = wall
            _draw_facade(img, emissive, rng, pal, geo, x, x + bw, top_y, dusk)
        x += bw + (int(rng.integers(0, max(2, H // 16))) if style == "target" else 0)

    # Pavements, kerbs, road.
    walk = (172, 168, 160) if style == "source" else (188, 165, 130)
    img[yi(_FAR_WALK[0]):yi(_FAR_WALK[1])] = walk
    img[yi(_NEAR_KERB[1]):] = walk
    for ya, yb in (_FAR_KERB, _NEAR_KERB):
        a, b = yi(ya), yi(yb)
        if style == "source":
            img[a:b] = (205, 205, 200)
        else:  # painted black-and-yellow kerb stones
            period = max(4, int(0.08 * H))
            for k, xs in enumerate(range(0, Wc, period)):
                img[a:b, xs:xs + period] = (240, 200, 30) if k % 2 else (30, 30, 30)
    tile = max(4, int(0.06 * H))
    for xs in range(0, Wc, tile):  # paving joints
        img[yi(_FAR_WALK[0]):yi(_FAR_WALK[1]), xs] *= 0.8
        img[yi(_NEAR_KERB[1]):, xs] *= 0.8
    ra, rb = yi(_ROAD[0]), yi(_ROAD[1])
    asphalt = (92, 92, 96) if style == "source" else (108, 102, 96)
    img[ra:rb] = asphalt
    if style == "target":  # patches, potholes, dust
        for _ in range(int(rng.integers(6, 14))):
            c = (int(rng.uniform(0, Wc)), int(rng.uniform(ra, rb)))
            axes = (int(rng.uniform(0.04, 0.15) * H), int(rng.uniform(0.01, 0.04) * H) + 1)
            shade = rng.choice([0.7, 0.85, 1.2, 1.35])
            cv2.ellipse(img, c, axes, 0, 0, 360, tuple(float(v * shade) for v in asphalt), -1)
    _draw_lane_markings(img, rng, geo, sp, style)
    # Fine + coarse grain everywhere: optical flow needs texture around agents, or it smears
    # their motion into the flat road around them.
    grain = _grain(rng, (Hc, Wc), sigma=0.8, strength=0.10) * _grain(rng, (Hc, Wc), sigma=2.5, strength=0.08)
    img *= grain[..., None]

    # Static objects: poles + wires, signs, stalls, parked vehicles, standing people, resting cows.
    things: list[_Thing] = []
    pole_xs = []
    px = rng.uniform(0, sp.pole_gap[0] * W)
    while px < Wc:
        pole_xs.append(px)
        px += rng.uniform(*sp.pole_gap) * W
    base = geo.y(_FAR_WALK_Y)
    for px in pole_xs:
        pole_h = base + 2  # from the pavement to above the top of the canvas
        things.append(_static_thing("pole", "layout", build_sprite("pole", pole_h, rng, pal), px, base, T))
    for _ in range(_rint(rng, sp.wires)):
        _draw_wire(img, rng, geo, dusk)
    far_items = [("sign", "layout")] * _rint(rng, sp.signs) + [("stall", "layout")] * _rint(rng, sp.stalls)
    far_items += [("pedestrian", "static")] * _rint(rng, sp.standing)
    far_items += [("cow", "static")] * _rint(rng, sp.resting_cows)
    for cat, role in far_items:
        x = rng.uniform(0, Wc)
        y = base + rng.uniform(-0.01, 0.015) * H
        size = _NOMINAL_HEIGHT[cat] * H * float(geo.persp(y))
        sprite = build_sprite(cat, size, rng, pal, facing=int(rng.choice([-1, 1])))
        things.append(_static_thing(cat, role, sprite, x, y, T))
    n_parked = _rint(rng, sp.parked)
    slots = np.sort(rng.uniform(0, Wc, size=n_parked)) if style == "target" else \
        (np.arange(n_parked) + rng.uniform(0.2, 0.8)) * (Wc / max(1, n_parked))
    for x in slots:
        cat = _pick(rng, sp.parked_mix)
        y = geo.y(_PARKING_Y)
        sprite = build_sprite(cat, _NOMINAL_HEIGHT[cat] * H * float(geo.persp(y)), rng, pal,
                              facing=int(rng.choice([-1, 1])))
        things.append(_static_thing(cat, "layout", sprite, float(x), y, T))
    for _ in range(_rint(rng, sp.near_standing)):
        cat = "stall" if rng.random() < 0.3 else "pedestrian"
        role = "layout" if cat == "stall" else "static"
        y = geo.y(_NEAR_WALK_Y + rng.uniform(0.0, 0.03))
        sprite = build_sprite(cat, _NOMINAL_HEIGHT[cat] * H * float(geo.persp(y)), rng, pal,
                              facing=int(rng.choice([-1, 1])))
        things.append(_static_thing(cat, role, sprite, rng.uniform(0, Wc), y, T))

    # Light: day is neutral; dusk dims and tints everything except lit shop fronts.
    if dusk:
        tint = np.array([0.78, 0.62, 0.66], np.float32) * rng.uniform(0.9, 1.05)
        lit = np.array([1.25, 1.1, 0.85], np.float32)
    else:
        tint = np.array([1.0, 1.0, 0.98], np.float32) * rng.uniform(0.95, 1.05)
        lit = tint
    e = cv2.GaussianBlur(emissive, (0, 0), 1.0)[..., None]
    light = tint * (1 - e) + lit * e
    return _Layout(img, light.astype(np.float32), things, "dusk" if dusk else "day")


def _draw_facade(img, emissive, rng, pal: Palette, geo: _Geometry, x0: int, x1: int, top_y: int, dusk: bool) -> None:
    H = geo.height
    vivid = pal.vivid
    yi = lambda f: int(round(geo.y(f)))  # noqa: E731
    shop_top, base = yi(0.29), yi(_BUILDING_BASE)
    # Upper floors: a grid of windows.
    win_w, win_h = max(2, int(0.07 * H)), max(2, int(0.08 * H))
    for wy in range(top_y + max(2, int(0.04 * H)), shop_top - win_h - 1, int(0.13 * H) + 1):
        for wx in range(x0 + max(2, int(0.05 * H)), x1 - win_w - 1, int(0.13 * H) + 1):
            glass = (40, 50, 70) if not dusk or rng.random() < 0.6 else (250, 215, 140)
            cv2.rectangle(img, (wx, wy), (wx + win_w, wy + win_h), glass, -1)
            if glass[0] > 200:
                cv2.rectangle(emissive, (wx, wy), (wx + win_w, wy + win_h), 1.0, -1)
            if vivid and rng.random() < 0.3:  # balcony rail
                cv2.line(img, (wx - 1, wy + win_h + 1), (wx + win_w + 1, wy + win_h + 1), pal.any_colour(), 1)
    # Shop front: shutter (muted) or open shop with goods and a bright board (vivid).
    if vivid or rng.random() < 0.3:
        cv2.rectangle(img, (x0 + 1, shop_top), (x1 - 2, base), (35, 30, 28), -1)
        for _ in range(int(max(1, (x1 - x0) * 0.6))):
            c = (int(rng.uniform(x0 + 1, x1 - 2)), int(rng.uniform(shop_top + 0.3 * (base - shop_top), base)))
            cv2.circle(img, c, max(1, int(0.012 * H)), pal.any_colour(), -1)
        if dusk:
            cv2.rectangle(emissive, (x0 + 1, shop_top), (x1 - 2, base), 1.0, -1)
        board = pal.any_colour()
        b0 = shop_top - max(2, int(0.06 * H))
        cv2.rectangle(img, (x0 + 1, b0), (x1 - 2, shop_top), board, -1)
        ink = (250, 250, 250) if sum(board) < 420 else (25, 25, 25)
        x = x0 + 3
        while x < x1 - 4:
            ln = int(rng.uniform(0.03, 0.1) * H) + 1
            cv2.rectangle(img, (x, b0 + 1), (min(x1 - 3, x + ln), shop_top - 2), ink, -1)
            x += ln + 2
    else:
        cv2.rectangle(img, (x0 + 1, shop_top), (x1 - 2, base), (150, 150, 150), -1)
        for sy in range(shop_top, base, 2):  # shutter slats
            cv2.line(img, (x0 + 1, sy), (x1 - 2, sy), (120, 120, 122), 1)


def _draw_lane_markings(img, rng, geo: _Geometry, sp: _StyleParams, style: str) -> None:
    lanes = sp.lanes
    H, Wc = geo.height, geo.canvas_w
    thick = max(1, int(round(0.012 * H)))
    for a, b in zip(lanes[:-1], lanes[1:]):
        y = int(round(geo.y((a + b) / 2 - 0.01)))
        dash, gap = int(0.1 * geo.width), int(0.07 * geo.width)
        x = -int(rng.integers(0, dash + gap))
        while x < Wc:
            if style == "source":
                cv2.rectangle(img, (x, y), (x + dash, y + thick - 1), (235, 235, 230), -1)
            elif rng.random() < 0.6:  # faded, broken paint
                fade = rng.uniform(0.35, 0.7)
                seg = img[y:y + thick, max(0, x):max(0, x + int(dash * rng.uniform(0.3, 1.0)))]
                seg[:] = seg * (1 - fade) + np.array([225, 215, 170], np.float32) * fade
            x += dash + gap


def _draw_wire(img, rng, geo: _Geometry, dusk: bool) -> None:
    Wc, H = geo.canvas_w, geo.height
    y0 = geo.y(rng.uniform(0.0, 0.2))
    y1 = y0 + rng.uniform(-0.06, 0.06) * H
    sag = rng.uniform(0.02, 0.08) * H
    xs = np.linspace(0, Wc - 1, 48)
    t = xs / (Wc - 1)
    ys = y0 + (y1 - y0) * t + sag * 4 * t * (1 - t)
    pts = np.stack([xs, ys], axis=1).round().astype(np.int32)
    cv2.polylines(img, [pts], False, (20, 20, 22) if not dusk else (15, 12, 20), 1, cv2.LINE_AA)


# ---------------------------------------------------------------------------------- agents


def _speed_profile(rng: np.random.Generator, T: int, stop: bool) -> tuple[np.ndarray, list[int] | None]:
    """(T,) multiplier of the cruise speed (1, or a smooth stop) and the stop window [start, end)."""
    m = np.ones(T)
    if not (stop and T >= 12):
        return m, None
    d = int(rng.integers(max(3, T // 8), max(4, T // 4) + 1))
    t0 = int(rng.integers(1, T - d - 1))
    ramp = min(3, d // 2)
    prof = np.zeros(d)
    prof[:ramp] = np.linspace(1, 0, ramp + 2)[1:-1]
    prof[d - ramp:] = np.linspace(0, 1, ramp + 2)[1:-1]
    m[t0:t0 + d] = prof
    return m, [t0, t0 + d]


def _heading_profile(rng: np.random.Generator, T: int, turn: bool) -> tuple[np.ndarray, list[int] | None]:
    """(T,) heading offset in radians (0, or one smooth swerve: a lane change or a step aside)
    and the turn window [start, end). The offset stays under 25 degrees, so a turn never changes
    which way the clip's motion points."""
    th = np.zeros(T)
    if not (turn and T >= 8):
        return th, None
    d = int(rng.integers(max(4, T // 6), max(5, T // 3) + 1))
    t0 = int(rng.integers(0, T - d))
    amp = np.deg2rad(rng.uniform(12, 25)) * rng.choice([-1, 1])
    th[t0:t0 + d] = amp * np.sin(np.linspace(0, np.pi, d)) ** 2
    return th, [t0, t0 + d]


@dataclass
class _Stream:
    """A file of agents moving along one line: a road lane, a pavement, or a crossing."""

    kind: str  # "lane" | "walk" | "cross"
    line: float  # lane/walk: anchor y; cross: anchor x (canvas coords)
    mix: dict[str, float]
    weight: float
    direction: str = "right"
    sprites: list[tuple[str, Sprite]] = field(default_factory=list)
    density: float = 0.0  # moving area per pixel of path (px^2 / px)


# Laid-out moving area over what ends up visible (nearer lanes hide part of farther ones, agents
# enter and leave, crossers are partly below the frame), measured over many clips; the
# visible-coverage pass in render_clip corrects what these average figures miss in one clip.
_LANE_VISIBLE = {"source": 0.98, "target": 0.88}
_CROSS_VISIBLE = 1.12
# Range of the speed correction that holds speed x visible moving coverage on the tier's target.
_SPEED_FACTOR = (0.7, 1.4)


def _build_agents(rng: np.random.Generator, plan: ClipPlan, geo: _Geometry) -> tuple[list[_Thing], dict[str, Any]]:
    """Moving agents for the clip's motion class, laid out to cover a target share of the frame."""
    sp = _STYLE[plan.style]
    pal = Palette(plan.style, rng)
    W, H, Wc = geo.width, geo.height, geo.canvas_w
    dvec = np.array(DIRECTION_VECTOR[plan.direction])
    vertical = plan.direction in ("up", "down")
    speed = TIER_SPEED[plan.tier] * W * rng.uniform(0.95, 1.05)  # px / frame
    target_cov = float(rng.uniform(*sp.coverage)) * (sp.vertical_coverage_gain if vertical else 1.0)
    target_area = target_cov * W * H  # visible moving px per frame
    gap = 0.04 * W

    if not vertical:
        streams = [_Stream("lane", geo.y(y + rng.uniform(-0.012, 0.012)), sp.lane_mix, rng.uniform(0.7, 1.3))
                   for y in sp.lanes]
        n_walk = _rint(rng, sp.walk_streams)
        streams += [_Stream("walk", geo.y(y), sp.walk_mix, rng.uniform(0.25, 0.45))
                    for y in [_FAR_WALK_STREAM_Y, _NEAR_WALK_Y][:n_walk]]
        _fill_stream_sprites(rng, pal, streams, geo)
        _allocate_density(streams, geo, target_area / _LANE_VISIBLE[plan.style], float(W), gap, 1)
    else:
        # Crossing files evenly spaced across the canvas, so the number in view barely changes
        # with a pan; add files until they can carry the moving-area budget.
        n_view = int(rng.integers(3, 5))
        while True:
            spacing = W / n_view
            phase = rng.uniform(0, spacing)
            streams = [_Stream("cross", x, sp.cross_mix, rng.uniform(0.8, 1.2), plan.direction)
                       for x in np.arange(phase - spacing, Wc + spacing, spacing)]
            _fill_stream_sprites(rng, pal, streams, geo)
            budget = target_area / _CROSS_VISIBLE
            if _allocate_density(streams, geo, budget, _crossing_path(geo, streams), gap, n_view) or n_view >= W // 4:
                break
            n_view += 1

    things: list[_Thing] = []
    for st in streams:
        if st.density <= 0:
            continue
        v = speed * (rng.uniform(0.85, 1.15) if st.kind != "cross" else rng.uniform(0.9, 1.1))
        things += _lay_out_stream(rng, pal, st, v, dvec, geo, gap, sp)
    info = {"tier_speed": TIER_SPEED[plan.tier], "planned_speed_px": speed, "target_coverage": target_cov,
            "streams": len([s for s in streams if s.density > 0])}
    return things, info


def _agent_height(cat: str, geo: _Geometry, y: float) -> float:
    return _NOMINAL_HEIGHT[cat] * geo.height * float(geo.persp(y))


def _crossing_scale(geo: _Geometry) -> float:
    """Mean size of a crosser over its visible path, relative to its drawn (nearest) size."""
    ys = np.linspace(geo.y(_CROSS_APPEAR_Y), geo.y(1.0), 16)
    return float(np.mean(geo.persp(ys)) / geo.persp(geo.y(1.0)))


def _crossing_path(geo: _Geometry, streams: list[_Stream]) -> float:
    # A crosser is seen from the far pavement until its head leaves the bottom of the frame.
    heights = [s.alpha.shape[0] for st in streams for _, s in st.sprites]
    return float(geo.y(1.0) - geo.y(_CROSS_APPEAR_Y)) + 0.5 * float(np.mean(heights)) * _crossing_scale(geo)


def _fill_stream_sprites(rng, pal: Palette, streams: list[_Stream], geo: _Geometry) -> None:
    # A pool of sprites per stream; their mean area and length set the stream's capacity.
    for st in streams:
        if st.sprites:
            continue
        for _ in range(6):
            st.sprites.append(_new_agent_sprite(rng, pal, st, geo))


def _new_agent_sprite(rng, pal: Palette, st: _Stream, geo: _Geometry) -> tuple[str, Sprite]:
    cat = _pick(rng, st.mix)
    if st.kind != "cross":
        return cat, build_sprite(cat, _agent_height(cat, geo, st.line), rng, pal)
    # Crossers are drawn at their nearest (largest) size; vehicles seen end-on.
    view = "front" if st.direction == "down" else "back"
    return cat, build_sprite(cat, _agent_height(cat, geo, geo.y(1.0)), rng, pal, view=view)


def _footprint(st: _Stream, sprite: Sprite, geo: _Geometry) -> tuple[float, float]:
    """(mean area, length along the path) of one agent of the stream."""
    if st.kind == "cross":
        k = _crossing_scale(geo)
        return sprite.area * k * k, sprite.alpha.shape[0] * k
    return sprite.area, float(sprite.alpha.shape[1])


def _allocate_density(streams: list[_Stream], geo: _Geometry, target_area: float, path_len: float,
                      gap: float, n_in_view: int) -> bool:
    """Share the moving-area budget across streams up to each one's packing capacity.

    Returns False when crossing files cannot hold the budget (the caller adds files).
    """
    caps, weights = [], []
    for st in streams:
        fp = np.array([_footprint(st, s, geo) for _, s in st.sprites])  # (k, 2)
        caps.append(0.6 * float(fp[:, 0].mean()) / float(fp[:, 1].mean() + gap))
        weights.append(st.weight)
    caps_arr, w = np.array(caps), np.array(weights)
    if streams[0].kind == "cross":  # n_in_view files share the budget; each gets its weighted part
        want = target_area / (n_in_view * path_len) * w / w.mean()
        if not np.all(caps_arr >= want):
            return False
        dens = want
    else:
        need = target_area / path_len
        dens = np.zeros(len(streams))
        active = np.ones(len(streams), bool)
        for _ in range(len(streams)):  # water-filling: capped streams pass their excess on
            share = (need - dens[~active].sum()) * w * active / max(1e-9, (w * active).sum())
            over = active & (share > caps_arr)
            dens = np.where(active, np.minimum(share, caps_arr), dens)
            if not over.any():
                break
            active &= ~over
    for st, d in zip(streams, dens):
        st.density = float(d)
    return True


def _lay_out_stream(rng, pal: Palette, st: _Stream, v: float, dvec: np.ndarray, geo: _Geometry,
                    gap: float, sp: _StyleParams) -> list[_Thing]:
    """Place agents along the stream in slots sized by their area, then plan their motion.

    Slot length = area / density, so the moving area per pixel of path is the stream's density
    wherever the view is: coverage stays steady while agents enter and leave. Enough agents are
    queued upstream for the fastest speed the coverage correction may choose.
    """
    T = geo.num_frames
    cross = st.kind == "cross"
    travel = v * (T - 1) * _SPEED_FACTOR[1]
    if cross:
        lo, hi = geo.y(_CROSS_APPEAR_Y), geo.canvas_h + geo.height * 0.3  # path (anchor y)
        span_lo, span_hi = (lo - travel - 2, hi) if dvec[1] > 0 else (lo, hi + travel + 2)
    else:
        lmax = 0.6 * geo.height
        span_lo, span_hi = -lmax - travel, geo.canvas_w + lmax + travel
    things = []
    pos = span_lo - rng.uniform(0, 40)
    debt = 0.0  # slot length owed after a long agent needed more room than its area allowed
    k = 0
    while pos < span_hi:
        cat, sprite = st.sprites[k] if k < len(st.sprites) else _new_agent_sprite(rng, pal, st, geo)
        k += 1
        area, length = _footprint(st, sprite, geo)
        room = length + gap
        slot = area / max(st.density, 1e-9)
        if slot < room:
            debt += room - slot
            slot = room
        else:
            pay = min(debt, slot - room)
            slot -= pay
            debt -= pay
        centre = pos + slot / 2 + rng.uniform(-0.25, 0.25) * (slot - room)
        pos += slot
        if not cross and dvec[0] < 0:
            sprite = Sprite(sprite.rgb[:, ::-1].copy(), sprite.alpha[:, ::-1].copy(), sprite.anchor)
        can_turn = cat in ("pedestrian", "two_wheeler", "cow")
        stop = rng.random() < sp.stop and _SPEED_FACTOR[1] * v * T / 8 < slot - room
        mult, stop_window = _speed_profile(rng, T, stop)
        heading, turn_window = _heading_profile(rng, T, can_turn and rng.random() < sp.turn)
        # Integrate velocity: travel along dvec, swerve sideways by the heading offset.
        side = np.array([-dvec[1], dvec[0]])
        step = v * mult[:, None] * (np.cos(heading)[:, None] * dvec + np.sin(heading)[:, None] * side)
        path = np.concatenate([np.zeros((1, 2)), np.cumsum(step[:-1], axis=0)])  # (T, 2)
        start = np.array([centre, st.line]) if not cross else np.array([st.line, centre])
        thing = _Thing(cat, "agent", sprite, start + path, np.ones(T), np.ones(T, bool), kind=st.kind, path=path,
                       events={"stop_frames": stop_window, "turn_frames": turn_window})
        thing.set_speed_factor(1.0, geo)
        things.append(thing)
    return things


# ---------------------------------------------------------------------------------- camera


def _build_camera(rng: np.random.Generator, style: str, tier: str, geo: _Geometry
                  ) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-frame affine (T, 2, 3) from the world canvas to the frame, and a description."""
    sp = _STYLE[style]
    W, H, T = geo.width, geo.height, geo.num_frames
    mode = _pick(rng, sp.camera)
    cx = np.full(T, geo.canvas_w / 2.0)
    cy = np.full(T, geo.canvas_h / 2.0)
    zoom = np.ones(T)
    t = np.arange(T, dtype=np.float64)
    info: dict[str, Any] = {"mode": mode}
    shake_room = 0.03 * W
    if mode in ("pan_left", "pan_right"):
        room = 2 * (geo.margin_x - shake_room - 1)
        v = min(rng.uniform(0.004, 0.009) * W, room / max(1, T - 1))
        sign = 1.0 if mode == "pan_right" else -1.0  # camera turns right: the scene slides left
        cx = cx + sign * v * (t - (T - 1) / 2)
        info["pan_speed"] = v / W
    elif mode == "zoom":
        # Pushing forward makes radial flow that the per-pair median does not remove; its rate
        # follows the tier so it stays ~5-10% of the agents' foreground flow.
        rate = rng.uniform(0.04, 0.08) * TIER_SPEED[tier]  # per frame
        zoom = np.exp(rate * t)
        info["zoom_rate"] = rate
    if mode == "shake" or (mode.startswith("pan") and rng.random() < 0.3):
        amp = rng.uniform(0.003, 0.006) * W
        raw = rng.standard_normal((T + 4, 2))
        smooth = (raw[:-4] + 2 * raw[1:-3] + 3 * raw[2:-2] + 2 * raw[3:-1] + raw[4:]) / 9.0
        smooth = smooth / max(float(smooth.std()), 1e-6) * amp
        cx = cx + np.clip(smooth[:, 0], -shake_room, shake_room)
        cy = cy + np.clip(smooth[:, 1], -0.6 * geo.margin_y, 0.6 * geo.margin_y)
        info["shake_amplitude"] = amp / W
    if mode != "zoom":
        # Whole-pixel camera steps: a sub-pixel shift resamples the frame, and the blur that
        # varies with the sub-pixel phase reads as motion everywhere to optical flow.
        cx, cy = np.round(cx), np.round(cy)
    aff = np.zeros((T, 2, 3))
    aff[:, 0, 0] = zoom
    aff[:, 1, 1] = zoom
    aff[:, 0, 2] = W / 2.0 - zoom * cx
    aff[:, 1, 2] = H / 2.0 - zoom * cy
    return aff, info


# ---------------------------------------------------------------------------------- render


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


