"""A PyTorch DataLoader over clips: decode -> sample frames -> augment, with bad clips skipped.

Reproducibility does not depend on the number of workers: every random draw of a sample (crop,
flip) comes from a generator seeded with ``(seed, epoch, clip index)``, and the per-batch generator
handed to ``collate_extra`` (e.g. a mask sampler) is seeded with ``(seed, epoch, batch position,
rank)``. The batch sampler shuffles from ``(seed, epoch)`` — the same permutation on every rank —
and gives each rank a disjoint, equal-size share. Resuming mid-epoch is ``set_loader_epoch(loader,
epoch, start_batch=k)``: the first k batches are skipped without being decoded.

A clip that fails to decode becomes a skip record; the collate drops it from the batch and lists
it under ``batch["skipped"]`` as ``(clip_id, reason)`` so the caller can count bad input.
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vjepa_adapt.data.clips import Clip, open_clip
from vjepa_adapt.data.transforms import eval_transform, train_transform
from vjepa_adapt.data.video import DEFAULT_MAX_PIXELS, VideoError, read_frames
from vjepa_adapt.progress import get_logger

log = get_logger("data.loader")

SampleKey = tuple[int, int, int]  # (clip index, epoch, batch position in the epoch)
CollateExtra = Callable[[dict[str, Any], torch.Generator], dict[str, Any]]


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers (no collisions from naive sums)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


class ClipDataset(Dataset):
    """Map-style dataset: ``ds[i]`` or ``ds[(i, epoch, batch)]`` -> a sample dict or a skip record.

    Sample: ``clip_id, index, video (T, 3, size, size) float32, flipped, epoch, batch``.
    Skip record: ``clip_id, index, skip_reason, error, epoch, batch`` (no ``video``).
    """

    def __init__(self, clips: Sequence[Clip], train: bool, size: int, num_frames: int = 16,
                 fps_stride: float | None = None, seed: int = 0, flip_prob: float = 0.5,
                 scale: tuple[float, float] = (0.3, 1.0), ratio: tuple[float, float] = (0.75, 1.35),
                 eval_short_side_ratio: float = 1.0, min_frames: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, decode_threads: int = 0,
                 short_side: int | None = None):
        self.clips = list(clips)
        self.train = train
        self.size = size
        self.num_frames = num_frames
        self.fps_stride = fps_stride
        self.seed = seed
        self.flip_prob = flip_prob
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.eval_short_side_ratio = eval_short_side_ratio
        self.min_frames = min_frames
        self.max_pixels = max_pixels
        self.decode_threads = decode_threads
        self.short_side = short_side

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: int | SampleKey) -> dict[str, Any]:
        index, epoch, batch = (int(key), 0, 0) if isinstance(key, (int, np.integer)) else key
        clip = self.clips[index]
        base = {"clip_id": clip.clip_id, "index": index, "epoch": epoch, "batch": batch}
        try:
            frames = read_frames(open_clip(clip), num_frames=self.num_frames, fps_stride=self.fps_stride,
                                 start=clip.start, end=clip.end, min_frames=self.min_frames,
                                 max_pixels=self.max_pixels, threads=self.decode_threads,
                                 short_side=self.short_side)  # (T, H, W, 3) uint8
        except VideoError as e:
            log.debug("skipping %s: %s", clip.clip_id, e)
            return {**base, "skip_reason": e.reason, "error": str(e)}
        if self.train:
            gen = np.random.default_rng([self.seed, epoch, index])
            video, flipped = train_transform(frames, self.size, gen, flip_prob=self.flip_prob,
                                             scale=self.scale, ratio=self.ratio)
        else:
            video, flipped = eval_transform(frames, self.size, self.eval_short_side_ratio), False
        return {**base, "video": video, "flipped": flipped}


def collate_clips(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack good samples; list skipped ones.

    Returns ``video`` (B, T, 3, S, S) (None when every clip of the batch was bad), ``clip_id``
    (list), ``index`` (B,) long, ``flipped`` (B,) bool, ``skipped`` [(clip_id, reason)], ``epoch``,
    ``batch``.
    """
    good = [it for it in items if "video" in it]
    first = items[0] if items else {"epoch": 0, "batch": 0}
    return {
        "video": torch.stack([it["video"] for it in good]) if good else None,  # (B, T, 3, S, S)
        "clip_id": [it["clip_id"] for it in good],
        "index": torch.tensor([it["index"] for it in good], dtype=torch.long),
        "flipped": torch.tensor([it["flipped"] for it in good], dtype=torch.bool),
        "skipped": [(it["clip_id"], it["skip_reason"]) for it in items if "video" not in it],
        "epoch": first["epoch"],
        "batch": first["batch"],
    }


class ClipCollator:
    """``collate_clips`` plus an optional ``collate_extra(batch, generator) -> batch`` run in the worker.

    The generator is seeded from ``(seed, epoch, batch position, rank)``, so masks drawn with it are
    the same whatever the number of workers, and differ across ranks.
    """

    def __init__(self, seed: int = 0, rank: int = 0, collate_extra: CollateExtra | None = None):
        self.seed = seed
        self.rank = rank
        self.collate_extra = collate_extra

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch = collate_clips(items)
        if self.collate_extra is not None:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, batch["epoch"], batch["batch"], self.rank))
            batch = self.collate_extra(batch, gen)
        return batch


