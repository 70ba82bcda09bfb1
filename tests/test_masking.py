import math
import pickle

import pytest
import torch

from vjepa_adapt.masking import (
    LONG_RANGE,
    SHORT_RANGE,
    MaskBatch,
    MaskSpec,
    MultiblockMasker,
    build_mask_batch,
    derive_generator,
    equalize_ids,
    sample_block_size,
    sample_motion_guided,
    sample_multiblock,
    sample_target_masks,
)

FULL = (8, 24, 24)
TINY = (8, 4, 4)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_maskspec_normalises_and_validates():
    s = MaskSpec(num_blocks=8, spatial_scale=0.15)
    assert s.spatial_scale == (0.15, 0.15)
    assert s.aspect_ratio == (0.75, 1.5) and s.temporal_scale == (1.0, 1.0)
    with pytest.raises(ValueError):
        MaskSpec(num_blocks=0, spatial_scale=0.1)
    with pytest.raises(ValueError):
        MaskSpec(num_blocks=1, spatial_scale=1.5)
    with pytest.raises(ValueError):
        MaskSpec(num_blocks=1, spatial_scale=(0.5, 0.2))


def test_block_size_hand_values():
    # Fixed scale and aspect: area = int(576 * 0.25) = 144, ar = 1 -> h = w = 12; t = 8.
    spec = MaskSpec(num_blocks=1, spatial_scale=0.25, aspect_ratio=(1.0, 1.0))
    assert sample_block_size(spec, FULL, gen(0)) == (8, 12, 12)
    # ar = 4: h = round(sqrt(144*4)) = 24, w = round(sqrt(36)) = 6.
    spec = MaskSpec(num_blocks=1, spatial_scale=0.25, aspect_ratio=(4.0, 4.0))
    assert sample_block_size(spec, FULL, gen(0)) == (8, 24, 6)
    # ar = 9: h = round(sqrt(1296)) = 36 clipped to 24, w = round(sqrt(16)) = 4.
    spec = MaskSpec(num_blocks=1, spatial_scale=0.25, aspect_ratio=(9.0, 9.0))
    assert sample_block_size(spec, FULL, gen(0)) == (8, 24, 4)
    # temporal 0.5 of 8 -> 4; tiny area never drops below one token.
    spec = MaskSpec(num_blocks=1, spatial_scale=0.01, temporal_scale=(0.5, 0.5))
    assert sample_block_size(spec, TINY, gen(0)) == (4, 1, 1)


def test_block_size_within_ranges():
    for s in range(50):
        t, h, w = sample_block_size(SHORT_RANGE, FULL, gen(s))
        assert t == 8
        area = int(576 * 0.15)  # 86
        assert abs(h * w - area) <= h + w  # rounding of each side
        assert 0.75 - 0.2 <= h / w <= 1.5 + 0.2


@pytest.mark.parametrize(
    "grid,spec,lo,hi",
    [
        (FULL, SHORT_RANGE, 0.50, 0.72),
        (FULL, LONG_RANGE, 0.72, 0.90),
        (TINY, SHORT_RANGE, 0.40, 0.70),
        (TINY, LONG_RANGE, 0.62, 0.86),
    ],
)
def test_target_coverage(grid, spec, lo, hi):
    fracs = []
    for s in range(40):
        m = sample_target_masks(grid, spec, 8, gen(s))
        fracs.append(m.float().mean().item())
    mean = sum(fracs) / len(fracs)
    assert lo <= mean <= hi, mean


def test_blocks_span_all_time_steps():
    masks = sample_target_masks(FULL, SHORT_RANGE, 4, gen(3))
    assert masks.shape == (4, 8, 24, 24)
    for b in range(4):
        for t in range(1, 8):
            assert torch.equal(masks[b, t], masks[b, 0])


def test_context_never_empty_and_raises_when_impossible():
    # One block of the full grid always covers everything: no context can exist.
    spec = MaskSpec(num_blocks=1, spatial_scale=1.0, aspect_ratio=(1.0, 1.0))
    with pytest.raises(ValueError, match="no context"):
        sample_target_masks(TINY, spec, 2, gen(0), max_tries=5)
    # Many large blocks on the tiny grid sometimes cover it; redraws must leave context.
    spec = MaskSpec(num_blocks=6, spatial_scale=0.6)
    masks = sample_target_masks(TINY, spec, 64, gen(1))
    assert (~masks).reshape(64, -1).any(dim=1).all()


def test_union_is_all_tokens_before_equalisation_and_disjoint():
    masks = sample_target_masks(FULL, SHORT_RANGE, 6, gen(5))
    n = 8 * 24 * 24
    for b in range(6):
        flat = masks[b].reshape(-1)
        tgt = set(torch.nonzero(flat).squeeze(1).tolist())
        ctx = set(torch.nonzero(~flat).squeeze(1).tolist())
        assert not tgt & ctx
        assert tgt | ctx == set(range(n))


