"""Camera ego-motion: static, pan, forward zoom, shake, as per-frame affines canvas -> frame."""

from __future__ import annotations

from typing import Any

import numpy as np

from vjepa_adapt.world.geometry import _Geometry
from vjepa_adapt.world.style import _STYLE, _pick, tier_speed


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
        rate = rng.uniform(0.04, 0.08) * tier_speed(style, tier)  # per frame
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
