"""Benchmark: Ch 11a segment (classical backend) and factorize, clips/s, against bare decoding.

For each size a synthetic target world is rendered into a temp folder (not timed), then per clip:

- decode:    the segment stage's frame read (``segment.num_frames`` frames) -- the baseline
- segment:   camera steps + classical moving regions + tracklets + agent filter + interactions
- factorize: D_L / D_A / D_I frames + the motion_aux vector of every factor clip (no file writing)

Sizes: the demo world (128x96, 32 frames) and 512x384 ("384 px": the real-scale crop side).
Usage:

    python bench/bench_segment.py [--clips 6] [--sizes 128x96,512x384] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2

from vjepa_adapt import storage
from vjepa_adapt.factors import (
    FactorParams,
    build_factor_frames,
    factor_motion,
    plan_factors,
    resample_indices,
)
from vjepa_adapt.segmentation.classical import ClassicalSegmenter
from vjepa_adapt.segmentation.clip import TrackParams, segment_clip
from vjepa_adapt.segmentation.stage import Sampling, read_clip_frames
from vjepa_adapt.world import generate_world


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=6)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--sizes", default="128x96,512x384")
    ap.add_argument("--threads", type=int, default=1, help="cv2.setNumThreads (0 = OpenCV default)")
    args = ap.parse_args()
    if args.threads:
        cv2.setNumThreads(args.threads)
    sampling = Sampling(num_frames=args.frames, short_side=None)
    seg, track, fparams = ClassicalSegmenter(), TrackParams(), FactorParams()
    print(f"{args.clips} target clips per size, {args.frames} frames, cv2 threads={cv2.getNumThreads()}")
    print(f"{'size':>9} {'decode clips/s':>15} {'segment clips/s':>16} {'x decode':>9} {'factorize clips/s':>18} "
          f"{'x decode':>9} {'factor clips/clip':>18}")
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            world = Path(tmp)
            generate_world(world, num_clips=args.clips, style="target", seed=3, width=w, height=h,
                           num_frames=args.frames, clips_per_video=2, contact_sheet=False)
            paths = [str(world / r["path"]) for r in storage.read_jsonl(world / "manifest.jsonl")]
            read_clip_frames(paths[0], sampling)  # warm-up
            t0 = time.perf_counter()
            decoded = [read_clip_frames(p, sampling) for p in paths]
            t_decode = time.perf_counter() - t0
            t0 = time.perf_counter()
            masks = [segment_clip(f"c{i}", f, idx, seg, track) for i, (f, idx) in enumerate(decoded)]
            t_segment = time.perf_counter() - t0
            t0 = time.perf_counter()
            n_factor = 0
            for (frames, _), m in zip(decoded, masks):
                for spec in plan_factors(m, fparams)[0]:
                    full = build_factor_frames(frames, m, spec, fparams, full_rate=True)
                    _ = full[resample_indices(*spec.window, fparams.num_frames) - spec.window[0]]
                    factor_motion(full, num_pairs=16, backend="farneback", max_side=256)
                    n_factor += 1
            t_factor = time.perf_counter() - t0
        n = len(paths)
        dec, sg, fc = n / t_decode, n / t_segment, n / t_factor
        print(f"{size:>9} {dec:15.1f} {sg:16.2f} {sg / dec:9.3f} {fc:18.2f} {fc / dec:9.3f} {n_factor / n:18.1f}")


if __name__ == "__main__":
    main()
