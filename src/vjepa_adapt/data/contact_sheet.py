"""A PNG grid of sample frames for a person to look at: one row per clip, a label above each row,
and optionally coloured instance-mask overlays (agents filled, other instances outlined).
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from vjepa_adapt.storage import write_bytes

_BG = (24, 24, 28)
_TEXT = (235, 235, 235)


@dataclass
class SheetRow:
    """One clip on the sheet."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    instance_map: np.ndarray | None = None  # (T, H, W) int ids, 0 = background
    label: str = ""
    agent_ids: Sequence[int] | None = None  # ids drawn filled; others outlined. None = all filled


def instance_colour(i: int) -> tuple[int, int, int]:
    """A stable, well-spread RGB colour for instance id ``i`` (golden-ratio hues)."""
    h = (i * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def overlay_instances(frame: np.ndarray, ids: np.ndarray, agent_ids: Sequence[int] | None = None,
                      alpha: float = 0.45) -> np.ndarray:
    """Colour each instance of ``ids`` (H, W) on ``frame`` (H, W, 3) uint8 RGB."""
    out = frame.astype(np.float32)
    present = [int(i) for i in np.unique(ids) if i != 0]
    filled = set(present if agent_ids is None else (int(i) for i in agent_ids))
    for i in present:
        m = ids == i
        colour = np.array(instance_colour(i), np.float32)
        if i in filled:
            out[m] = out[m] * (1 - alpha) + colour * alpha
        border = m & ~cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        out[border] = colour if i in filled else (200, 200, 200)
    return np.clip(out, 0, 255).astype(np.uint8)


def render_contact_sheet(rows: Sequence[SheetRow], frames_per_clip: int = 4, scale: int = 2,
                         overlay_alpha: float = 0.45, with_raw: bool = True) -> np.ndarray:
    """The sheet as an (H, W, 3) uint8 RGB image.

    Per row: ``frames_per_clip`` frames spread evenly over the clip; with ``with_raw`` and masks, the
    raw frames first and the same frames with overlays next to them.
    """
    if not rows:
        raise ValueError("a contact sheet needs at least one clip")
    if frames_per_clip < 1 or scale < 1:
        raise ValueError("frames_per_clip and scale must be >= 1")
    tiles_per_row = []
    for row in rows:
        frames = np.asarray(row.frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be (T, H, W, 3), got {frames.shape} for row {row.label!r}")
        idx = np.linspace(0, len(frames) - 1, frames_per_clip).round().astype(int)
        tiles = []
        if row.instance_map is None or with_raw:
            tiles += [frames[i] for i in idx]
        if row.instance_map is not None:
            masks = np.asarray(row.instance_map)
            tiles += [overlay_instances(frames[i], masks[min(i, len(masks) - 1)], row.agent_ids, overlay_alpha)
                      for i in idx]
        tiles_per_row.append([cv2.resize(t, (t.shape[1] * scale, t.shape[0] * scale),
                                         interpolation=cv2.INTER_NEAREST) for t in tiles])
    pad, label_h = 4, 18
    tile_h = max(t.shape[0] for ts in tiles_per_row for t in ts)
    tile_w = max(t.shape[1] for ts in tiles_per_row for t in ts)
    ncols = max(len(ts) for ts in tiles_per_row)
    sheet_w = pad + ncols * (tile_w + pad)
    sheet_h = pad + len(rows) * (label_h + tile_h + pad)
    sheet = np.full((sheet_h, sheet_w, 3), _BG, np.uint8)
    for r, (row, tiles) in enumerate(zip(rows, tiles_per_row)):
        y = pad + r * (label_h + tile_h + pad)
        cv2.putText(sheet, row.label, (pad, y + label_h - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.42, _TEXT, 1,
                    cv2.LINE_AA)
        for c, tile in enumerate(tiles):
            x = pad + c * (tile_w + pad)
            sheet[y + label_h:y + label_h + tile.shape[0], x:x + tile.shape[1]] = tile
    return sheet


def write_contact_sheet(path: str | os.PathLike, rows: Sequence[SheetRow], frames_per_clip: int = 4,
                        scale: int = 2, overlay_alpha: float = 0.45, with_raw: bool = True) -> None:
    """Render the sheet (see :func:`render_contact_sheet`) and save it as PNG, atomically."""
    sheet = render_contact_sheet(rows, frames_per_clip, scale, overlay_alpha, with_raw)
    ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"OpenCV could not encode the contact sheet for {path}")
    write_bytes(path, png.tobytes())