class ClipBatchSampler(Sampler[list[SampleKey]]):
    """Per-epoch shuffled (or ordered) batches of ``(index, epoch, batch)`` keys for one rank.

    Sharding: the epoch's order is cut to a multiple of ``world_size`` (``drop_last=True``: the
    extra clips are left out this epoch) or padded by wrapping around (``drop_last=False``: every
    clip is seen, a few twice — evaluation should de-duplicate by clip_id); rank r takes every
    ``world_size``-th clip from r. Shares are disjoint (when cut) and of equal size.
    """

    def __init__(self, num_clips: int, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
        self.num_clips = num_clips
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order; skip its first ``start_batch`` batches (resume mid-epoch)."""
        self.epoch = epoch
        self.start_batch = start_batch

    def rank_indices(self) -> np.ndarray:
        """This rank's clip indices for the current epoch, in order."""
        n, ws = self.num_clips, self.world_size
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
        if ws > 1:
            if self.drop_last:
                order = order[: n - n % ws]
            elif n % ws:
                order = np.resize(order, n + ws - n % ws)  # wrap around
        return order[self.rank::ws]

    def _num_batches(self) -> int:
        share = len(self.rank_indices()) if self.world_size > 1 else self.num_clips
        return share // self.batch_size if self.drop_last else -(-share // self.batch_size)

    def __len__(self) -> int:
        return max(0, self._num_batches() - self.start_batch)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        idx = self.rank_indices()
        for b in range(self.start_batch, self._num_batches()):
            chunk = idx[b * self.batch_size:(b + 1) * self.batch_size]
            yield [(int(i), self.epoch, b) for i in chunk]


def _init_worker(worker_id: int, seed: int, rank: int) -> None:
    # Augmentation uses explicit per-sample generators; global RNGs are seeded anyway so any
    # third-party randomness in a worker is reproducible too. One intra-op thread per worker
    # avoids oversubscribing the cores the workers already use.
    s = derive_seed(seed, rank, worker_id)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    torch.set_num_threads(1)
    import cv2

    cv2.setNumThreads(1)


def worker_options(num_workers: int, seed: int = 0, rank: int = 0, prefetch_factor: int = 2,
                   persistent_workers: bool = True) -> dict[str, Any]:
    """DataLoader keyword arguments for decode workers (empty for ``num_workers == 0``).

    Workers are not forked from this process: a fork taken while torch's OpenMP pool or OpenCV's
    thread pool holds a lock deadlocks the child (seen here: a worker hung in a futex on its first
    batch). They fork from a clean fork server instead, which has torch and the data modules
    preloaded, so a worker starts in milliseconds rather than re-importing torch as a spawn would.
    """
    if num_workers == 0:
        return {"num_workers": 0}
    return dict(num_workers=num_workers, prefetch_factor=prefetch_factor, persistent_workers=persistent_workers,
                worker_init_fn=functools.partial(_init_worker, seed=seed, rank=rank),
                multiprocessing_context=_worker_context())


def _worker_context() -> Any:
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    # Takes effect when the server starts (first loader with workers); later calls are no-ops.
    ctx.set_forkserver_preload(["torch", "cv2", "av", "vjepa_adapt.train.data"])
    return ctx


def build_loader(clips: Sequence[Clip], batch_size: int, num_workers: int, train: bool, size: int,
                 num_frames: int = 16, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool | None = None, collate_extra: CollateExtra | None = None,
                 fps_stride: float | None = None, flip_prob: float = 0.5,
                 scale: tuple[float, float] = (0.3, 1.0), ratio: tuple[float, float] = (0.75, 1.35),
                 eval_short_side_ratio: float = 1.0, min_frames: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, decode_threads: int | None = None,
                 short_side: int | None = None, prefetch_factor: int = 2, persistent_workers: bool = True,
                 pin_memory: bool = False) -> DataLoader:
    """A DataLoader of clip batches (see ``collate_clips``). Training shuffles per epoch and
    augments; evaluation keeps order and centre-crops. ``drop_last`` defaults to ``train``.
    Call ``set_loader_epoch(loader, epoch)`` before each epoch.
    ``decode_threads`` defaults to all cores in-process, or cores / workers per worker.
    """
    if drop_last is None:
        drop_last = train
    if decode_threads is None:
        decode_threads = 0 if num_workers == 0 else max(1, (os.cpu_count() or 1) // num_workers)
    dataset = ClipDataset(clips, train=train, size=size, num_frames=num_frames, fps_stride=fps_stride,
                          seed=seed, flip_prob=flip_prob, scale=scale, ratio=ratio,
                          eval_short_side_ratio=eval_short_side_ratio, min_frames=min_frames,
                          max_pixels=max_pixels, decode_threads=decode_threads, short_side=short_side)
    sampler = ClipBatchSampler(len(dataset), batch_size, shuffle=train, seed=seed, rank=rank,
                               world_size=world_size, drop_last=drop_last)
    return DataLoader(dataset, batch_sampler=sampler,
                      collate_fn=ClipCollator(seed=seed, rank=rank, collate_extra=collate_extra),
                      pin_memory=pin_memory, **worker_options(num_workers, seed, rank, prefetch_factor,
                                                              persistent_workers))


def set_loader_epoch(loader: DataLoader, epoch: int, start_batch: int = 0) -> None:
    """Choose the epoch (shuffle order, augmentation draws) and the batch to start from."""
    sampler = loader.batch_sampler
    if not isinstance(sampler, ClipBatchSampler):
        raise TypeError("set_loader_epoch needs a loader made by build_loader")
    sampler.set_epoch(epoch, start_batch)
