"""Decode + sample + augment throughput (clips/s) against a bare PyAV decode of the same clips.

    python bench/bench_decode.py [--clips 12] [--frames 48] [--repeats 3]

Encodes synthetic-looking H.264 clips with PyAV into a temp folder at two sizes — demo (128x96,
64-px crop) and real-scale (480x384, 384-px crop) — then times, per clip:
  bare      PyAV threaded decode of every frame, no colour conversion (the floor)
  read      vjepa_adapt read_frames: 16 evenly spaced frames to RGB uint8
  +train    read + train_transform (one RandomResizedCrop for the clip, flip, normalise)
  +eval     read + eval_transform (short-side resize, centre crop, normalise)
Prints clips/s (wall clock) and CPU ms per clip, and each one's ratio to bare. One process, one
clip at a time, torch/OpenCV on one thread as in a loader worker (the decoder still threads):
multiply by the number of data-loader workers for a loader's rate.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np
import torch

from vjepa_adapt.data.transforms import eval_transform, train_transform
from vjepa_adapt.data.video import read_frames


def synth_frames(n: int, height: int, width: int, seed: int) -> np.ndarray:
    """A textured background panning right with a few moving blocks (compresses like video).  # (n, H, W, 3)"""
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 256, (height // 8 + 1, (width + 4 * n) // 8 + 1, 3), dtype=np.uint8)
    bg = np.kron(bg, np.ones((8, 8, 1), np.uint8))  # blocky texture
    out = np.empty((n, height, width, 3), np.uint8)
    boxes = rng.integers(0, min(height, width) // 2, (4, 2))
    for t in range(n):
        frame = bg[:height, 4 * t:4 * t + width].copy()
        for k, (y, x) in enumerate(boxes):
            y0, x0 = (y + 2 * t * (k + 1)) % (height - 16), (x + 3 * t) % (width - 16)
            frame[y0:y0 + 16, x0:x0 + 16] = (255, 60 * k, 0)
        out[t] = frame
    return out


def encode(path: Path, frames: np.ndarray, fps: int = 25) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "veryfast", "g": "25"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for p in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)


def bare_decode(path: Path) -> int:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.codec_context.thread_type = "AUTO"
        return sum(1 for _ in c.decode(s))


def time_per_clip(fn, paths, repeats: int) -> tuple[float, float]:
    """(clips/s by wall clock, CPU ms per clip over all threads), best of ``repeats``.

    CPU time is the steadier number on a shared machine; wall clock includes decoder threading.
    """
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        for p in paths:
            fn(p)
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return len(paths) / best_wall, 1000 * best_cpu / len(paths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--frames", type=int, default=48, help="frames per encoded clip (25 fps)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    # As in a data-loader worker (loader._init_worker): one intra-op thread for torch and OpenCV.
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    settings = [("demo 128x96 -> 64", 96, 128, 64), ("real 480x384 -> 384", 384, 480, 384)]
    print(f"{args.clips} clips x {args.frames} frames, 16 sampled per clip, best of {args.repeats}")
    cols = ("bare", "read", "+train", "+eval")
    print(f"{'setting':<22}{'':<12}" + "".join(f"{c:>9}" for c in cols) + "   ratio to bare (read/+train/+eval)")
    with tempfile.TemporaryDirectory() as tmp:
        for name, h, w, crop in settings:
            paths = []
            for i in range(args.clips):
                p = Path(tmp) / f"{h}_{i}.mp4"
                encode(p, synth_frames(args.frames, h, w, seed=i))
                paths.append(p)
            gen = np.random.default_rng(0)
            rates = [
                time_per_clip(bare_decode, paths, args.repeats),
                time_per_clip(lambda p: read_frames(p, 16), paths, args.repeats),
                time_per_clip(lambda p: train_transform(read_frames(p, 16), crop, gen), paths, args.repeats),
                time_per_clip(lambda p: eval_transform(read_frames(p, 16), crop), paths, args.repeats),
            ]
            walls, cpus = [r[0] for r in rates], [r[1] for r in rates]
            print(f"{name:<22}{'clips/s':<12}" + "".join(f"{r:9.1f}" for r in walls)
                  + "   " + "/".join(f"{r / walls[0]:.2f}" for r in walls[1:]))
            print(f"{'':<22}{'CPU ms/clip':<12}" + "".join(f"{c:9.1f}" for c in cpus)
                  + "   " + "/".join(f"{c / cpus[0]:.2f}" for c in cpus[1:]))


if __name__ == "__main__":
    main()
