"""Frozen-encoder features for every clip: the pooled token grid (fp16) and its mean vector.

Work is cut into chunks of clips; each finished chunk is one atomic file, so an interrupted run
resumes at the first missing chunk and never recomputes a finished one. The chunks are the
engine's parts (:mod:`vjepa_adapt.engine`): in this process, sharded by rank, or on Ray. Decoding runs in DataLoader
workers so it overlaps with the encoder's compute.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vjepa_adapt import storage
from vjepa_adapt.data.clips import Clip
from vjepa_adapt.data.loader import (
    ClipDataset,
    FrameReader,
    batch_to_device,
    build_eval_loader,
)
from vjepa_adapt.models.pooling import mean_pool, pool_tokens
from vjepa_adapt.models.vjepa import autocast_context, encode_full, token_grid
from vjepa_adapt.progress import get_logger, progress
from vjepa_adapt.stage_result import StageResult

log = get_logger("embed")
FEATURES_FILE = "features.npz"


def shuffle_frames(video: torch.Tensor, seed: int, clip_ids: Sequence[str]) -> torch.Tensor:
    """Frame-shuffled baseline: permute each clip's frames (seeded per clip). (B, T, 3, H, W)."""
    out = torch.empty_like(video)
    for i, cid in enumerate(clip_ids):
        g = np.random.default_rng([seed, *cid.encode()])
        out[i] = video[i, torch.from_numpy(g.permutation(video.shape[1]))]
    return out


def embed_clips(
    encoder: nn.Module,
    clips: Sequence[Clip],
    out_dir: str | Path,
    *,
    num_frames: int,
    size: int,
    batch_size: int = 16,
    chunk_size: int = 64,
    pooled_grid: tuple[int, int, int] = (1, 4, 4),
    device: str = "cpu",
    dtype: str = "fp32",
    num_workers: int = 0,
    frame_shuffle_seed: int | None = None,
    extra_features: Callable[[torch.Tensor], torch.Tensor] | None = None,
    read: FrameReader | None = None,
) -> StageResult:
    """Encode ``clips`` into ``out_dir/features.npz``: clip_ids (N,), tokens (N, n, D') fp16, mean (N, D') fp32.

    ``extra_features(tokens (B, N, D)) -> (B, E)`` appends a per-clip vector to every pooled token and
    to the mean (the head-only arms append their head's hidden vector): D' = D + E.
    In this process (under torchrun: this rank's share of the chunks; rank 0 merges). The stage runs
    the same work through :func:`vjepa_adapt.engine.run_configured` (also on Ray).
    """
    from vjepa_adapt.engine import run_job

    work = make_embed_work(encoder, num_frames=num_frames, size=size, batch_size=batch_size, pooled_grid=pooled_grid,
                           device=device, dtype=dtype, num_workers=num_workers,
                           frame_shuffle_seed=frame_shuffle_seed, extra_features=extra_features, read=read)
    parts = run_job(embed_job(clips, out_dir, chunk_size, lambda: work), engine="local")
    return StageResult() if parts is None else merge_chunks(out_dir, parts)


def embed_job(clips: Sequence[Clip], out_dir: str | Path, chunk_size: int, make_worker: Callable[[], Any]) -> Any:
    """The embed stage as an engine job: chunks of ``chunk_size`` clips → ``out_dir/chunks/chunk-KKKKK.npz``."""
    from vjepa_adapt.engine import ClipJob

    return ClipJob("embed", list(clips), chunk_size, Path(out_dir) / "chunks", make_worker, part_name="chunk-{:05d}.npz",
                   uses_model=True, uses_device=True)


