"""Generating a world: plan clips (video, motion class), render them in parallel, manifest, contact sheet."""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vjepa_adapt.data.encode import write_video
from vjepa_adapt.progress import get_logger, progress
from vjepa_adapt.storage import write_jsonl
from vjepa_adapt.world.geometry import ClipPlan
from vjepa_adapt.world.render import render_clip
from vjepa_adapt.world.style import MOTION_TIERS, _check_style, _style_code
from vjepa_adapt.world.truth import load_truth, save_truth

log = get_logger("synthetic")


def plan_world(
    num_clips: int, style: str, seed: int, clips_per_video: int = 4, vertical_share: float = 0.125
) -> list[ClipPlan]:
    """Assign every clip a video and a motion class.

    Each video is planned from its own seed, so a world of N clips is the first N clips of any
    larger world with the same arguments. Inside a video the tiers are a shuffled cycle of the four
    (any split by video keeps them near 25% each: the probe cuts tiers at train quantiles) and
    right/left alternate in shuffled order; each clip goes up/down instead with probability
    ``vertical_share``.
    """
    _check_style(style)
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    if clips_per_video < 1:
        raise ValueError(f"clips_per_video must be >= 1, got {clips_per_video}")
    if not 0.0 <= vertical_share <= 1.0:
        raise ValueError(f"vertical_share must be in [0, 1], got {vertical_share}")
    plans = []
    for v in range(math.ceil(num_clips / clips_per_video)):
        rng = np.random.default_rng([seed, _style_code(style), 7919, v])
        tiers: list[str] = []
        while len(tiers) < clips_per_video:
            tiers += [MOTION_TIERS[i] for i in rng.permutation(len(MOTION_TIERS))]
        first = int(rng.integers(2))
        sides = [("right", "left")[(first + c) % 2] for c in range(clips_per_video)]
        sides = [sides[i] for i in rng.permutation(clips_per_video)]
        vertical = rng.random(clips_per_video) < vertical_share
        ups = rng.random(clips_per_video) < 0.5
        video_id = f"{style}_v{v:04d}"
        for c in range(min(clips_per_video, num_clips - v * clips_per_video)):
            direction = ("up" if ups[c] else "down") if vertical[c] else sides[c]
            plans.append(ClipPlan(f"{video_id}_c{c:02d}", video_id, v, c, style, tiers[c], direction))
    return plans


@dataclass(frozen=True)
class WorldClip:
    """One manifest line; ``path`` and ``truth`` are relative to the manifest's folder."""

    clip_id: str
    path: str
    video_id: str
    style: str
    motion_class: str
    truth: str

    def to_row(self) -> dict[str, str]:
        return asdict(self)


def _generate_one(out_dir: str, plan: ClipPlan, seed: int, width: int, height: int, num_frames: int,
                  fps: float, crf: int, skip_existing: bool) -> WorldClip:
    rec = WorldClip(plan.clip_id, f"videos/{plan.clip_id}.mp4", plan.video_id, plan.style, plan.motion_class,
                    f"truth/{plan.clip_id}.truth.npz")
    video_path, truth_path = Path(out_dir) / rec.path, Path(out_dir) / rec.truth
    if skip_existing and video_path.exists() and truth_path.exists():
        return rec  # same seed and settings give the same clip: nothing to redo
    frames, truth = render_clip(plan, seed=seed, width=width, height=height, num_frames=num_frames, fps=fps)
    write_video(video_path, frames, fps=fps, crf=crf)
    save_truth(truth_path, truth)
    return rec


def generate_world(
    out_dir: str | os.PathLike,
    *,
    num_clips: int,
    style: str = "target",
    seed: int = 0,
    width: int = 128,
    height: int = 96,
    num_frames: int = 32,
    fps: float = 16.0,
    clips_per_video: int = 4,
    vertical_share: float = 0.125,
    crf: int = 18,
    num_workers: int = 1,
    skip_existing: bool = False,
    contact_sheet: bool = True,
) -> list[dict[str, str]]:
    """Generate ``num_clips`` clips of one style into ``out_dir``; returns the manifest rows.

    Same arguments give byte-identical truth files. With ``skip_existing`` a clip whose video and
    truth are both on disk is not rendered again (resume after an interruption); the manifest and
    contact sheet are always rewritten.
    """
    _check_style(style)
    if width % 2 or height % 2:
        raise ValueError(f"width and height must be even for H.264 yuv420p, got {width}x{height}")
    plans = plan_world(num_clips, style, seed, clips_per_video, vertical_share)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    args = (seed, width, height, num_frames, fps, crf, skip_existing)
    records: list[WorldClip]
    if num_workers > 1:
        # spawn, not fork: the caller may hold torch/OpenMP threads that a forked child would inherit.
        with ProcessPoolExecutor(max_workers=num_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_generate_one, str(out), p, *args) for p in plans]
            records = [f.result() for f in progress(futures, desc=f"synth {style}", total=len(futures), unit="clip")]
    else:
        records = [_generate_one(str(out), p, *args)
                   for p in progress(plans, desc=f"synth {style}", total=len(plans), unit="clip")]
    rows = [r.to_row() for r in records]
    write_jsonl(out / "manifest.jsonl", rows)
    if contact_sheet:
        write_world_contact_sheet(out, rows)
    dt = time.perf_counter() - t0
    log.info("synth: %d %s clips (%d videos) in %.1fs (%.1f clips/s) -> %s", len(rows), style,
             len({r["video_id"] for r in rows}), dt, len(rows) / max(dt, 1e-9), out)
    return rows


def write_world_contact_sheet(out_dir: str | os.PathLike, rows: list[dict[str, str]], num_clips: int = 6,
                              frames_per_clip: int = 4) -> Path:
    """Contact sheet of a few clips (one per motion class where possible) with mask overlays."""
    from vjepa_adapt.data.contact_sheet import SheetRow, write_contact_sheet

    out = Path(out_dir)
    chosen, classes = [], set()
    for r in rows:  # one clip per class first, then fill up
        if r["motion_class"] not in classes and len(chosen) < num_clips:
            chosen.append(r)
            classes.add(r["motion_class"])
    for r in rows:
        if len(chosen) >= num_clips:
            break
        if r not in chosen:
            chosen.append(r)
    sheet_rows = []
    for r in chosen:
        truth = load_truth(out / r["truth"])
        frames = _decode_frames(out / r["path"])
        cam = truth.meta.get("camera", {}).get("mode", "?")
        label = f"{r['style']} | {r['motion_class']} | cam {cam} | {truth.meta.get('lighting', '?')}"
        sheet_rows.append(SheetRow(frames, truth.instance_map, label, agent_ids=[o["id"] for o in truth.objects
                                                                                 if o["is_agent"]]))
    path = out / "contact_sheet.png"
    scale = 2 if sheet_rows and sheet_rows[0].frames.shape[2] <= 160 else 1  # small frames are upscaled
    write_contact_sheet(path, sheet_rows, frames_per_clip=frames_per_clip, scale=scale)
    return path


def _decode_frames(path: Path) -> np.ndarray:
    """All frames of a video we just wrote, (T, H, W, 3) uint8 RGB (the sheet shows what was encoded)."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
