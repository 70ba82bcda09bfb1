"""Benchmark: motion features (16 flow pairs + the 23-D vector) per clip, Farnebäck vs DIS.

Frames are generated in memory (textured background + moving textured square), so this measures
flow + feature maths only, not video decoding. Usage:

    python bench/bench_motion.py [--clips 6] [--threads 1] [--sizes 128x96,384x288]
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from vjepa_adapt.motion import (
    extract_motion_features,
    features_from_flows,
    select_pair_indices,
)
from vjepa_adapt.motion.flow import compute_flow_batch


def make_clip(width: int, height: int, num_frames: int, seed: int) -> np.ndarray:
    """(T, H, W, 3) uint8: a textured background panning slowly with a textured square crossing it."""
    rng = np.random.default_rng(seed)
    bg = rng.uniform(0, 255, (height + 8, width + 2 * num_frames)).astype(np.float32)
    bg = cv2.GaussianBlur(bg, (0, 0), 1.5)
    side = max(8, height // 3)
    sq = cv2.GaussianBlur(rng.uniform(0, 255, (side, side)).astype(np.float32), (0, 0), 1.5)
    frames = []
    for t in range(num_frames):
        f = bg[4:4 + height, t:t + width].copy()  # 1 px/frame pan
        x = int(t * (width - side) / max(1, num_frames - 1))
        f[height // 3:height // 3 + side, x:x + side] = sq
        frames.append(np.repeat(np.clip(f, 0, 255).astype(np.uint8)[..., None], 3, axis=2))
    return np.stack(frames)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=6)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="cv2.setNumThreads (0 = OpenCV default)")
    ap.add_argument("--sizes", default="128x96,384x288")
    ap.add_argument("--backends", default="farneback,dis")
    args = ap.parse_args()
    if args.threads:
        cv2.setNumThreads(args.threads)
    starts = select_pair_indices(args.frames, args.pairs)
    print(f"{len(starts)} pairs per {args.frames}-frame clip, {args.clips} clips, cv2 threads={cv2.getNumThreads()}")
    print(f"{'backend':<10} {'size':>9} {'clips/s':>8} {'ms/clip':>8} {'flow ms/pair':>13} {'features ms/clip':>17}")
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.split("x"))
        clips = [make_clip(w, h, args.frames, s) for s in range(args.clips)]
        pairs = [np.stack([np.stack([c[i], c[i + 1]]) for i in starts]) for c in clips]
        for backend in args.backends.split(","):
            extract_motion_features(pairs[0], backend=backend)  # warm-up (allocations, DIS object)
            t0 = time.perf_counter()
            for p in pairs:
                extract_motion_features(p, backend=backend)
            total = time.perf_counter() - t0
            t0 = time.perf_counter()
            flows = compute_flow_batch([(a, b) for a, b in pairs[0]], backend=backend)
            t_flow = (time.perf_counter() - t0) / len(starts)
            t0 = time.perf_counter()
            features_from_flows(flows)
            t_feat = time.perf_counter() - t0
            print(f"{backend:<10} {size:>9} {args.clips / total:8.2f} {1000 * total / args.clips:8.1f} "
                  f"{1000 * t_flow:13.2f} {1000 * t_feat:17.2f}")


if __name__ == "__main__":
    main()
