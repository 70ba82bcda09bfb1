"""Training batches as a pure function of ``step``.

The sampler maps a step to the clip indices of that step (epoch permutations seeded by
(seed, epoch), per-rank slices of the global batch), the dataset seeds each clip's augmentation
from (seed, step, index), and the collate draws the step's masks from (seed, step). So a resumed
run asks for step N and gets exactly the batch, augmentation and masks the uninterrupted run got —
nothing is replayed or skipped through.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from vjepa_adapt.data.clips import Clip
from vjepa_adapt.data.loader import ClipDataset as LoaderClipDataset
from vjepa_adapt.data.loader import collate_clips, worker_options
from vjepa_adapt.masking import MultiblockMasker


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


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields, for each step in [start_step, total_steps), this rank's ``[(clip_index, step), ...]``.

    Global position p of the stream → epoch p // N, slot p % N of that epoch's permutation.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start_step: int, total_steps: int,
                 rank: int = 0, world_size: int = 1):
        if num_items < 1:
            raise ValueError("no training clips")
        self.n, self.b, self.seed = num_items, batch_size, seed
        self.start, self.total, self.rank, self.world = start_step, total_steps, rank, world_size
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perms[epoch]

    def indices_for_step(self, step: int) -> list[int]:
        first = (step * self.world + self.rank) * self.b
        return [int(self._perm(p // self.n)[p % self.n]) for p in range(first, first + self.b)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.total):
            yield [(i, step) for i in self.indices_for_step(step)]

    def __len__(self) -> int:
        return max(0, self.total - self.start)


class ClipDataset(LoaderClipDataset):
    """The data layer's dataset keyed by (index, step), plus motion_aux targets that follow a flip.

    The step takes the place of the epoch in the augmentation seed, so each step's crops are fixed.
    """

    def __init__(self, clips: Sequence[Clip], *, num_frames: int, size: int, seed: int, train: bool,
                 flip_prob: float = 0.5, crop_scale: tuple[float, float] = (0.3, 1.0),
                 crop_ratio: tuple[float, float] = (0.75, 1.35), aux: AuxTargets | None = None,
                 fps_stride: float | None = None):
        super().__init__(clips, train=train, size=size, num_frames=num_frames, fps_stride=fps_stride, seed=seed,
                         flip_prob=flip_prob, scale=crop_scale, ratio=crop_ratio)
        self.aux = aux

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, step = key if isinstance(key, tuple) else (key, 0)
        item = super().__getitem__((index, step, 0))
        item["step"] = step
        if self.aux is not None and "video" in item:
            label, reg = self.aux.get(item["clip_id"], item["flipped"])
            item["label"], item["reg"] = label, torch.from_numpy(np.asarray(reg, dtype=np.float32))
        return item


@dataclass
class Collate:
    """The data layer's collate, plus aux targets and the step's masks (drawn in the worker)."""

    masker: MultiblockMasker | None = None

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        out = collate_clips(items)
        out["step"] = items[0]["step"] if items else -1
        good = [it for it in items if "video" in it]
        if not good:
            return out
        if "label" in good[0]:
            out["label"] = torch.tensor([it["label"] for it in good], dtype=torch.long)  # (B,)
            out["reg"] = torch.stack([it["reg"] for it in good])  # (B, dims)
        if self.masker is not None:
            out["masks"] = self.masker(len(good), out["step"])
        return out


def build_train_loader(dataset: ClipDataset, sampler: StepBatchSampler, masker: MultiblockMasker | None,
                       num_workers: int) -> DataLoader:
    # An own generator: creating a loader iterator must not draw from the global RNG, or a resumed
    # run (which restores the global RNG first) would see a shifted dropout stream.
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=Collate(masker),
                      generator=torch.Generator().manual_seed(0),
                      **worker_options(num_workers, seed=dataset.seed, prefetch_factor=4))


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
