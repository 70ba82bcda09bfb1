"""Pool a V-JEPA token sequence into a small fixed set of tokens (and one mean vector).

The encoder emits one token per tubelet: ``T' x H' x W'`` of them, flattened time-major
(index = t * H'W' + h * W' + w, the order of HF's Conv3d patch embedding and of its RoPE
position decomposition). Stored features must not depend on the input resolution or clip
length, so the embed stage pools that grid to a fixed ``out_grid``.

Default ``out_grid = (1, 4, 4)`` (16 tokens): average over time, keep a 4 x 4 spatial layout.
Why spatial rather than temporal (e.g. 4 x 2 x 2): each V-JEPA token already mixes time through
tubelets and full spatio-temporal attention, so motion is encoded inside every token; what is lost
by a single mean vector is *where* in the frame it happens (ego-motion makes expanding flow that
differs between left/right/centre, agents move through one region). ``out_grid`` is a plain
argument, so a temporal layout is one config value away.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_POOLED_GRID: tuple[int, int, int] = (1, 4, 4)


def pool_tokens(
    tokens: torch.Tensor,  # (B, N, D)
    grid: tuple[int, int, int],
    out_grid: tuple[int, int, int] = DEFAULT_POOLED_GRID,
) -> torch.Tensor:  # (B, t*h*w, D), float32
    """Adaptive average pooling of the (T', H', W') token grid down to ``out_grid``.

    Computed in float32 (bf16 averages of hundreds of tokens lose digits that a probe can feel).
    """
    b, n, d = tokens.shape
    gt, gh, gw = grid
    if gt * gh * gw != n:
        raise ValueError(f"token count {n} does not match grid {grid} (= {gt * gh * gw} tokens)")
    if any(o < 1 or o > g for o, g in zip(out_grid, grid)):
        raise ValueError(f"out_grid {out_grid} must be between 1 and the token grid {grid} in every axis")
    x = tokens.float().reshape(b, gt, gh, gw, d).permute(0, 4, 1, 2, 3)  # (B, D, T', H', W')
    x = F.adaptive_avg_pool3d(x, out_grid)  # (B, D, t, h, w)
    return x.flatten(2).transpose(1, 2).contiguous()  # (B, t*h*w, D)


def mean_pool(tokens: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, D), float32
    """One clip vector: the mean over all tokens."""
    return tokens.float().mean(dim=1)
