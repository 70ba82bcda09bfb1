"""Transforms on hand-made frames: exact crop pixels, flips, normalisation, centre crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vjepa_adapt.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    center_crop_box,
    crop_resize,
    eval_transform,
    hflip,
    normalize,
    sample_resized_crop,
    train_transform,
)


def quadrant_frames(t: int = 3, h: int = 40, w: int = 60) -> np.ndarray:
    """Top-left red, top-right green, bottom-left blue, bottom-right white.  # (T, H, W, 3)"""
    f = np.zeros((t, h, w, 3), np.uint8)
    f[:, : h // 2, : w // 2] = (255, 0, 0)
    f[:, : h // 2, w // 2:] = (0, 255, 0)
    f[:, h // 2:, : w // 2] = (0, 0, 255)
    f[:, h // 2:, w // 2:] = (255, 255, 255)
    return f


def test_crop_of_a_known_quadrant_gives_exact_pixels():
    frames = quadrant_frames()
    # The top-right quadrant (rows 0..19, cols 30..59), shrunk to 8x8: pure green everywhere.
    out = crop_resize(frames, (0, 30, 20, 30), 8)
    assert out.shape == (3, 8, 8, 3) and out.dtype == np.uint8
    assert (out == np.array([0, 255, 0], np.uint8)).all()
    # A box straddling the vertical midline: left half red, right half green, exactly.
    out = crop_resize(frames, (0, 20, 20, 20), 20)  # same size: a plain cut
    assert (out[:, :, :10] == (255, 0, 0)).all() and (out[:, :, 10:] == (0, 255, 0)).all()
    # Upscaling a flat region stays flat (INTER_LINEAR).
    assert (crop_resize(frames, (25, 35, 10, 10), 32) == 255).all()


def test_crop_box_out_of_frame_is_an_error():
    with pytest.raises(ValueError):
        crop_resize(quadrant_frames(), (30, 0, 20, 10), 8)


def test_hflip_of_a_gradient():
    ramp = np.tile(np.arange(8, dtype=np.uint8) * 10, (2, 4, 1))[..., None].repeat(3, axis=-1)  # (2, 4, 8, 3)
    flipped = hflip(ramp)
    assert flipped[0, 0, :, 0].tolist() == [70, 60, 50, 40, 30, 20, 10, 0]
    assert flipped.flags["C_CONTIGUOUS"]
    t = torch.arange(6.0).view(1, 1, 2, 3)
    assert hflip(t)[0, 0].tolist() == [[2.0, 1.0, 0.0], [5.0, 4.0, 3.0]]


def test_normalize_values_and_layout():
    frames = np.zeros((2, 3, 4, 3), np.uint8)
    frames[..., 0] = 255
    frames[..., 1] = 0
    frames[..., 2] = 128
    out = normalize(frames)
    assert out.shape == (2, 3, 3, 4) and out.dtype == torch.float32
    assert out[0, 0, 0, 0].item() == pytest.approx((1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], abs=1e-5)  # 2.2489
    assert out[0, 1, 0, 0].item() == pytest.approx(-IMAGENET_MEAN[1] / IMAGENET_STD[1], abs=1e-5)  # -2.0357
    assert out[1, 2, 2, 3].item() == pytest.approx((128 / 255 - IMAGENET_MEAN[2]) / IMAGENET_STD[2], abs=1e-5)
    with pytest.raises(TypeError):
        normalize(frames.astype(np.float32))


@pytest.mark.parametrize("gen", [np.random.default_rng(0), torch.Generator().manual_seed(0)])
def test_sample_resized_crop_respects_scale_ratio_and_bounds(gen):
    H, W = 96, 128
    for _ in range(200):
        top, left, h, w = sample_resized_crop(H, W, scale=(0.3, 1.0), ratio=(0.75, 1.35), gen=gen)
        assert 0 <= top and 0 <= left and top + h <= H and left + w <= W
        # rounding of h and w to integers widens the bounds a little
        assert 0.3 * H * W * 0.9 <= h * w <= H * W
        assert 0.75 * 0.9 <= w / h <= 1.35 * 1.1


def test_sample_resized_crop_is_seeded_and_generator_driven():
    a = [sample_resized_crop(96, 128, gen=np.random.default_rng(5)) for _ in range(3)]
    b = [sample_resized_crop(96, 128, gen=np.random.default_rng(5)) for _ in range(3)]
    assert a == b
    g = np.random.default_rng(5)
    draws = {sample_resized_crop(96, 128, gen=g) for _ in range(20)}
    assert len(draws) > 10


def test_sample_resized_crop_fallback_is_centred_and_ratio_bounded():
    # A 10x200 strip: no crop with aspect <= 1.35 and >= 30% area fits, so the centre fallback runs.
    top, left, h, w = sample_resized_crop(10, 200, scale=(0.3, 1.0), ratio=(0.75, 1.35), gen=np.random.default_rng(0))
    assert (h, w) == (10, round(10 * 1.35)) == (10, 14)
    assert (top, left) == (0, (200 - 14) // 2)


def test_train_transform_uses_one_crop_for_all_frames():
    # Every frame is the same random texture: if each frame got its own crop the outputs would differ.
    texture = np.random.default_rng(0).integers(0, 256, (1, 64, 80, 3), dtype=np.uint8)
    frames = np.repeat(texture, 4, axis=0)
    for seed in range(5):
        video, _ = train_transform(frames, 32, np.random.default_rng(seed), flip_prob=0.5)
        assert video.shape == (4, 3, 32, 32) and video.dtype == torch.float32
        assert all(torch.equal(video[0], video[t]) for t in range(1, 4))
    # ... and different seeds give different crops.
    a, _ = train_transform(frames, 32, np.random.default_rng(0))
    b, _ = train_transform(frames, 32, np.random.default_rng(1))
    assert not torch.equal(a, b)


def test_train_transform_flip_flag_matches_pixels():
    frames = quadrant_frames(2, 64, 64)
    flips = []
    for seed in range(12):
        video, flipped = train_transform(frames, 16, np.random.default_rng(seed), flip_prob=0.5,
                                         scale=(1.0, 1.0), ratio=(1.0, 1.0))
        # Full-frame crop: top-left pixel is red unless flipped (then it is green).
        r, g = video[0, 0, 0, 0].item(), video[0, 1, 0, 0].item()
        assert (g > r) == flipped
        flips.append(flipped)
    assert any(flips) and not all(flips)
    _, flipped = train_transform(frames, 16, np.random.default_rng(0), flip_prob=0.0)
    assert flipped is False


def test_eval_transform_centre_crops_a_non_square_frame():
    # 40x80 frame of vertical stripes: column c has value 3*c. Resize short side 40 -> 20 (x0.5),
    # giving 20x40, then a centre 20x20 crop takes resized columns 10..29 = source columns 20..59.
    frames = np.broadcast_to((np.arange(80) * 3).astype(np.uint8)[None, None, :, None], (2, 40, 80, 3)).copy()
    video = eval_transform(frames, 20)
    assert video.shape == (2, 3, 20, 20)
    pixel = video * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    row = (pixel[0, 0, 0] * 255).round()
    # INTER_AREA averages source columns 2k and 2k+1: 3*(2k) + 1.5 -> resized column 10 = 61.5.
    expected = torch.tensor([3 * (2 * k) + 1.5 for k in range(10, 30)])
    assert torch.allclose(row, expected.round(), atol=1.0)
    assert center_crop_box(40, 80, 20, 20) == (10, 30, 20, 20)


def test_eval_transform_short_side_ratio_keeps_margin():
    frames = quadrant_frames(1, 64, 64)
    video = eval_transform(frames, 32, short_side_ratio=256 / 224)
    assert video.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError):
        eval_transform(frames, 32, short_side_ratio=0.5)