def test_mask_batch_shapes_sorted_in_range_disjoint():
    mb = sample_multiblock(FULL, SHORT_RANGE, 6, gen(7))
    assert isinstance(mb, MaskBatch)
    assert mb.context_ids.dtype == torch.long and mb.target_ids.dtype == torch.long
    assert mb.context_ids.shape == (6, mb.stats["context_kept"])
    assert mb.target_ids.shape == (6, mb.stats["target_kept"])
    assert mb.stats["context_kept"] == min(mb.stats["context_real"])
    assert mb.stats["target_kept"] == min(mb.stats["target_real"])
    n = 8 * 24 * 24
    for b in range(6):
        c, t = mb.context_ids[b], mb.target_ids[b]
        assert (c[1:] > c[:-1]).all() and (t[1:] > t[:-1]).all()  # sorted, unique
        assert c.min() >= 0 and c.max() < n and t.min() >= 0 and t.max() < n
        assert not set(c.tolist()) & set(t.tolist())
        assert mb.stats["context_real"][b] + mb.stats["target_real"][b] == n


def test_ids_follow_token_layout():
    # A mask with exactly token (t=1, h=2, w=3) as target on a (2, 4, 5) grid -> id 1*20+2*5+3 = 33.
    masks = torch.zeros((1, 2, 4, 5), dtype=torch.bool)
    masks[0, 1, 2, 3] = True
    mb = build_mask_batch(masks, gen(0))
    assert mb.target_ids.tolist() == [[33]]
    assert 33 not in mb.context_ids[0].tolist() and mb.context_ids.shape == (1, 39)


def test_equalize_ids_hand_case():
    keep = torch.tensor([[1, 0, 1, 1, 0], [0, 1, 0, 0, 1]], dtype=torch.bool)
    ids, real = equalize_ids(keep, gen(0))
    assert real == [3, 2]
    assert ids.shape == (2, 2)
    assert ids[1].tolist() == [1, 4]  # the shortest row is kept whole
    assert set(ids[0].tolist()) <= {0, 2, 3} and ids[0, 0] < ids[0, 1]


def test_determinism():
    a = sample_multiblock(FULL, LONG_RANGE, 4, gen(11))
    b = sample_multiblock(FULL, LONG_RANGE, 4, gen(11))
    c = sample_multiblock(FULL, LONG_RANGE, 4, gen(12))
    assert torch.equal(a.context_ids, b.context_ids) and torch.equal(a.target_ids, b.target_ids)
    assert a.stats == b.stats
    assert not (a.target_ids.shape == c.target_ids.shape and torch.equal(a.target_ids, c.target_ids))


