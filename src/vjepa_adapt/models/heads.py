"""Small trainable heads that sit on top of encoder features.

- :class:`AttentiveProbe` — the motion probe of Ch 9, as in the V-JEPA evaluations: self-attention
  blocks over the stored tokens, then one cross-attention block in which a single learned query
  attends to the tokens, then LayerNorm + linear classifier.
- :class:`LinearProbe` — a linear classifier on one mean vector per clip (optionally standardised
  by a BatchNorm/LayerNorm without affine parameters, as in MAE-style linear probing).
- :class:`MotionAuxHead` — the motion_aux head of Ch 10 step 6 (class logits + motion-feature
  regression); its hidden vector is what the head-only arms append to the frozen features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_INIT_STD = 0.02  # V-JEPA / ViT convention for linear and query-token init


def default_num_heads(dim: int, max_heads: int = 16, min_head_dim: int = 32) -> int:
    """Largest head count <= ``max_heads`` that divides ``dim`` with heads at least ``min_head_dim`` wide.

    ViT-g (1408) gets 16 heads of 88 as in the V-JEPA probe; a tiny 64-wide test encoder gets 2.
    """
    for h in range(max_heads, 0, -1):
        if dim % h == 0 and dim // h >= min_head_dim:
            return h
    return 1


class _Attention(nn.Module):
    """Multi-head attention; self-attention when ``context`` is None, else ``query`` attends to ``context``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"probe width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = query if context is None else context
        b, nq, d = query.shape
        nk = context.shape[1]
        h = self.num_heads
        q = self.q(query).view(b, nq, h, d // h).transpose(1, 2)  # (B, H, Nq, Dh)
        k, v = self.kv(context).view(b, nk, 2, h, d // h).permute(2, 0, 3, 1, 4)  # 2 x (B, H, Nk, Dh)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, Nq, Dh)
        return self.proj(out.transpose(1, 2).reshape(b, nq, d))  # (B, Nq, D)


class _Mlp(nn.Sequential):
    def __init__(self, dim: int, mlp_ratio: float) -> None:
        hidden = int(dim * mlp_ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class _SelfAttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)); x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, N, D)
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _CrossAttentionBlock(nn.Module):
    """The query attends to the tokens; residual on the query, then MLP (V-JEPA's CrossAttentionBlock:
    one LayerNorm shared by query and tokens before the attention)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.xattn = _Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, mlp_ratio)

    def forward(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # (B, 1, D), (B, N, D) -> (B, 1, D)
        q = q + self.xattn(self.norm1(q), self.norm1(x))
        return q + self.mlp(self.norm2(q))


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=_INIT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class AttentiveProbe(nn.Module):
    """Attentive probe: tokens (B, N, D) -> logits (B, K).

    ``depth`` self-attention blocks over the tokens (0 allowed: pure attentive pooling), then one
    cross-attention block whose single learned query attends to the tokens, then LayerNorm + Linear.
    ``hidden_dim`` (optional) first projects the tokens D -> hidden_dim, which keeps the probe small
    on very wide features (e.g. frozen features with a head's hidden vector appended).
    ``num_heads=None`` picks :func:`default_num_heads` of the probe width.
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        depth: int = 1,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        hidden_dim: int | None = None,
    ) -> None:
        super().__init__()
        if depth < 0:
            raise ValueError(f"probe depth must be >= 0, got {depth}")
        if num_classes < 2:
            raise ValueError(f"a probe needs at least 2 classes, got {num_classes}")
        width = dim if hidden_dim is None else hidden_dim
        heads = default_num_heads(width) if num_heads is None else num_heads
        self.dim, self.width, self.num_classes, self.depth, self.num_heads = dim, width, num_classes, depth, heads
        self.input_proj = nn.Identity() if width == dim else nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_SelfAttentionBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.query = nn.Parameter(torch.zeros(1, 1, width))
        self.cross = _CrossAttentionBlock(width, heads, mlp_ratio)
        self.norm = nn.LayerNorm(width)
        self.classifier = nn.Linear(width, num_classes)
        _init_weights(self)
        nn.init.trunc_normal_(self.query, std=_INIT_STD)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 3 or tokens.shape[-1] != self.dim:
            raise ValueError(f"AttentiveProbe expects tokens (B, N, {self.dim}), got {tuple(tokens.shape)}")
        x = self.input_proj(tokens)  # (B, N, W)
        for block in self.blocks:
            x = block(x)
        q = self.query.expand(x.shape[0], -1, -1)  # (B, 1, W)
        q = self.cross(q, x).squeeze(1)  # (B, W)
        return self.classifier(self.norm(q))  # (B, K)


class LinearProbe(nn.Module):
    """Linear classifier on one vector per clip: (B, D) -> (B, K).

    ``norm``: "batchnorm" (default; BatchNorm1d without affine, MAE-style feature standardisation
    so encoders with differently scaled features train alike), "layernorm" (per-sample, no affine)
    or "none". A (B, N, D) token input is mean-pooled over N first.
    """

    def __init__(self, dim: int, num_classes: int, norm: str = "batchnorm") -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a probe needs at least 2 classes, got {num_classes}")
        norms = {
            "batchnorm": lambda: nn.BatchNorm1d(dim, affine=False, eps=1e-6),
            "layernorm": lambda: nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6),
            "none": nn.Identity,
        }
        if norm not in norms:
            raise ValueError(f"LinearProbe norm must be one of {sorted(norms)}, got {norm!r}")
        self.dim, self.num_classes, self.norm_kind = dim, num_classes, norm
        self.norm = norms[norm]()
        self.classifier = nn.Linear(dim, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x = x.mean(dim=1)  # (B, N, D) -> (B, D)
        if x.ndim != 2 or x.shape[-1] != self.dim:
            raise ValueError(f"LinearProbe expects (B, {self.dim}) vectors, got {tuple(x.shape)}")
        return self.classifier(self.norm(x))  # (B, K)


class MotionAuxHead(nn.Module):
    """motion_aux head: pooled features (B, D) -> (logits (B, K), reg (B, reg_dims), hidden (B, hidden)).

    Linear D->hidden, GELU, LayerNorm, Dropout, then two linear outputs: motion-class logits and the
    regression of the (z-scored) motion features. ``hidden`` is returned so head-only arms can
    append it to the frozen features. At ViT-g width (D=1408, K=8, 13 dims) it has 366,613
    parameters. A (B, N, D) input is mean-pooled over N first (callers with padded/context-only
    tokens should pool themselves with their mask).
    """

    def __init__(self, dim: int, num_classes: int, reg_dims: int = 13, hidden: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"motion_aux needs at least 2 classes, got {num_classes}")
        if reg_dims < 0:
            raise ValueError(f"reg_dims must be >= 0, got {reg_dims}")
        self.dim, self.num_classes, self.reg_dims, self.hidden_dim = dim, num_classes, reg_dims, hidden
        self.trunk = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.LayerNorm(hidden))
        self.dropout = nn.Dropout(dropout)
        self.cls = nn.Linear(hidden, num_classes)
        self.reg = nn.Linear(hidden, reg_dims)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if x.ndim == 3:
            x = x.mean(dim=1)  # (B, N, D) -> (B, D)
        if x.ndim != 2 or x.shape[-1] != self.dim:
            raise ValueError(f"MotionAuxHead expects (B, {self.dim}) features, got {tuple(x.shape)}")
        h = self.trunk(x)  # (B, hidden)
        # ``hidden`` is returned before dropout so features appended by head-only arms are the same
        # in train and eval mode; dropout only regularises the two outputs.
        d = self.dropout(h)
        return self.cls(d), self.reg(d), h
