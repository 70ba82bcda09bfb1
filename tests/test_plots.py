"""Plots: each function writes a valid PNG of sensible size (the pictures themselves were looked at by eye)."""

import struct

import numpy as np
import pytest

from vjepa_adapt.evaluate.plots import (
    plot_confusion,
    plot_delta_forest,
    plot_top1_bars,
    plot_trainer_curves,
    plot_training,
)


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    assert data.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82"), "truncated PNG"
    return struct.unpack(">II", data[16:24])


def assert_sensible_png(path, min_w=400, min_h=250):
    w, h = png_size(path)
    assert w >= min_w and h >= min_h, (w, h)
    assert w <= 4000 and h <= 4000, (w, h)
    assert path.stat().st_size > 10_000  # a blank canvas compresses to far less
    assert not any(p.name.startswith(".tmp-") for p in path.parent.iterdir())


def history(n=6):
    return [dict(epoch=e, train_loss=2 / e, val_loss=2.2 / e + 0.1, train_acc=min(1, 0.2 * e), val_acc=0.1 * e, lr=1e-3)
            for e in range(1, n + 1)]


def test_plot_training(tmp_path):
    plot_training(history(), tmp_path / "t.png", chance=1 / 8, title="frozen")
    assert_sensible_png(tmp_path / "t.png", min_w=600, min_h=600)  # loss above accuracy
    plot_training(history(1), tmp_path / "one.png", chance=0.5, best_epoch=1)
    assert_sensible_png(tmp_path / "one.png")
    with pytest.raises(ValueError):
        plot_training([], tmp_path / "none.png", chance=0.5)


def test_plot_confusion(tmp_path):
    rng = np.random.default_rng(0)
    names = ["still-right", "slow-right", "slow-left", "medium-right", "medium-left", "medium-down", "fast-right", "fast-left"]
    y = rng.integers(0, 8, 400)
    p = np.where(rng.random(400) < 0.6, y, rng.integers(0, 8, 400))
    plot_confusion(y, p, names, tmp_path / "c.png", title="frozen")
    assert_sensible_png(tmp_path / "c.png", min_w=600, min_h=600)
    # a class with no test clips (row left blank) must not break the plot
    plot_confusion(np.array([0, 1, 1]), np.array([0, 1, 2]), ["a", "b", "c"], tmp_path / "c3.png")
    assert_sensible_png(tmp_path / "c3.png")


def test_plot_top1_bars_and_forest(tmp_path):
    arms = {"frozen": (0.566, 0.540, 0.592), "pretrain": (0.697, 0.674, 0.722), "random-init": (0.21, 0.19, 0.23)}
    plot_top1_bars(arms, tmp_path / "b.png", chance=1 / 8, reference_name="frozen")
    assert_sensible_png(tmp_path / "b.png")
    deltas = {"pretrain": (0.132, 0.109, 0.155), "random-init": (-0.356, -0.385, -0.327), "head": (0.01, -0.01, 0.03)}
    plot_delta_forest(deltas, tmp_path / "f.png", reference_name="frozen", p_values={"pretrain": 1e-6, "head": 0.3})
    assert_sensible_png(tmp_path / "f.png", min_h=200)
    with pytest.raises(ValueError):
        plot_top1_bars({}, tmp_path / "x.png", chance=0.1)
    with pytest.raises(ValueError):
        plot_delta_forest({}, tmp_path / "y.png", reference_name="frozen")


def trainer_rows(n=40, head_only=False, blocks=6):
    rows = []
    for s in range(1, n + 1):
        row = {"step": s, "loss": 1 / s, "aux": 2 / s, "aux_acc": float("nan") if s == 1 else s / n}
        if not head_only:
            row["jepa"] = 0.9 - s / (2 * n)
        if s % 10 == 0:
            row.update(val_aux=2.2 / s, val_centroid_acc=0.2 + s / (2 * n),
                       drift_blocks=[0.0] * blocks if head_only else [s * 1e-4 * (b + 1) for b in range(blocks)])
        rows.append(row)
    return rows


def test_plot_trainer_curves(tmp_path):
    assert plot_trainer_curves(trainer_rows(), tmp_path / "jepa.png", title="pretrain")
    assert_sensible_png(tmp_path / "jepa.png", min_w=1200, min_h=350)
    assert plot_trainer_curves(trainer_rows(head_only=True), tmp_path / "head.png")  # no JEPA, zero drift
    assert_sensible_png(tmp_path / "head.png", min_w=1200, min_h=350)
    assert plot_trainer_curves([{"step": 1, "loss": 0.5}], tmp_path / "one.png")  # only a total loss
    assert (tmp_path / "one.png").exists()
    assert not plot_trainer_curves([{"step": 1, "lr": 1e-3}], tmp_path / "none.png")  # nothing to plot
    assert not (tmp_path / "none.png").exists()