def make_embed_work(
    encoder: nn.Module,
    *,
    num_frames: int,
    size: int,
    batch_size: int = 16,
    pooled_grid: tuple[int, int, int] = (1, 4, 4),
    device: str = "cpu",
    dtype: str = "fp32",
    num_workers: int = 0,
    frame_shuffle_seed: int | None = None,
    extra_features: Callable[[torch.Tensor], torch.Tensor] | None = None,
    read: FrameReader | None = None,
) -> Callable[[Sequence[Any]], Iterator[tuple[int, dict[str, np.ndarray]]]]:
    """``work(chunks) -> (chunk index, chunk arrays)``: clip_ids, tokens (n, k, D') fp16, mean (n, D'), skipped.

    One loader over all the chunks it is given (batches never straddle a chunk), so decode workers
    keep decoding across chunk boundaries instead of restarting cold for each chunk.
    """
    encoder = encoder.to(device).eval()
    grid = token_grid(encoder.config, num_frames)

    @torch.no_grad()
    def work(chunks: Sequence[Any]) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        clips = [c for chunk in chunks for c in chunk.clips]
        batches, batch_chunk = [], []
        lo = 0
        for chunk in chunks:
            hi = lo + len(chunk.clips)
            for b in range(lo, hi, batch_size):
                batches.append(list(range(b, min(b + batch_size, hi))))
                batch_chunk.append(chunk.index)
            lo = hi
        if not batches:
            return
        ds = ClipDataset(clips, num_frames=num_frames, size=size, seed=0, train=False, read=read)
        loader = build_eval_loader(ds, batch_size, batches=batches, num_workers=num_workers)
        acc: dict[str, list] = {"ids": [], "tokens": [], "mean": [], "skipped": []}
        current = batch_chunk[0]
        for k, batch in zip(batch_chunk, progress(loader, desc="embed", total=len(batches), unit="batch")):
            if k != current:  # batches arrive in order: the previous chunk is complete
                yield current, _chunk_arrays(acc)
                current = k
            acc["skipped"].extend(batch["skipped"])
            if batch["video"] is None:
                continue
            video = batch_to_device(batch, device)["video"]  # (B, T, 3, S, S)
            if frame_shuffle_seed is not None:
                video = shuffle_frames(video, frame_shuffle_seed, batch["clip_id"])
            with autocast_context(torch.device(device).type, dtype):
                tokens = encode_full(encoder, video)  # (B, N, D)
            pooled = pool_tokens(tokens, grid, pooled_grid)  # (B, n, D) fp32
            mean = mean_pool(tokens)  # (B, D) fp32
            if extra_features is not None:
                extra = extra_features(tokens).float()  # (B, E)
                pooled = torch.cat([pooled, extra[:, None, :].expand(-1, pooled.shape[1], -1)], dim=-1)
                mean = torch.cat([mean, extra], dim=-1)
            acc["ids"].extend(batch["clip_id"])
            acc["tokens"].append(pooled.cpu().numpy().astype(np.float16))
            acc["mean"].append(mean.cpu().numpy())
        yield current, _chunk_arrays(acc)

    return work


def _chunk_arrays(acc: dict[str, list]) -> dict[str, np.ndarray]:
    """One finished chunk's arrays; then the accumulator starts empty."""
    out = dict(
        clip_ids=np.asarray(acc["ids"], dtype=str),
        tokens=np.concatenate(acc["tokens"]) if acc["tokens"] else np.zeros((0, 1, 1), np.float16),
        mean=np.concatenate(acc["mean"]) if acc["mean"] else np.zeros((0, 1), np.float32),
        skipped=np.asarray([f"{c}\t{r}" for c, r in acc["skipped"]], dtype=str),
    )
    for v in acc.values():
        v.clear()
    return out


def merge_chunks(out_dir: str | Path, parts: Sequence[dict[str, np.ndarray]]) -> StageResult:
    """Chunks in order → ``features.npz`` (clip order) and the skipped clips with their reasons."""
    out_dir = Path(out_dir)
    result = StageResult()
    ids, toks, means = [], [], []
    for z in parts:
        if len(z["clip_ids"]):
            ids.extend(z["clip_ids"].tolist())
            toks.append(z["tokens"])
            means.append(z["mean"])
        for line in z["skipped"].tolist():
            clip, reason = line.split("\t", 1)
            result.skip(clip, reason)
    if not ids:
        storage.save_npz(out_dir / FEATURES_FILE, clip_ids=np.asarray([], dtype=str),
                         tokens=np.zeros((0, 1, 1), np.float16), mean=np.zeros((0, 1), np.float32))
    else:
        storage.save_npz(out_dir / FEATURES_FILE, clip_ids=np.asarray(ids, dtype=str),
                         tokens=np.concatenate(toks), mean=np.concatenate(means))
    result.done = len(ids)
    result.extra["chunks"] = len(parts)
    return result


def load_features(folder: str | Path) -> dict[str, np.ndarray]:
    with np.load(Path(folder) / FEATURES_FILE) as z:
        return {"clip_ids": z["clip_ids"], "tokens": z["tokens"], "mean": z["mean"]}
