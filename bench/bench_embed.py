"""Does decoding hide behind compute in the embed stage? ``embed_clips`` vs the bare encoder forward.

For the demo size (64 px, patch 16) and 128 px (patch 16) it times, on the same real synthetic H.264
clips and with the same batch size:

* decode: the embed stage's own dataset (``data.loader.ClipDataset``, eval transform) in one process;
* bare: ``encode_full`` on the pre-decoded tensors (no decoding, no files) — the ceiling;
* embed: ``vjepa_adapt.evaluate.embed.embed_clips`` end to end (decode in DataLoader workers, pooling,
  chunk files), for each ``--workers`` count;

and prints clips/s and embed/bare (goal >= 0.9: decoding hidden behind compute).

    python bench/bench_embed.py                  # ~1-2 min on 2 cores
    python bench/bench_embed.py --threads 1      # on a CPU shared with other jobs

Rows with torch's default thread count can be far slower when other processes load the cores (see
bench_train.py); the load average is printed. Compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from vjepa_adapt.data.clips import Clip, load_clips
from vjepa_adapt.data.loader import ClipDataset
from vjepa_adapt.evaluate.embed import embed_clips
from vjepa_adapt.models.vjepa import autocast_context, build_model, encode_full
from vjepa_adapt.world import generate_world

FRAMES = 16


def make_clips(root: Path, name: str, width: int, height: int, num_clips: int) -> list[Clip]:
    folder = root / name
    generate_world(folder, num_clips=num_clips, style="target", seed=0, width=width, height=height,
                   num_frames=32, fps=16.0, contact_sheet=False)
    return load_clips(folder / "manifest.jsonl")


def decode_all(clips: list[Clip], size: int) -> tuple[list[torch.Tensor], float]:
    """Every clip through the embed stage's dataset in this process: (videos, seconds)."""
    ds = ClipDataset(clips, num_frames=FRAMES, size=size, seed=0, train=False)
    t0 = time.perf_counter()
    videos = []
    for i in range(len(ds)):
        item = ds[i]
        if "video" not in item:
            raise RuntimeError(f"clip {clips[i].clip_id} failed to decode: {item.get('error')}")
        videos.append(item["video"])  # (T, 3, S, S)
    return videos, time.perf_counter() - t0


@torch.no_grad()
def time_bare(encoder: torch.nn.Module, videos: list[torch.Tensor], batch: int, dtype: str) -> float:
    """Seconds for ``encode_full`` over all clips in batches of ``batch`` (after one warm-up batch)."""
    batches = [torch.stack(videos[i:i + batch]) for i in range(0, len(videos), batch)]  # (B, T, 3, S, S)
    with autocast_context("cpu", dtype):
        encode_full(encoder, batches[0])
        t0 = time.perf_counter()
        for video in batches:
            encode_full(encoder, video)  # (B, N, D)
        return time.perf_counter() - t0


def time_embed(encoder: torch.nn.Module, clips: list[Clip], size: int, batch: int, chunk: int, workers: int,
               dtype: str, out_dir: Path) -> float:
    t0 = time.perf_counter()
    result = embed_clips(encoder, clips, out_dir, num_frames=FRAMES, size=size, batch_size=batch,
                         chunk_size=chunk, dtype=dtype, num_workers=workers)
    seconds = time.perf_counter() - t0
    if result.done != len(clips):
        raise RuntimeError(f"embed_clips encoded {result.done} of {len(clips)} clips")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=64, help="clips at 64 px (one embed chunk at the default 64)")
    ap.add_argument("--clips128", type=int, default=32, help="clips at 128 px")
    ap.add_argument("--chunk", type=int, default=64, help="embed.chunk_size (a fresh DataLoader per chunk)")
    ap.add_argument("--batch", type=int, default=16, help="embed.batch_size (the demo default is 16)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, nargs="+", default=[0, 1], help="torch threads; 0 = torch's default")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--quick", action="store_true", help="64 px only")
    args = ap.parse_args()
    logging.getLogger("vjepa_adapt").setLevel(logging.WARNING)
    hf_logging.disable_progress_bar()

    load0 = os.getloadavg()
    t_start = time.perf_counter()
    default_threads = torch.get_num_threads()
    # (crop, source width, height, clips)
    sizes = [(64, 128, 96, args.clips)] + ([] if args.quick else [(128, 160, 128, args.clips128)])
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_embed_") as tmp:
        root = Path(tmp)
        for crop, width, height, num_clips in sizes:
            clips = make_clips(root, f"s{width}x{height}", width, height, num_clips)
            torch.manual_seed(0)
            encoder = build_model("tiny", crop_size=crop, frames_per_clip=FRAMES, patch_size=16).encoder.eval()
            for threads in args.threads:
                torch.set_num_threads(threads or default_threads)
                videos, t_decode = decode_all(clips, crop)
                t_bare = time_bare(encoder, videos, args.batch, args.dtype)
                # Each chunk builds a fresh DataLoader: its first batch is decoded while the encoder
                # idles, whatever the worker count. Perfect overlap of the rest gives this ceiling.
                n_chunks = -(-len(clips) // args.chunk)
                fill_s = n_chunks * min(args.batch, len(clips)) * t_decode / len(clips)
                row = dict(crop=crop, threads=threads or default_threads, n=len(clips),
                           decode=len(clips) / t_decode, bare=len(clips) / t_bare, bound=t_bare / (t_bare + fill_s),
                           embed={})
                for workers in args.workers:
                    out = root / f"embed-{crop}-t{threads}-w{workers}"
                    row["embed"][workers] = len(clips) / time_embed(encoder, clips, crop, args.batch, args.chunk,
                                                                    workers, args.dtype, out)
                rows.append(row)
            torch.set_num_threads(default_threads)
    load1 = os.getloadavg()

    print(f"torch {torch.__version__}, default threads {default_threads}, cpus {os.cpu_count()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, load avg (1/5/15 min) before "
          f"{load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, after {load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f}")
    print(f"tiny encoder, patch 16, {FRAMES} frames, {args.dtype}, batch {args.batch}, chunk {args.chunk}; clips/s "
          f"(decode: one process, no model; bare: encode_full on pre-decoded tensors; bound: best embed/bare "
          f"when each chunk's first batch is decoded with the encoder idle)")
    cols = " ".join(f"{f'embed w{w}':>9} {'/bare':>6}" for w in args.workers)
    print(f"{'crop':>4} {'clips':>5} {'th':>2} {'decode':>7} {'bare':>7} {'bound':>5} {cols}")
    for r in rows:
        cells = " ".join(f"{r['embed'][w]:>9.1f} {r['embed'][w] / r['bare']:>6.2f}" for w in args.workers)
        print(f"{r['crop']:>4} {r['n']:>5} {r['threads']:>2} {r['decode']:>7.1f} {r['bare']:>7.1f} {r['bound']:>5.2f} "
              f"{cells}")
    best = {(r["crop"], r["threads"]): max(r["embed"].items(), key=lambda kv: kv[1]) for r in rows}
    worst = min(rows, key=lambda r: max(r["embed"].values()) / r["bare"])
    w_best, rate = best[(worst["crop"], worst["threads"])]
    print(f"summary: embed/bare with the best worker count is >= {rate / worst['bare']:.2f} in every row "
          f"(lowest: {worst['crop']} px, {worst['threads']} threads, {w_best} workers); goal >= 0.9; "
          f"total {time.perf_counter() - t_start:.0f}s")


if __name__ == "__main__":
    main()
