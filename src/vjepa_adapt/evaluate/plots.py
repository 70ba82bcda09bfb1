"""Probe plots (probe_plot): per encoder training curves and confusion matrix; across encoders
top-1 bars with CIs and a Δ-vs-reference forest plot.

All inputs are fractions (0.566), all axes show percent / percentage points. Figures are built
with ``matplotlib.figure.Figure`` (no pyplot global state, Agg rendering) and written atomically
through :func:`vjepa_adapt.storage.save_figure`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: never try to open a window

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from vjepa_adapt.evaluate.stats import confusion_matrix  # noqa: E402
from vjepa_adapt.storage import save_figure  # noqa: E402

_TRAIN, _VAL, _CHANCE = "#1f77b4", "#d62728", "#7f7f7f"
_UP, _DOWN, _FLAT = "#2ca02c", "#d62728", "#7f7f7f"


def _pct(x: float | np.ndarray) -> float | np.ndarray:
    return np.asarray(x, dtype=float) * 100.0


def plot_training(
    history: Sequence[Mapping[str, float]],
    out_png: str | os.PathLike,
    chance: float,
    title: str | None = None,
    best_epoch: int | None = None,
) -> None:
    """Loss (train, val) and accuracy (train, val, chance line at ``chance``) per epoch.

    ``best_epoch`` (1-based; default: first epoch with the highest val accuracy) is marked.
    """
    if not history:
        raise ValueError("plot_training needs at least one epoch of history")
    epochs = np.asarray([h["epoch"] for h in history])
    val_acc = np.asarray([h["val_acc"] for h in history])
    if best_epoch is None:
        best_epoch = int(epochs[int(np.argmax(val_acc))])
    fig = Figure(figsize=(11, 4.2))
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "-o", ms=3, color=_TRAIN, label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "-o", ms=3, color=_VAL, label="val")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax_acc.plot(epochs, _pct([h["train_acc"] for h in history]), "-o", ms=3, color=_TRAIN, label="train")
    ax_acc.plot(epochs, _pct(val_acc), "-o", ms=3, color=_VAL, label="val")
    ax_acc.axhline(_pct(chance), ls="--", color=_CHANCE, label=f"chance ({_pct(chance):.1f}%)")
    best_val = float(val_acc[list(epochs).index(best_epoch)]) if best_epoch in epochs else None
    for ax in (ax_loss, ax_acc):
        ax.axvline(best_epoch, ls=":", color="black", lw=1, label=f"kept epoch {best_epoch}")
    if best_val is not None:
        ax_acc.plot([best_epoch], [_pct(best_val)], marker="*", ms=13, color=_VAL, ls="none")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="Accuracy", ylim=(0, 102))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=9)
        if len(epochs) <= 25:
            ax.set_xticks(epochs)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(out_png, fig)


def plot_confusion(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    class_names: Sequence[str],
    out_png: str | os.PathLike,
    title: str | None = None,
) -> None:
    """Row-normalised confusion matrix (% of each true class), values annotated, support on the rows."""
    k = len(class_names)
    norm = confusion_matrix(y_true, y_pred, k, normalize=True)
    counts = confusion_matrix(y_true, y_pred, k, normalize=False)
    support = counts.sum(axis=1)
    top1 = np.trace(counts) / max(1, counts.sum())
    side = max(5.0, 0.75 * k + 2.5)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.subplots()
    im = ax.imshow(_pct(norm), cmap="Blues", vmin=0, vmax=100)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("share of true class (%)")
    font = 9 if k <= 10 else 7 if k <= 16 else 5
    for i in range(k):
        for j in range(k):
            if support[i] == 0:
                if j == (k - 1) // 2:
                    ax.text((k - 1) / 2, i, "no test clips", ha="center", va="center", fontsize=font, color="grey")
                continue
            v = norm[i, j] * 100
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=font,
                    color="white" if v > 55 else "black")
    tilt = max(len(n) for n in class_names) > 4
    ax.set_xticks(range(k), labels=list(class_names), rotation=40 if tilt else 0, ha="right" if tilt else "center",
                  rotation_mode="anchor")
    ax.set_yticks(range(k), labels=[f"{name} (n={n})" for name, n in zip(class_names, support)])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    head = f"{title} — " if title else ""
    ax.set_title(f"{head}confusion (row %), top-1 {top1 * 100:.1f}%")
    fig.tight_layout()
    save_figure(out_png, fig)


def plot_top1_bars(
    arms: Mapping[str, tuple[float, float, float]],
    out_png: str | os.PathLike,
    chance: float,
    title: str | None = None,
    reference_name: str | None = None,
) -> None:
    """Bars of test top-1 per arm with their 95% CI as error bars; dashed chance line.

    ``arms``: name -> (top1, ci_low, ci_high), drawn in the given order; the reference arm (if
    named) is drawn grey.
    """
    if not arms:
        raise ValueError("plot_top1_bars needs at least one arm")
    names = list(arms)
    top1, lo, hi = (_pct([arms[n][i] for n in names]) for i in range(3))
    x = np.arange(len(names))
    fig = Figure(figsize=(max(5.5, 1.1 * len(names) + 2.5), 4.8))
    ax = fig.subplots()
    colors = [_CHANCE if n == reference_name else _TRAIN for n in names]
    ax.bar(x, top1, color=colors, alpha=0.85, width=0.6, zorder=2)
    ax.errorbar(x, top1, yerr=[top1 - lo, hi - top1], fmt="none", ecolor="black", capsize=5, lw=1.3, zorder=3)
    for xi, v, h in zip(x, top1, hi):
        ax.text(xi, h + 1.5, f"{v:.1f}%", ha="center", va="bottom", fontsize=9)
    ax.axhline(_pct(chance), ls="--", color=_DOWN, lw=1.2, label=f"chance ({_pct(chance):.1f}%)", zorder=1)
    long_names = max(len(n) for n in names) > 10 or len(names) > 6
    ax.set_xticks(x, labels=names, rotation=30 if long_names else 0, ha="right" if long_names else "center",
                  rotation_mode="anchor")
    if len(names) < 3:
        ax.set_xlim(-1.2, len(names) + 0.2)  # keep one or two bars from filling the whole width
    ax.set_ylim(0, min(110.0, float(hi.max()) + 12))
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title or "Probe top-1 with 95% CI")
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    save_figure(out_png, fig)


def plot_delta_forest(
    deltas: Mapping[str, tuple[float, float, float]],
    out_png: str | os.PathLike,
    reference_name: str,
    title: str | None = None,
    p_values: Mapping[str, float] | None = None,
) -> None:
    """Forest plot of paired Δ top-1 vs the reference (percentage points) with 95% CIs and a zero line.

    ``deltas``: name -> (delta, ci_low, ci_high), listed top to bottom in the given order. Green:
    CI above 0, red: below 0, grey: CI contains 0. Each row is annotated with Δ, CI (and p).
    """
    if not deltas:
        raise ValueError("plot_delta_forest needs at least one arm")
    names = list(deltas)
    d, lo, hi = (_pct([deltas[n][i] for n in names]) for i in range(3))
    y = np.arange(len(names))[::-1]  # first arm at the top
    fig = Figure(figsize=(8.5, max(2.6, 0.6 * len(names) + 1.6)))
    ax = fig.subplots()
    ax.axvline(0, color="black", lw=1)
    for yi, di, l, h, name in zip(y, d, lo, hi, names):
        color = _UP if l > 0 else _DOWN if h < 0 else _FLAT
        ax.errorbar([di], [yi], xerr=[[di - l], [h - di]], fmt="o", color=color, ms=6, capsize=5, lw=2)
        text = f"{di:+.1f} pp [{l:+.1f}, {h:+.1f}]"
        if p_values is not None and name in p_values:
            p = p_values[name]
            text += f"  p={p:.3f}" if p >= 0.001 else "  p<0.001"
        ax.text(1.02, yi, text, transform=blended_transform_factory(ax.transAxes, ax.transData),
                va="center", fontsize=9, family="monospace")
    left, right = min(0.0, float(lo.min())), max(0.0, float(hi.max()))
    pad = 0.12 * max(1.0, right - left)  # keep the zero line and every CI end inside the axes
    ax.set_xlim(left - pad, right + pad)
    ax.set_ylim(-0.7, len(names) - 0.3)
    ax.set_yticks(y, labels=names)
    ax.set_xlabel(f"Δ test top-1 vs {reference_name} (percentage points)")
    ax.set_title(title or f"Paired Δ top-1 vs {reference_name}, 95% CI")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_figure(out_png, fig)
