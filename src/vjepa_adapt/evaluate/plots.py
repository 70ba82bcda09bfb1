"""Probe plots (probe_plot): per encoder training curves and confusion matrix; across encoders
top-1 bars with CIs and a Δ-vs-reference forest plot.

All inputs are fractions (0.566), all axes show percent / percentage points. Figures are built
with ``matplotlib.figure.Figure`` (no pyplot global state, Agg rendering) and written atomically
through :func:`vjepa_adapt.storage.save_figure`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: never try to open a window

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from vjepa_adapt.evaluate.stats import confusion_matrix  # noqa: E402
from vjepa_adapt.storage import save_figure  # noqa: E402

_TRAIN, _VAL, _CHANCE = "#1f77b4", "#d62728", "#7f7f7f"
_UP, _DOWN, _FLAT = "#2ca02c", "#d62728", "#7f7f7f"


# Text sizes for figures that the HTML report shows at about half their pixel width: still readable there.
_RC = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9.5,
       "xtick.labelsize": 10, "ytick.labelsize": 10, "figure.titlesize": 13}


def _styled(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(_RC):
            return fn(*args, **kwargs)

    return wrapper


def _pct(x: float | np.ndarray) -> float | np.ndarray:
    return np.asarray(x, dtype=float) * 100.0


@_styled
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
    fig = Figure(figsize=(6.4, 6.6))
    ax_loss, ax_acc = fig.subplots(2, 1)
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
        ax.legend(loc="best")
        if len(epochs) <= 25:
            ax.set_xticks(epochs)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(out_png, fig)


@_styled
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
    side = max(4.6, 0.45 * k + 2.6)  # k=8: 6.2 in, readable at half the report width
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.subplots()
    im = ax.imshow(_pct(norm), cmap="Blues", vmin=0, vmax=100)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("share of true class (%)")
    font = 11 if k <= 10 else 8 if k <= 16 else 5
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


@_styled
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
        ax.text(xi, h + 1.5, f"{v:.1f}%", ha="center", va="bottom", fontsize=10)
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
    ax.legend(loc="upper left")
    fig.tight_layout()
    save_figure(out_png, fig)


@_styled
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
                va="center", fontsize=10, family="monospace")
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


def _series(rows: Sequence[Mapping[str, object]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the rows that carry ``key`` as a finite number."""
    pts = [(float(r["step"]), float(r[key])) for r in rows  # type: ignore[arg-type]
           if isinstance(r.get(key), (int, float)) and np.isfinite(float(r[key]))]  # type: ignore[arg-type]
    if not pts:
        return np.zeros(0), np.zeros(0)
    a = np.asarray(pts)
    return a[:, 0], a[:, 1]


def _smooth(y: np.ndarray, n: int) -> np.ndarray:
    """Trailing moving average over ``n`` points (shorter at the start)."""
    c = np.cumsum(np.insert(y, 0, 0.0))
    idx = np.arange(1, y.size + 1)
    lo = np.maximum(idx - n, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def _train_line(ax, x: np.ndarray, y: np.ndarray, color: str, label: str, scale: float = 1.0) -> None:
    if x.size == 0:
        return
    if x.size > 30:  # noisy per-step values: faint raw line, smoothed line on top
        ax.plot(x, y * scale, color=color, alpha=0.25, lw=0.8)
        ax.plot(x, _smooth(y, max(5, x.size // 20)) * scale, color=color, lw=1.6, label=f"{label} (smoothed)")
    else:
        ax.plot(x, y * scale, "-o", ms=3, color=color, label=label)


@_styled
def plot_trainer_curves(
    rows: Sequence[Mapping[str, object]],
    out_png: str | os.PathLike,
    title: str | None = None,
) -> bool:
    """Training curves of one trained arm from its ``metrics.jsonl`` rows; plots what exists.

    Panels: losses (train JEPA / motion_aux / total per step, val JEPA / motion_aux at eval steps),
    motion_aux accuracy (train per step, the val nearest-centroid probe at eval steps), and drift
    per encoder block (‖θ−θ₀‖/‖θ₀‖, one line per eval step, later steps darker). Returns False (and
    writes nothing) when the rows hold nothing to plot.
    """
    loss_keys = [("jepa", "train JEPA", _TRAIN), ("aux", "train motion_aux", "#ff7f0e"),
                 ("val_jepa", "val JEPA", _VAL), ("val_aux", "val motion_aux", "#9467bd")]
    losses = {k: _series(rows, k) for k, _, _ in loss_keys}
    if not any(v[0].size for v in losses.values()):
        losses["loss"] = _series(rows, "loss")
        loss_keys = [("loss", "train loss", _TRAIN)]
    accs = {"aux_acc": _series(rows, "aux_acc"), "val_centroid_acc": _series(rows, "val_centroid_acc")}
    drift = [(float(r["step"]), np.asarray(r["drift_blocks"], dtype=float)) for r in rows  # type: ignore[arg-type]
             if isinstance(r.get("drift_blocks"), list) and r["drift_blocks"]]
    panels = [p for p, ok in (("loss", any(v[0].size for v in losses.values())),
                              ("acc", any(v[0].size for v in accs.values())), ("drift", bool(drift))) if ok]
    if not panels:
        return False
    fig = Figure(figsize=(14.0, 4.2))  # same size whatever the panel count: same scale in the report
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        if panel == "loss":
            for key, label, color in loss_keys:
                x, y = losses[key]
                if key.startswith("val_"):
                    if x.size:
                        ax.plot(x, y, "s--", ms=5, color=color, label=label)
                else:
                    _train_line(ax, x, y, color, label)
            ax.set(xlabel="step", ylabel="loss", title="Losses")
        elif panel == "acc":
            x, y = accs["aux_acc"]
            _train_line(ax, x, y, _TRAIN, "train motion_aux", scale=100.0)
            x, y = accs["val_centroid_acc"]
            if x.size:
                ax.plot(x, y * 100, "s--", ms=5, color=_VAL, label="val centroid probe")
            ax.set(xlabel="step", ylabel="accuracy (%)", title="motion_aux accuracy", ylim=(0, 102))
        else:
            cmap = matplotlib.colormaps["viridis_r"]
            for i, (step, d) in enumerate(drift):
                shade = 0.25 + 0.75 * (i + 1) / len(drift)  # later evals darker, the last one darkest
                last = i == len(drift) - 1
                ax.plot(np.arange(d.size), d * 100, "-o", ms=3, color=cmap(shade), lw=1.6 if last else 0.9,
                        label=f"step {step:g}" if (last or i == 0) else None)
            ax.set(xlabel="encoder block", ylabel="relative drift ‖θ−θ₀‖/‖θ₀‖ (%)", title="Drift per block")
            n_blocks = drift[-1][1].size
            if n_blocks <= 24:
                ax.set_xticks(range(n_blocks))
            top = max(float(np.nanmax(d)) if d.size else 0.0 for _, d in drift) * 100
            if top <= 0:
                ax.text(0.5, 0.5, "no drift: the encoder did not move", transform=ax.transAxes,
                        ha="center", va="center", color=_CHANCE)
            ax.set_ylim(0, top * 1.15 if top > 0 else 1.0)
        ax.grid(alpha=0.3)
        if panel != "drift":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(out_png, fig)
    return True
