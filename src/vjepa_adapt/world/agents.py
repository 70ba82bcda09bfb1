"""The moving agents of one clip: streams of walkers and traffic laid out for the clip's motion class."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vjepa_adapt.world.geometry import ClipPlan, _Geometry, _Thing
from vjepa_adapt.world.sprites import Palette, Sprite, build_sprite
from vjepa_adapt.world.style import (
    _CROSS_APPEAR_Y,
    _FAR_WALK_STREAM_Y,
    _NEAR_WALK_Y,
    _NOMINAL_HEIGHT,
    _STYLE,
    DIRECTION_VECTOR,
    _pick,
    _rint,
    _StyleParams,
    tier_speed,
)


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
    speed = tier_speed(plan.style, plan.tier) * W * rng.uniform(0.95, 1.05)  # px / frame
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
    info = {"tier_speed": tier_speed(plan.style, plan.tier), "planned_speed_px": speed, "target_coverage": target_cov,
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
