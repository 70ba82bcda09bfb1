"""The scene of one video: buildings and shop fronts, pavements, road, wires, static objects, light."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vjepa_adapt.world.geometry import _Geometry, _static_thing, _Thing
from vjepa_adapt.world.sprites import Palette, build_sprite
from vjepa_adapt.world.style import (
    _BUILDING_BASE,
    _FAR_KERB,
    _FAR_WALK,
    _FAR_WALK_Y,
    _NEAR_KERB,
    _NEAR_WALK_Y,
    _NOMINAL_HEIGHT,
    _PARKING_Y,
    _ROAD,
    _STYLE,
    _pick,
    _rint,
    _StyleParams,
)


def _grain(rng: np.random.Generator, shape: tuple[int, int], sigma: float, strength: float) -> np.ndarray:
    noise = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    noise /= max(float(noise.std()), 1e-6)
    return 1.0 + strength * noise


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