def _time_index(ids: torch.Tensor, grid) -> torch.Tensor:
    return (ids // (grid[1] * grid[2])).float()


def test_equalisation_is_unbiased_in_time():
    # Blocks span all time, so every sample's full context has mean time index (T'-1)/2 = 3.5.
    # A uniform subset keeps that mean; the reference rule (first k sorted ids) drops late steps.
    grid = TINY
    kept_means, truncated_means = [], []
    for s in range(150):
        masks = sample_target_masks(grid, SHORT_RANGE, 8, gen(s))
        flat = ~masks.reshape(8, -1)
        full_mean = torch.cat([_time_index(torch.nonzero(r).squeeze(1), grid) for r in flat]).mean()
        assert abs(full_mean.item() - 3.5) < 1e-6
        ids, real = equalize_ids(flat, gen(10_000 + s))
        kept_means.append(_time_index(ids, grid).mean().item())
        k = min(real)
        trunc = torch.stack([torch.nonzero(r).squeeze(1)[:k] for r in flat])
        truncated_means.append(_time_index(trunc, grid).mean().item())
    kept = sum(kept_means) / len(kept_means)
    trunc = sum(truncated_means) / len(truncated_means)
    assert abs(kept - 3.5) < 0.05, kept
    assert trunc < 3.3, trunc  # the biased reference rule is detectably different


def test_masker_is_picklable_deterministic_per_step():
    m = MultiblockMasker(grid=FULL, specs=(SHORT_RANGE, LONG_RANGE), seed=3)
    m2 = pickle.loads(pickle.dumps(m))
    a = m(4, step=10)
    b = m2(4, step=10)
    c = m(4, step=11)
    assert len(a) == 2
    for x, y in zip(a, b):
        assert torch.equal(x.context_ids, y.context_ids) and torch.equal(x.target_ids, y.target_ids)
    assert not all(
        x.target_ids.shape == z.target_ids.shape and torch.equal(x.target_ids, z.target_ids)
        for x, z in zip(a, c)
    )
    # The two generators draw from different streams and different sizes.
    assert a[0].stats["target_kept"] < a[1].stats["target_kept"]


def test_derive_generator_distinct_streams():
    r = lambda g: torch.rand(4, generator=g)  # noqa: E731
    assert torch.equal(r(derive_generator(1, 2, 0)), r(derive_generator(1, 2, 0)))
    assert not torch.equal(r(derive_generator(1, 2, 0)), r(derive_generator(1, 3, 0)))
    assert not torch.equal(r(derive_generator(1, 2, 0)), r(derive_generator(1, 2, 1)))
    assert not torch.equal(r(derive_generator(1, 2, 0)), r(derive_generator(2, 2, 0)))


# --- MGMAE ------------------------------------------------------------------------------------

# A single 2x2 block: area int(144 * 0.03) = 4 tokens, aspect 1 -> h = w = 2.
ONE_BLOCK = MaskSpec(num_blocks=1, spatial_scale=0.03, aspect_ratio=(1.0, 1.0))
MG_GRID = (4, 12, 12)


def _block_origin(mask_t: torch.Tensor) -> tuple[int, int]:
    rows, cols = torch.nonzero(mask_t, as_tuple=True)
    assert rows.max() - rows.min() == 1 and cols.max() - cols.min() == 1 and len(rows) == 4
    return int(rows.min()), int(cols.min())


def _target_masks(mb: MaskBatch, grid) -> torch.Tensor:
    B = mb.target_ids.shape[0]
    m = torch.zeros((B, math.prod(grid)), dtype=torch.bool)
    m.scatter_(1, mb.target_ids, True)
    return m.reshape(B, *grid)


@pytest.mark.parametrize("dx,dy", [(1.0, 0.0), (2.0, -1.0), (0.5, 0.0), (-1.0, 1.0)])
def test_motion_guided_block_follows_constant_flow(dx, dy):
    T, H, W = MG_GRID
    flow = torch.zeros((T, H, W, 2))
    flow[..., 0], flow[..., 1] = dx, dy
    for s in range(10):
        mb = sample_motion_guided(MG_GRID, ONE_BLOCK, flow, 1, gen(s))
        masks = _target_masks(mb, MG_GRID)[0]
        top0, left0 = _block_origin(masks[0])
        for t in range(T):
            # Expected: float position moved by t*flow, clipped to the grid, rounded half up.
            y = min(max(top0 + t * dy, 0.0), H - 2.0)
            x = min(max(left0 + t * dx, 0.0), W - 2.0)
            assert _block_origin(masks[t]) == (math.floor(y + 0.5), math.floor(x + 0.5)), (s, t)


def test_motion_guided_zero_flow_equals_static_tube_and_per_sample_flow():
    T, H, W = MG_GRID
    flow = torch.zeros((2, T, H, W, 2))
    flow[1, ..., 0] = 1.0  # sample 1 moves right; sample 0 stays
    mb = sample_motion_guided(MG_GRID, ONE_BLOCK, flow, 2, gen(4))
    masks = _target_masks(mb, MG_GRID)
    assert all(torch.equal(masks[0, t], masks[0, 0]) for t in range(T))
    o0 = _block_origin(masks[1, 0])
    o1 = _block_origin(masks[1, 1])
    assert o1 == (o0[0], min(o0[1] + 1, W - 2))
    with pytest.raises(ValueError):
        sample_motion_guided(MG_GRID, ONE_BLOCK, torch.zeros((3, 3, 3, 2)), 1, gen(0))


def test_motion_guided_follows_local_flow_only():
    # Flow only in the left half of the grid: a block there moves right, one on the right stays.
    T, H, W = MG_GRID
    flow = torch.zeros((T, H, W, 2))
    flow[:, :, :6, 0] = 1.0
    seen_moving = seen_static = False
    for s in range(30):
        masks = _target_masks(sample_motion_guided(MG_GRID, ONE_BLOCK, flow, 1, gen(s)), MG_GRID)[0]
        r0, c0 = _block_origin(masks[0])
        r1, c1 = _block_origin(masks[1])
        assert r1 == r0
        if c0 + 1 < 6:  # block fully inside the flowing half
            assert c1 == c0 + 1
            seen_moving = True
        elif c0 >= 6:
            assert c1 == c0
            seen_static = True
    assert seen_moving and seen_static


def test_masker_motion_guided_path():
    T, H, W = MG_GRID
    flow = torch.zeros((T, H, W, 2))
    flow[..., 0] = 1.0
    m = MultiblockMasker(grid=MG_GRID, specs=(ONE_BLOCK,), seed=0)
    masks = _target_masks(m(2, step=0, flow_tokens=flow)[0], MG_GRID)
    for b in range(2):
        r0, c0 = _block_origin(masks[b, 0])
        assert _block_origin(masks[b, 1]) == (r0, min(c0 + 1, W - 2))
