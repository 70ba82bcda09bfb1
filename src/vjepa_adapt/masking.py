"""Token masks for JEPA training: multiblock (V-JEPA) and motion-guided (MGMAE) tubes.

Token layout: a clip of F frames at S x S pixels, patch p and tubelet s becomes a grid
(T', H', W') = (F // s, S // p, S // p). Token id = t * H' * W' + h * W' + w, i.e. the row-major
flattening of a (T', H', W') array; this is the order HF VJEPA2 decodes its 3-D RoPE positions
from (frame = id // (H'W'), row = (id % H'W') // W', col = id % W').

A mask generator draws ONE block size per batch (shared by every sample, as in the official
V-JEPA multiblock3d collator) and block positions per sample. The union of a sample's blocks is
its target; everything else is its context. Per-sample counts differ, so lengths are equalised
across the batch by keeping a uniformly random subset of size min-over-batch (not the first k
sorted ids, which would systematically drop the latest time steps).

Everything here is a pure function of an explicit ``torch.Generator``; ``MultiblockMasker`` is
picklable and derives its generator from (seed, step), so it can run inside DataLoader workers.

MGMAE needs each sample's flow at token resolution. It is computed on the fly by the data loader
(``TokenFlow``, in the decode worker) from the sample's frames *after* its crop and flip, so the
crop box, its resize and the flip act on the flow exactly as on the pixels (a flipped sample's
flow is mirrored with dx negated, and its tubes move the mirrored way); ``Collate`` hands the
stacked flows to the masker. Nothing is stored per clip, so it works for raw clips and for factor
clips alike, materialised or streamed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

TokenGrid = tuple[int, int, int]  # (T', H', W')
BlockSize = tuple[int, int, int]  # (t, h, w) in tokens


@dataclass(frozen=True)
class MaskSpec:
    """One mask generator: ``num_blocks`` blocks whose spatial area is ``spatial_scale`` of H'W'.

    spatial_scale: a fraction of the H'W' token area, or a (min, max) range sampled uniformly.
    aspect_ratio: (min, max) of block height / width, sampled uniformly (as the official code).
    temporal_scale: (min, max) fraction of T' a block spans; (1, 1) = all time steps.
    """

    num_blocks: int
    spatial_scale: float | tuple[float, float]
    aspect_ratio: tuple[float, float] = (0.75, 1.5)
    temporal_scale: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        scale = self.spatial_scale
        if isinstance(scale, (int, float)):
            scale = (float(scale), float(scale))
        scale = (float(scale[0]), float(scale[1]))
        object.__setattr__(self, "spatial_scale", scale)
        object.__setattr__(self, "aspect_ratio", tuple(float(a) for a in self.aspect_ratio))
        object.__setattr__(self, "temporal_scale", tuple(float(a) for a in self.temporal_scale))
        if int(self.num_blocks) < 1:
            raise ValueError(f"MaskSpec.num_blocks must be >= 1, got {self.num_blocks}")
        for name, (lo, hi), upper in (
            ("spatial_scale", self.spatial_scale, 1.0),
            ("temporal_scale", self.temporal_scale, 1.0),
        ):
            if not 0.0 < lo <= hi <= upper:
                raise ValueError(f"MaskSpec.{name} must satisfy 0 < min <= max <= 1, got {(lo, hi)}")
        lo, hi = self.aspect_ratio
        if not 0.0 < lo <= hi:
            raise ValueError(f"MaskSpec.aspect_ratio must satisfy 0 < min <= max, got {(lo, hi)}")


# Reference generators (Ch 10 step 3): 8 small blocks and 2 large blocks spanning all time.
SHORT_RANGE = MaskSpec(num_blocks=8, spatial_scale=0.15)
LONG_RANGE = MaskSpec(num_blocks=2, spatial_scale=0.70)


@dataclass
class MaskBatch:
    """Equalised token ids of one mask generator for one batch.

    context_ids: (B, Nc) long, sorted ascending per row, disjoint from target_ids.
    target_ids:  (B, Nt) long, sorted ascending per row.
    stats: context_real / target_real (list[int], per-sample counts before equalisation),
           context_kept / target_kept (int, Nc / Nt).
    """

    context_ids: torch.Tensor  # (B, Nc) long
    target_ids: torch.Tensor  # (B, Nt) long
    stats: dict = field(default_factory=dict)

    def to(self, device: torch.device | str) -> MaskBatch:
        """The same masks with their ids on ``device`` (gathers index tensors on the model's device)."""
        return MaskBatch(self.context_ids.to(device, non_blocking=True),
                         self.target_ids.to(device, non_blocking=True), self.stats)

    def pin_memory(self) -> MaskBatch:
        """Page-locked ids (the DataLoader's ``pin_memory`` calls this), so ``to(cuda)`` copies asynchronously."""
        return MaskBatch(self.context_ids.pin_memory(), self.target_ids.pin_memory(), self.stats)

    def select(self, rows: Sequence[int]) -> MaskBatch:
        """The masks of ``rows`` of the batch (lengths stay those equalised over the whole batch)."""
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        stats = {k: [v[i] for i in rows] if isinstance(v, list) else v for k, v in self.stats.items()}
        return MaskBatch(self.context_ids[idx], self.target_ids[idx], stats)


def _check_grid(grid: Sequence[int]) -> TokenGrid:
    if len(grid) != 3 or any(int(g) < 1 for g in grid):
        raise ValueError(f"token grid must be three positive ints (T', H', W'), got {tuple(grid)}")
    return int(grid[0]), int(grid[1]), int(grid[2])


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    # One draw per call, always consumed, so the stream does not depend on lo == hi.
    u = torch.rand(1, generator=gen).item()
    return lo + u * (hi - lo)


def sample_block_size(spec: MaskSpec, grid: Sequence[int], gen: torch.Generator) -> BlockSize:
    """Draw one (t, h, w) block size, shared by all samples of a batch.

    Matches the official multiblock3d recipe: temporal fraction, area fraction and aspect ratio
    uniform in their ranges; area = int(H'W' * scale) tokens; h = round(sqrt(area * ar)),
    w = round(sqrt(area / ar)); each clipped to [1, grid size].
    """
    T, H, W = _check_grid(grid)
    t_scale = _uniform(gen, *spec.temporal_scale)
    s_scale = _uniform(gen, *spec.spatial_scale)
    ar = _uniform(gen, *spec.aspect_ratio)
    t = max(1, min(T, int(T * t_scale)))
    area = int(H * W * s_scale)
    h = max(1, min(H, int(round(math.sqrt(area * ar)))))
    w = max(1, min(W, int(round(math.sqrt(area / ar)))))
    return t, h, w


def _randint(gen: torch.Generator, high_inclusive: int) -> int:
    return int(torch.randint(0, high_inclusive + 1, (1,), generator=gen).item())


def sample_target_masks(
    grid: Sequence[int],
    spec: MaskSpec,
    batch_size: int,
    gen: torch.Generator,
    max_tries: int = 100,
    block_size: BlockSize | None = None,
) -> torch.Tensor:
    """Union-of-blocks target masks, (B, T', H', W') bool (True = target).

    One block size for the batch (drawn here unless ``block_size`` is given), positions per
    sample. A sample whose blocks cover every token (empty context) is redrawn up to
    ``max_tries`` times; if it still has no context the spec cannot leave one and we raise.
    """
    T, H, W = _check_grid(grid)
    t, h, w = block_size if block_size is not None else sample_block_size(spec, grid, gen)
    masks = torch.zeros((batch_size, T, H, W), dtype=torch.bool)
    for b in range(batch_size):
        for _ in range(max_tries):
            m = masks[b]
            m.zero_()
            for _ in range(spec.num_blocks):
                top, left, start = _randint(gen, H - h), _randint(gen, W - w), _randint(gen, T - t)
                m[start : start + t, top : top + h, left : left + w] = True
            if not bool(m.all()):
                break
        else:
            raise ValueError(
                f"mask spec {spec} leaves no context tokens on grid {(T, H, W)} after {max_tries} "
                "draws; use smaller or fewer blocks"
            )
    return masks


def equalize_ids(
    keep: torch.Tensor, gen: torch.Generator, length: int | None = None
) -> tuple[torch.Tensor, list[int]]:
    """Sorted ids of True entries, equalised to one length across the batch.

    keep: (B, N) bool. Each row keeps a uniformly random subset of its True ids of size
    ``length`` (default: the batch minimum), then sorted. Returns ((B, length) long, real counts).
    """
    if keep.ndim != 2 or keep.shape[0] == 0:
        raise ValueError(f"equalize_ids needs a (B >= 1, N) mask, got shape {tuple(keep.shape)}")
    counts = keep.sum(dim=1).tolist()
    k = min(counts) if length is None else int(length)
    if k > min(counts):
        raise ValueError(f"cannot keep {k} ids: a sample has only {min(counts)}")
    rows = []
    for b, n in enumerate(counts):
        ids = torch.nonzero(keep[b], as_tuple=False).squeeze(1)  # (n,) sorted
        if n > k:
            # A uniform random subset: every token (early or late frame) is equally likely to go.
            pick = torch.randperm(n, generator=gen)[:k]
            ids = ids[pick].sort().values
        rows.append(ids)
    return torch.stack(rows).long(), [int(c) for c in counts]


def build_mask_batch(target_masks: torch.Tensor, gen: torch.Generator) -> MaskBatch:
    """Context = complement of target; both equalised across the batch (unbiased subset)."""
    B = target_masks.shape[0]
    flat = target_masks.reshape(B, -1)  # (B, N) bool, row-major = token id order
    target_ids, target_real = equalize_ids(flat, gen)
    context_ids, context_real = equalize_ids(~flat, gen)
    stats = {
        "context_real": context_real,
        "target_real": target_real,
        "context_kept": int(context_ids.shape[1]),
        "target_kept": int(target_ids.shape[1]),
    }
    return MaskBatch(context_ids=context_ids, target_ids=target_ids, stats=stats)


def sample_multiblock(
    grid: Sequence[int],
    spec: MaskSpec,
    batch_size: int,
    gen: torch.Generator,
    max_tries: int = 100,
) -> MaskBatch:
    """V-JEPA multiblock masks for one generator and one batch (equalised, sorted ids)."""
    masks = sample_target_masks(grid, spec, batch_size, gen, max_tries=max_tries)
    return build_mask_batch(masks, gen)


# --- MGMAE: motion-guided tubes -------------------------------------------------------------


def _carry_block(
    masks_b: torch.Tensor,
    flow: torch.Tensor,
    start: int,
    t: int,
    top: int,
    left: int,
    h: int,
    w: int,
) -> None:
    """Mark a block placed at (start, top, left) and carried along ``flow`` for ``t`` steps.

    The position is accumulated in floats and rounded (half up) when indexing, so sub-token
    motion (common: a few pixels per step at 16 px patches) still moves the block over time.
    """
    _, H, W = masks_b.shape
    y, x = float(top), float(left)
    for step in range(start, start + t):
        r, c = int(math.floor(y + 0.5)), int(math.floor(x + 0.5))
        masks_b[step, r : r + h, c : c + w] = True
        if step + 1 < start + t:
            dx, dy = flow[step, r : r + h, c : c + w].reshape(-1, 2).mean(dim=0).tolist()
            # Clip the float position too, so a block pushed against an edge does not "store"
            # overshoot and lag when the motion reverses.
            y = min(max(y + dy, 0.0), float(H - h))
            x = min(max(x + dx, 0.0), float(W - w))


def sample_motion_guided(
    grid: Sequence[int],
    spec: MaskSpec,
    flow_tokens: torch.Tensor,
    batch_size: int,
    gen: torch.Generator,
    max_tries: int = 100,
) -> MaskBatch:
    """MGMAE masks: blocks placed on their first time step and carried along the flow.

    flow_tokens: (T', H', W', 2) shared by the batch, or (B, T', H', W', 2) per sample; last dim
    (dx, dy) = (column shift, row shift) in token units from step t to t+1. At each step a block
    moves by the mean flow inside it (float-accumulated, rounded when placed, clipped to the
    grid), so the masked tube follows whatever moves there. Block size is shared in the batch.
    """
    T, H, W = _check_grid(grid)
    if flow_tokens.ndim == 4:
        flow_tokens = flow_tokens.unsqueeze(0).expand(batch_size, *flow_tokens.shape)
    if flow_tokens.shape != (batch_size, T, H, W, 2):
        raise ValueError(
            f"flow_tokens must be (T', H', W', 2) or (B, T', H', W', 2) = "
            f"{(batch_size, T, H, W, 2)}, got {tuple(flow_tokens.shape)}"
        )
    flow_tokens = flow_tokens.float().cpu()
    t, h, w = sample_block_size(spec, grid, gen)
    masks = torch.zeros((batch_size, T, H, W), dtype=torch.bool)
    for b in range(batch_size):
        for _ in range(max_tries):
            masks[b].zero_()
            for _ in range(spec.num_blocks):
                top, left, start = _randint(gen, H - h), _randint(gen, W - w), _randint(gen, T - t)
                _carry_block(masks[b], flow_tokens[b], start, t, top, left, h, w)
            if not bool(masks[b].all()):
                break
        else:
            raise ValueError(
                f"mask spec {spec} leaves no context tokens on grid {(T, H, W)} after {max_tries} "
                "draws; use smaller or fewer blocks"
            )
    return build_mask_batch(masks, gen)


def flow_to_token_units(flow_px: np.ndarray, grid: Sequence[int]) -> torch.Tensor:
    """Flow between consecutive token time steps in pixels -> token units on the grid.

    flow_px: (S, h, w, 2) float, S = T' - 1 (or T'), last dim (dx, dy) in pixels *at the resolution
    (h, w) it was computed at*, from the first frame of token step t to the first frame of step t+1.
    Each (h / H') x (w / W') cell is averaged (area resampling) and divided by its size in pixels.
    Returns (T', H', W', 2) float32; a missing last step repeats the previous one (the carrier
    never reads the last step's flow), and with T' = 1 it is zero.
    """
    T, H, W = _check_grid(grid)
    flow_px = np.asarray(flow_px, dtype=np.float32)
    if flow_px.ndim != 4 or flow_px.shape[-1] != 2 or flow_px.shape[0] > T:
        raise ValueError(f"flow_px must be (<= T'={T}, h, w, 2), got {tuple(flow_px.shape)}")
    import cv2

    h, w = flow_px.shape[1:3]
    steps = [cv2.resize(f, (W, H), interpolation=cv2.INTER_AREA) * np.array([W / w, H / h], np.float32)
             for f in flow_px]  # (H', W', 2) each, token units
    while len(steps) < T:
        steps.append(steps[-1] if steps else np.zeros((H, W, 2), np.float32))
    return torch.from_numpy(np.stack(steps).astype(np.float32))  # (T', H', W', 2)


def token_flow(frames: np.ndarray, grid: Sequence[int], tubelet_size: int, backend: str = "farneback",
               max_side: int | None = 128) -> torch.Tensor:
    """Dense optical flow of one clip at token resolution, for MGMAE.  # (T', H', W', 2) float32

    frames: (F, S_h, S_w, 3) uint8, the model's input frames (already cropped and flipped). Token
    step t starts at frame t·s (s = tubelet size); its displacement to step t+1 is the sum of the s
    frame-to-frame flows between frames t·s and (t+1)·s — adjacent frames, because a flow across s
    frames at once underestimates larger motions (measured: 8 px at 64 px read as 4.8). Frames are
    downscaled to at most ``max_side`` px first; the flow is pooled to the grid (``flow_to_token_units``).
    """
    from vjepa_adapt.motion.features import resize_max_side
    from vjepa_adapt.motion.flow import compute_flow

    T, _, _ = _check_grid(grid)
    last = (T - 1) * tubelet_size  # the first frame of the last token step
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < last + 1:
        raise ValueError(f"frames must be (F >= {last + 1}, H, W, 3), got {tuple(frames.shape)}")
    small = [resize_max_side(f, max_side) for f in frames[:last + 1]]
    per_frame = [compute_flow(a, b, backend=backend) for a, b in zip(small[:-1], small[1:])]  # (h, w, 2) each
    steps = [np.sum(per_frame[t * tubelet_size:(t + 1) * tubelet_size], axis=0) for t in range(T - 1)]
    if not steps:
        return flow_to_token_units(np.zeros((0, *small[0].shape[:2], 2), np.float32), grid)
    return flow_to_token_units(np.stack(steps), grid)


@dataclass(frozen=True)
class TokenFlow:
    """Picklable per-sample flow maker for the data loader: ``TokenFlow(...)(frames) -> (T', H', W', 2)``."""

    grid: TokenGrid
    tubelet_size: int = 2
    backend: str = "farneback"
    max_side: int | None = 128

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        return token_flow(frames, self.grid, self.tubelet_size, self.backend, self.max_side)


# --- Collate-side masker ----------------------------------------------------------------------


def derive_generator(seed: int, step: int, index: int = 0) -> torch.Generator:
    """A torch.Generator seeded from (seed, step, index) with no global state.

    SeedSequence mixes the three ints so nearby steps/seeds give unrelated streams.
    """
    words = np.random.SeedSequence([int(seed), int(step), int(index)]).generate_state(2, np.uint32)
    g = torch.Generator()
    g.manual_seed((int(words[0]) << 32) | int(words[1]))
    return g


@dataclass(frozen=True)
class MultiblockMasker:
    """Picklable mask sampler for a DataLoader collate: one MaskBatch per spec per batch.

    ``masker(batch_size, step)`` is a pure function of (seed, step): every worker, rank and
    resumed run gets the same masks for the same step. With ``flow_tokens`` the blocks are
    motion-guided (MGMAE) instead of static.

    The trainer's masks depend on the sample, not on the rank or the number of ranks (so 2 ranks and
    1 rank with the same global batch train alike): a sample is a slot of its step's global batch.
    Static masks (``for_slots``): the global batch's masks are drawn as one batch from (seed, step)
    and each micro-batch takes its slots' rows, lengths equalised over the global batch. MGMAE masks
    need each sample's flow, which only its own rank has: they are drawn per micro-batch from
    (seed, step, ``unit``), the micro-batch's index in the global batch, and equalised over it, so
    they are the same whatever the number of ranks as long as the micro-batch size is (the trainer
    keeps it: the largest micro-batch of ``train.batch_size`` that divides the per-rank share).
    """

    grid: TokenGrid
    specs: tuple[MaskSpec, ...] = (SHORT_RANGE, LONG_RANGE)
    seed: int = 0
    max_tries: int = 100

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", _check_grid(self.grid))
        object.__setattr__(self, "specs", tuple(self.specs))
        if not self.specs:
            raise ValueError("MultiblockMasker needs at least one MaskSpec")

    def __call__(
        self, batch_size: int, step: int, flow_tokens: torch.Tensor | None = None, unit: int = 0
    ) -> list[MaskBatch]:
        out = []
        for i, spec in enumerate(self.specs):
            gen = derive_generator(self.seed, step, i + len(self.specs) * unit)  # unit 0: (seed, step, i)
            if flow_tokens is None:
                out.append(sample_multiblock(self.grid, spec, batch_size, gen, self.max_tries))
            else:
                out.append(
                    sample_motion_guided(self.grid, spec, flow_tokens, batch_size, gen, self.max_tries)
                )
        return out

    def for_slots(self, step: int, slots: Sequence[int], global_size: int) -> list[MaskBatch]:
        """Static masks of ``slots`` of a step's global batch of ``global_size`` samples: rows of
        ``self(global_size, step)`` (computed once per step and process, see ``_global_masks``)."""
        return [m.select(slots) for m in _global_masks(self, global_size, step)]


@functools.lru_cache(maxsize=2)
def _global_masks(masker: MultiblockMasker, global_size: int, step: int) -> list[MaskBatch]:
    # The micro-batches of one step (gradient accumulation) reuse the step's draw. Read-only: callers select rows.
    return masker(global_size, step)
