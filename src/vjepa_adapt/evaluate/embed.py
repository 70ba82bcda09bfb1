"""Frozen-encoder features for every clip: the pooled token grid (fp16) and its mean vector.

Work is cut into chunks of clips; each finished chunk is one atomic file, so an interrupted run
resumes at the first missing chunk and never recomputes a finished one. Decoding runs in DataLoader
workers so it overlaps with the encoder's compute.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vjepa_adapt import storage
from vjepa_adapt.data.clips import Clip
from vjepa_adapt.data.loader import ClipDataset, batch_to_device, build_eval_loader
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


def _chunk_path(folder: Path, k: int) -> Path:
    return folder / "chunks" / f"chunk-{k:05d}.npz"


@torch.no_grad()
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
) -> StageResult:
    """Encode ``clips`` into ``out_dir/features.npz``: clip_ids (N,), tokens (N, n, D') fp16, mean (N, D') fp32.

    ``extra_features(tokens (B, N, D)) -> (B, E)`` appends a per-clip vector to every pooled token and
    to the mean (the head-only arms append their head's hidden vector): D' = D + E.
    """
    out_dir = Path(out_dir)
    encoder = encoder.to(device).eval()
    grid = token_grid(encoder.config, num_frames)
    result = StageResult()
    n_chunks = (len(clips) + chunk_size - 1) // chunk_size
    todo = [k for k in range(n_chunks) if not _chunk_path(out_dir, k).exists()]  # finished chunks: never redone
    # One loader over every missing chunk (batches never straddle a chunk), so workers keep decoding
    # across chunk boundaries instead of restarting cold for each chunk.
    batches, batch_chunk = [], []
    for k in todo:
        lo, hi = k * chunk_size, min((k + 1) * chunk_size, len(clips))
        for b in range(lo, hi, batch_size):
            batches.append(list(range(b, min(b + batch_size, hi))))
            batch_chunk.append(k)
    ds = ClipDataset(list(clips), num_frames=num_frames, size=size, seed=0, train=False)
    loader = build_eval_loader(ds, batch_size, batches=batches, num_workers=num_workers)
    acc: dict[str, list] = {"ids": [], "tokens": [], "mean": [], "skipped": []}
    current = todo[0] if todo else -1
    for k, batch in zip(batch_chunk, progress(loader, desc="embed", total=len(batches), unit="batch")):
        if k != current:  # batches arrive in order: the previous chunk is complete
            _write_chunk(out_dir, current, acc)
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
    if todo:
        _write_chunk(out_dir, current, acc)
    return _merge_chunks(out_dir, n_chunks, result)


def _write_chunk(out_dir: Path, k: int, acc: dict[str, list]) -> None:
    """One finished chunk → one atomic file; then the accumulator starts empty."""
    if k < 0:
        return
    storage.save_npz(
        _chunk_path(out_dir, k),
        clip_ids=np.asarray(acc["ids"], dtype=str),
        tokens=np.concatenate(acc["tokens"]) if acc["tokens"] else np.zeros((0, 1, 1), np.float16),
        mean=np.concatenate(acc["mean"]) if acc["mean"] else np.zeros((0, 1), np.float32),
        skipped=np.asarray([f"{c}\t{r}" for c, r in acc["skipped"]], dtype=str),
    )
    for v in acc.values():
        v.clear()


def _merge_chunks(out_dir: Path, n_chunks: int, result: StageResult) -> StageResult:
    ids, toks, means = [], [], []
    for k in range(n_chunks):
        with np.load(_chunk_path(out_dir, k)) as z:
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
    result.extra["chunks"] = n_chunks
    return result


def load_features(folder: str | Path) -> dict[str, np.ndarray]:
    with np.load(Path(folder) / FEATURES_FILE) as z:
        return {"clip_ids": z["clip_ids"], "tokens": z["tokens"], "mean": z["mean"]}
