"""Clip batches as a pure function of ``step``: decode -> sample frames -> augment, bad clips skipped.

The one loader of the toolkit (trainer, its evals, embed). Every sample is keyed by
``(clip index, step)``:

* ``StepBatchSampler`` maps a step to this rank's keys (epoch permutations seeded by (seed, epoch),
  per-rank and per-micro-batch slices of the step's global batch, keyed by the step: the same samples
  for any split of the global batch into ranks × accumulation);
* ``ClipDataset`` seeds each clip's augmentation from (seed, step, index);
* ``Collate`` stacks the batch and draws the step's masks from (seed, step) in the worker (training
  batches: the masks of each sample's slot in the global batch, see ``MultiblockMasker``).

So a resumed run asks for step N and gets exactly the batch, augmentation and masks the
uninterrupted run got — nothing is replayed or skipped through — whatever the number of workers.

Ch 11's mixture of raw / layout / agent / interaction streams: ``MixtureBatchSampler`` overrides
``keys_for_step`` to yield ``(stream, index, step)`` keys, still a pure function of (seed, step):
which stage the step is in gives the mixture, the stream counts of every stage so far are closed
form, and each stream walks its own epoch permutations. ``MixtureDataset`` routes each key to its
stream's ``ClipDataset``. Without factor streams the trainer uses ``StepBatchSampler`` and one
``ClipDataset`` exactly as before.

MGMAE: a ``ClipDataset`` given a ``flow`` maker (``masking.TokenFlow``) adds each sample's token-grid
flow, computed on the frames after its crop and flip; ``Collate`` passes the stacked flows to the
masker.

A clip that fails to decode becomes a skip record; the collate drops it from the batch and lists
it under ``batch["skipped"]`` as ``(clip_id, reason)`` so the caller can count bad input.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vjepa_adapt.data.clips import Clip, open_clip
from vjepa_adapt.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    train_transform,
)
from vjepa_adapt.data.video import VideoError, read_frames
from vjepa_adapt.masking import MultiblockMasker, TokenFlow, derive_generator
from vjepa_adapt.progress import get_logger

log = get_logger("data.loader")

SampleKey = tuple[int, int]  # (clip index, step)
MixtureKey = tuple[str, int, int]  # (stream, clip index in that stream, step)
STREAMS = ("raw", "layout", "agent", "interaction")  # the data streams of train.stages[].mixture
FrameReader = Callable[[Clip, int], np.ndarray]  # (clip, num_frames) -> (T, H, W, 3) uint8; VideoError = skip

# Eval batches draw masks as if at these "steps": far outside any training run, never negative.
EVAL_STEP_BASE = 1_000_000_000


@dataclass
class AuxTargets:
    """motion_aux targets per clip: class index (-1 = not one of the K classes) and z-scored features."""

    labels: dict[str, int]
    reg: dict[str, np.ndarray]  # clip_id -> (dims,) float32, z-scored with train statistics
    reg_flipped: dict[str, np.ndarray]  # the same for the horizontally mirrored clip
    label_flipped: dict[str, int]

    def get(self, clip_id: str, flipped: bool) -> tuple[int, np.ndarray]:
        if flipped:
            return self.label_flipped.get(clip_id, -1), self.reg_flipped[clip_id]
        return self.labels.get(clip_id, -1), self.reg[clip_id]


class StepBatchSampler(Sampler[list[SampleKey]]):
    """Yields, for each step in [start_step, total_steps), this rank's ``grad_accum`` micro-batches
    ``[(clip_index, step), ...]`` of ``batch_size`` keys each.

    A step's global batch is G = batch_size × grad_accum × world_size slots, at stream positions
    [s·G, (s+1)·G); position p → epoch p // N, slot p % N of that epoch's permutation. Micro-batch i
    of rank r takes slots [(i·world + r)·b, +b) (``first_slot``), so ranks' shares are disjoint
    within an epoch and always of size b — and a step's samples (keyed by the step, not the
    micro-batch) are the same for any split of G into ranks and accumulation.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start_step: int, total_steps: int,
                 rank: int = 0, world_size: int = 1, grad_accum: int = 1):
        if num_items < 1:
            raise ValueError("no training clips")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
        self.n, self.b, self.seed = num_items, batch_size, seed
        self.start, self.total, self.rank, self.world = start_step, total_steps, rank, world_size
        self.accum = grad_accum
        self._perms: dict[int, np.ndarray] = {}

    @property
    def global_batch(self) -> int:
        """Slots of one step over all ranks and micro-batches."""
        return self.b * self.accum * self.world

    def first_slot(self, micro: int = 0) -> int:
        """This rank's first slot of micro-batch ``micro`` in the step's global batch."""
        return (micro * self.world + self.rank) * self.b

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perms[epoch]

    def indices_for_step(self, step: int, micro: int = 0) -> list[int]:
        first = step * self.global_batch + self.first_slot(micro)
        return [int(self._perm(p // self.n)[p % self.n]) for p in range(first, first + self.b)]

    def keys_for_step(self, step: int, micro: int = 0) -> list[SampleKey]:
        """The dataset keys of one micro-batch of a step (the extension point of a mixture sampler)."""
        return [(i, step) for i in self.indices_for_step(step, micro)]

    def micro_batches(self) -> Iterator[tuple[int, list]]:
        """(first slot in the step's global batch, keys) of every micro-batch, in training order."""
        for step in range(self.start, self.total):
            for micro in range(self.accum):
                yield self.first_slot(micro), self.keys_for_step(step, micro)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for _, keys in self.micro_batches():
            yield keys

    def __len__(self) -> int:
        return max(0, self.total - self.start) * self.accum


def stream_counts(mixture: Mapping[str, float], positions: int) -> dict[str, int]:
    """How many of a stage's first ``positions`` samples belong to each stream.

    The cumulative share boundaries are rounded (streams in ``STREAMS`` order: the first k streams
    hold floor(Q·(s_1 + … + s_k) + ½) of Q samples), so every prefix of the stage — and so every
    batch — holds each stream's share to within one sample, and the counts are closed form.
    """
    out, done, cum = {}, 0, 0.0
    live = [n for n in STREAMS if mixture.get(n, 0.0) > 0]
    for n in live:
        cum += mixture[n]
        upto = positions if n == live[-1] else min(positions, math.floor(positions * cum + 0.5))
        out[n], done = upto - done, upto
    return out


class MixtureBatchSampler(StepBatchSampler):
    """Yields, per step, this rank's ``[(stream, index, step), ...]`` from the mixture of the step's stage.

    ``schedule``: ``[(steps, mixture), ...]`` per stage. Step s of stage j: its global batch
    (G = b × grad_accum × world slots) takes ``stream_counts`` of the stage's mixture at positions
    [(s − start_j)·G, +G); stream n continues at its own position (its counts in every earlier
    stage, closed form) through its epoch permutations seeded by (seed, stream, epoch). The G slots
    are shuffled by (seed, step) and micro-batch i of rank r takes slots [(i·world + r)·b, +b).
    Everything is a function of (seed, step): ranks agree, resume replays nothing, and the same G
    gives the same samples on any number of ranks. Past the last stage the last mixture holds.
    """

    def __init__(self, stream_sizes: Mapping[str, int], schedule: Sequence[tuple[int, Mapping[str, float]]],
                 batch_size: int, seed: int, start_step: int, total_steps: int, rank: int = 0, world_size: int = 1,
                 grad_accum: int = 1):
        super().__init__(max(1, sum(stream_sizes.values())), batch_size, seed, start_step, total_steps, rank,
                         world_size, grad_accum)
        for i, (_, mix) in enumerate(schedule):
            empty = [n for n, share in mix.items() if share > 0 and stream_sizes.get(n, 0) < 1]
            if empty:
                raise ValueError(f"stage {i}: stream(s) {empty} have a share of the mixture but no clips")
        self.sizes = dict(stream_sizes)
        self.schedule = [(int(n), dict(m)) for n, m in schedule]
        self._stream_perms: dict[str, tuple[int, np.ndarray]] = {}

    def _stream_index(self, stream: str, position: int) -> int:
        n = self.sizes[stream]
        epoch = position // n
        cached = self._stream_perms.get(stream)
        if cached is None or cached[0] != epoch:
            rng = np.random.default_rng([self.seed, 1 + STREAMS.index(stream), epoch])
            cached = self._stream_perms[stream] = (epoch, rng.permutation(n))
        return int(cached[1][position % n])

    def slots_for_step(self, step: int) -> list[tuple[str, int]]:
        """The global batch of ``step``: (stream, position in that stream) per slot, shuffled."""
        g = self.global_batch
        before = {n: 0 for n in STREAMS}  # each stream's samples in the stages before this one
        start, mix = 0, self.schedule[-1][1]
        for i, (steps, m) in enumerate(self.schedule):
            if step < start + steps or i == len(self.schedule) - 1:
                mix = m
                break
            for n, c in stream_counts(m, steps * g).items():
                before[n] += c
            start += steps
        q = (step - start) * g
        lo, hi = stream_counts(mix, q), stream_counts(mix, q + g)
        slots = [(n, before[n] + lo[n] + k) for n in hi for k in range(hi[n] - lo[n])]
        order = np.random.default_rng([self.seed, step]).permutation(len(slots))
        return [slots[i] for i in order]

    def keys_for_step(self, step: int, micro: int = 0) -> list[MixtureKey]:  # type: ignore[override]
        first = self.first_slot(micro)
        mine = self.slots_for_step(step)[first:first + self.b]
        return [(n, self._stream_index(n, pos), step) for n, pos in mine]


class ClipDataset(Dataset):
    """Map-style dataset: ``ds[(index, step)]`` (or ``ds[index]`` = step 0) -> a sample or a skip record.

    Sample: ``clip_id, index, step, video (T, 3, size, size) float32, flipped`` (+ ``label``,
    ``reg`` with ``aux``: motion_aux targets that follow the flip; + ``flow`` (T', H', W', 2) with a
    ``flow`` maker, MGMAE's token-grid flow of the cropped, flipped frames).
    Skip record: ``clip_id, index, step, skip_reason, error`` (no ``video``).
    The training augmentation is drawn from (seed, step, index): each step's crops are fixed.
    ``read`` decodes a clip (default: its file, ``read_frames``); a factor stream rebuilt on the fly
    passes its builder.
    """

    def __init__(self, clips: Sequence[Clip], *, num_frames: int, size: int, seed: int, train: bool,
                 flip_prob: float = 0.5, crop_scale: tuple[float, float] = (0.3, 1.0),
                 crop_ratio: tuple[float, float] = (0.75, 1.35), aux: AuxTargets | None = None,
                 fps_stride: float | None = None, read: FrameReader | None = None, flow: TokenFlow | None = None):
        self.clips = list(clips)
        self.num_frames, self.size, self.seed, self.train = num_frames, size, seed, train
        self.flip_prob, self.crop_scale, self.crop_ratio = flip_prob, tuple(crop_scale), tuple(crop_ratio)
        self.aux, self.fps_stride = aux, fps_stride
        self.read, self.flow = read, flow

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: int | SampleKey) -> dict[str, Any]:
        index, step = (int(key), 0) if isinstance(key, (int, np.integer)) else key
        clip = self.clips[index]
        base = {"clip_id": clip.clip_id, "index": index, "step": step}
        try:
            if self.read is not None:
                frames = self.read(clip, self.num_frames)  # (T, H, W, 3) uint8
            else:
                frames = read_frames(open_clip(clip), num_frames=self.num_frames, fps_stride=self.fps_stride,
                                     start=clip.start, end=clip.end)  # (T, H, W, 3) uint8
        except VideoError as e:
            log.debug("skipping %s: %s", clip.clip_id, e)
            return {**base, "skip_reason": e.reason, "error": str(e)}
        if self.train:
            gen = np.random.default_rng([self.seed, step, index])
            video, flipped = train_transform(frames, self.size, gen, flip_prob=self.flip_prob,
                                             scale=self.crop_scale, ratio=self.crop_ratio)
        else:
            video, flipped = eval_transform(frames, self.size), False
        item = {**base, "video": video, "flipped": flipped}
        if self.aux is not None:
            label, reg = self.aux.get(clip.clip_id, flipped)
            item["label"], item["reg"] = label, torch.from_numpy(np.asarray(reg, dtype=np.float32))
        if self.flow is not None:  # MGMAE: the flow of what the model sees (after crop and flip)
            item["flow"] = self.flow(unnormalize(video))  # (T', H', W', 2)
        return item


def unnormalize(video: torch.Tensor) -> np.ndarray:
    """(T, 3, S, S) normalised float32 -> (T, S, S, 3) uint8, the inverse of ``transforms.normalize``."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = ((video * std + mean) * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())


class MixtureDataset(Dataset):
    """``ds[(stream, index, step)]`` -> that stream's ``ClipDataset[(index, step)]``, tagged with ``stream``."""

    def __init__(self, streams: Mapping[str, ClipDataset], seed: int):
        unknown = set(streams) - set(STREAMS)
        if unknown:
            raise ValueError(f"unknown data stream(s) {sorted(unknown)}; streams: {', '.join(STREAMS)}")
        self.streams, self.seed = dict(streams), seed

    def __len__(self) -> int:
        return sum(len(d) for d in self.streams.values())

    def __getitem__(self, key: MixtureKey) -> dict[str, Any]:
        stream, index, step = key
        return {**self.streams[stream][(index, step)], "stream": stream}


@dataclass
class Stream:
    """One data stream of a mixture: its clips, their motion_aux targets, and how to decode a clip
    (None = its file). The trainer's raw stream is its ``train_clips``/``aux``."""

    clips: list[Clip]
    aux: AuxTargets | None = None
    read: FrameReader | None = None


@dataclass
class Collate:
    """Stack the good samples, list the skipped ones, draw the step's masks (in the worker).

    Returns ``video`` (B, T, 3, S, S) (None when every clip of the batch was bad), ``clip_id``
    (list), ``index`` (B,) long, ``flipped`` (B,) bool, ``skipped`` [(clip_id, reason)], ``step``;
    with aux targets ``label`` (B,) long and ``reg`` (B, R); from a mixture ``stream`` (list); with a
    masker ``masks`` (one ``MaskBatch`` per generator, a pure function of (masker seed, step) — and,
    when the samples carry MGMAE flow, of their stacked flows (B, T', H', W', 2)).
    Training batches (``build_train_loader``) carry each sample's ``slot`` in its step's global batch
    of ``global_batch`` samples: the masks are then those of the slots (``MultiblockMasker.for_slots``;
    MGMAE: of the micro-batch's unit), the same on any number of ranks.
    """

    masker: MultiblockMasker | None = None
    global_batch: int | None = None

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        good = [it for it in items if "video" in it]
        out: dict[str, Any] = {
            "video": torch.stack([it["video"] for it in good]) if good else None,  # (B, T, 3, S, S)
            "clip_id": [it["clip_id"] for it in good],
            "index": torch.tensor([it["index"] for it in good], dtype=torch.long),
            "flipped": torch.tensor([it["flipped"] for it in good], dtype=torch.bool),
            "skipped": [(it["clip_id"], it["skip_reason"]) for it in items if "video" not in it],
            "step": items[0]["step"] if items else -1,
        }
        if not good:
            return out
        if "label" in good[0]:
            out["label"] = torch.tensor([it["label"] for it in good], dtype=torch.long)  # (B,)
            out["reg"] = torch.stack([it["reg"] for it in good])  # (B, dims)
        if "stream" in good[0]:
            out["stream"] = [it["stream"] for it in good]
        if self.masker is not None:
            slotted = self.global_batch is not None and "slot" in items[0]
            if "flow" in good[0]:  # MGMAE: blocks carried along each sample's own flow
                unit = items[0]["slot"] // len(items) if slotted else 0  # the micro-batch's place in the step
                out["masks"] = self.masker(len(good), out["step"], flow_tokens=torch.stack([it["flow"] for it in good]),
                                           unit=unit)
            elif slotted:
                out["masks"] = self.masker.for_slots(out["step"], [it["slot"] for it in good], self.global_batch)
            else:
                out["masks"] = self.masker(len(good), out["step"])
        return out


class _Slotted(Dataset):
    """``ds[(key, slot)]`` -> ``inner[key]`` with ``slot``, the sample's place in its step's global batch."""

    def __init__(self, inner: Dataset):
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[Any, int]) -> dict[str, Any]:
        inner_key, slot = key
        return {**self.inner[inner_key], "slot": slot}


@dataclass
class _SlottedBatches:
    """A step sampler's micro-batches as ``[(key, slot), ...]`` for ``_Slotted``."""

    sampler: StepBatchSampler

    def __iter__(self) -> Iterator[list[tuple[Any, int]]]:
        for first, keys in self.sampler.micro_batches():
            yield [(k, first + j) for j, k in enumerate(keys)]

    def __len__(self) -> int:
        return len(self.sampler)


def batch_to_device(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """The batch with every tensor the model reads on ``device``: video, motion_aux ``label`` and
    ``reg``, and each generator's masks (the index tensors the JEPA gathers use). One helper, so
    no tensor of a batch is left behind on the host."""
    out = dict(batch)
    if batch.get("video") is not None:
        out["video"] = batch["video"].to(device, non_blocking=True)
    for key in ("label", "reg"):
        if key in batch:
            out[key] = batch[key].to(device, non_blocking=True)
    if "masks" in batch:
        out["masks"] = [m.to(device) for m in batch["masks"]]
    return out


def build_train_loader(dataset: ClipDataset | MixtureDataset, sampler: StepBatchSampler,
                       masker: MultiblockMasker | None, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """The trainer's batches: ``sampler``'s micro-batches, each sample with its slot (for its masks).

    ``pin_memory`` (the trainer sets it on CUDA): batches arrive in page-locked memory, so the
    trainer's ``non_blocking`` copies to the device overlap with compute instead of stalling it.
    """
    # An own generator: creating a loader iterator must not draw from the global RNG, or a resumed
    # run (which restores the global RNG first) would see a shifted dropout stream.
    return DataLoader(_Slotted(dataset), batch_sampler=_SlottedBatches(sampler),
                      collate_fn=Collate(masker, global_batch=sampler.global_batch),
                      generator=torch.Generator().manual_seed(0), pin_memory=pin_memory,
                      **worker_options(num_workers, seed=dataset.seed, rank=sampler.rank, prefetch_factor=4))


def build_eval_loader(dataset: ClipDataset, batch_size: int, masker: MultiblockMasker | None = None,
                      batches: list[list[int]] | None = None, num_workers: int = 0) -> DataLoader:
    """In-order batches (default: consecutive runs of ``batch_size``; or the given index lists).

    Masks (if any) are a fixed function of the batch's position, so every eval sees the same.
    The trainer's evals decode in-process (short: starting workers would cost more than they save);
    embed passes ``num_workers`` to overlap decoding with its longer pass.
    """
    if batches is None:
        batches = [list(range(s, min(s + batch_size, len(dataset)))) for s in range(0, len(dataset), batch_size)]
    keyed = [[(i, EVAL_STEP_BASE + b) for i in batch] for b, batch in enumerate(batches)]
    return DataLoader(dataset, batch_sampler=keyed, collate_fn=Collate(masker),
                      generator=torch.Generator().manual_seed(0),
                      **worker_options(num_workers, prefetch_factor=4, persistent_workers=False))


def _init_worker(worker_id: int, seed: int, rank: int) -> None:
    # Augmentation uses explicit per-sample generators; global RNGs are seeded anyway so any
    # third-party randomness in a worker is reproducible too. One intra-op thread per worker
    # avoids oversubscribing the cores the workers already use.
    s = derive_generator(seed, rank, worker_id).initial_seed()
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
    ctx.set_forkserver_preload(["torch", "cv2", "av", "vjepa_adapt.data.loader"])
    return ctx
