"""The motion probe (Ch 9): the project's fixed yardstick for every encoder.

Train an attentive (or linear) probe on the train split's stored features, keep the epoch with the
best val top-1 (ties: the earliest), optionally choose lr × wd on val, then score the test split
exactly ONCE with the chosen model. Everything is seeded: the same features, labels, splits and
seed give bit-identical results on the same machine.

Files written by :func:`run_probe` into ``out_dir`` (atomically, ``metrics.json`` last so its
presence marks a complete run):

- ``predictions.csv`` — clip_id,label,pred,correct (one row per test clip, integer class ids)
- ``logits.npz``      — clip_ids (str), logits (n_test, K) float32, labels, preds
- ``history.json``    — {"lr", "weight_decay", "best_epoch", "history": [per-epoch dicts], "sweep": [...]}
- ``probe.pt``        — {"state_dict", "model_kwargs", "feature_mean", "feature_std"} of the chosen probe
                        (``load_torch``-able; its input is standardised with the train split's statistics)
- ``metrics.json``    — top1 + BCa CI, per-class accuracy, macro-F1, counts, chosen hyperparameters
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vjepa_adapt import storage
from vjepa_adapt.errors import BadInputError
from vjepa_adapt.evaluate.stats import (
    PairedResult,
    bootstrap_ci_bca,
    confusion_matrix,
    macro_f1,
    paired_bootstrap,
    per_class_accuracy,
)
from vjepa_adapt.models.heads import AttentiveProbe, LinearProbe
from vjepa_adapt.progress import get_logger
from vjepa_adapt.train.schedules import warmup_cosine

log = get_logger("probe")

PROBE_KINDS = ("attentive", "linear")
ONE_CLASS_SHARE = 0.9  # flag: this share of test predictions (or more) is one class
NEAR_CHANCE = 1.5  # flag: best-epoch train accuracy below this multiple of chance
SPLITS = ("train", "val", "test")
EVAL_BATCH_SIZE = 256


@dataclasses.dataclass
class ProbeRun:
    """One trained probe: the best-epoch weights and the full per-epoch history (no test metrics)."""

    state_dict: dict[str, torch.Tensor]  # CPU copy of the best epoch's weights
    model_kwargs: dict[str, Any]  # build_probe(**model_kwargs) rebuilds the architecture
    best_epoch: int  # 1-based
    best_val_acc: float
    lr: float
    weight_decay: float
    history: list[dict[str, float]]  # {epoch, train_loss, train_acc, val_loss, val_acc, lr}

    def build_model(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):  # the init is overwritten; keep the global RNG untouched
            model = build_probe(**self.model_kwargs)
        model.load_state_dict(self.state_dict)
        return model.eval()


@dataclasses.dataclass
class ProbeResult:
    """What :func:`run_probe` wrote (and :func:`load_probe_results` reads back)."""

    out_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, float]]
    clip_ids: list[str]  # test clips, in file order
    labels: np.ndarray  # (n_test,) int64
    preds: np.ndarray  # (n_test,) int64
    logits: np.ndarray  # (n_test, K) float32

    @property
    def correct(self) -> np.ndarray:
        return self.labels == self.preds


def build_probe(
    kind: str,
    dim: int,
    num_classes: int,
    depth: int = 1,
    num_heads: int | None = None,
    hidden_dim: int | None = None,
    linear_norm: str = "batchnorm",
) -> nn.Module:
    """An untrained probe of ``kind`` ("attentive" on tokens, "linear" on mean vectors)."""
    if kind == "attentive":
        return AttentiveProbe(dim, num_classes, depth=depth, num_heads=num_heads, hidden_dim=hidden_dim)
    if kind == "linear":
        return LinearProbe(dim, num_classes, norm=linear_norm)
    raise ValueError(f"probe kind must be one of {PROBE_KINDS}, got {kind!r}")


@contextlib.contextmanager
def _deterministic_algorithms() -> Iterator[None]:
    # warn_only: on CUDA a few kernels have no deterministic variant; warn instead of failing.
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def _as_features(x: Any, kind: str, name: str) -> torch.Tensor:
    """Features as a CPU tensor in their stored dtype (fp16 stays fp16 until a batch is cast)."""
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else torch.as_tensor(x)
    t = t.detach().cpu()
    if not t.is_floating_point():
        raise ValueError(f"{name} must be floating point features, got {t.dtype}")
    if kind == "attentive" and t.ndim != 3:
        raise ValueError(f"the attentive probe needs tokens (N, n_tokens, D) for {name}, got shape {tuple(t.shape)}")
    if kind == "linear":
        if t.ndim == 3:
            t = t.float().mean(dim=1)  # tokens given: the linear probe works on their mean
        if t.ndim != 2:
            raise ValueError(f"the linear probe needs vectors (N, D) for {name}, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():  # checked in the stored dtype: no fp32 copy of all features
        raise ValueError(f"{name} contains NaN or Inf features")
    return t


def _as_labels(y: Any, n: int, num_classes: int, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(y)).long().cpu()
    if t.shape != (n,):
        raise ValueError(f"{name} must have one label per clip ({n}), got shape {tuple(t.shape)}")
    if n and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"{name} must hold class ids in [0, {num_classes})")
    return t


@torch.no_grad()
def _loss_and_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: str) -> tuple[float, float]:
    model.eval()
    loss_sum, hits = 0.0, 0
    for start in range(0, x.shape[0], EVAL_BATCH_SIZE):
        xb = x[start : start + EVAL_BATCH_SIZE].to(device).float()
        yb = y[start : start + EVAL_BATCH_SIZE].to(device)
        logits = model(xb)  # (b, K)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
        hits += (logits.argmax(dim=1) == yb).sum().item()
    return loss_sum / x.shape[0], hits / x.shape[0]


def train_probe(
    train_x: Any,
    train_y: Any,
    val_x: Any,
    val_y: Any,
    num_classes: int,
    *,
    kind: str = "attentive",
    lr: float = 5e-4,
    weight_decay: float = 0.05,
    batch_size: int = 64,
    epochs: int = 20,
    warmup_epochs: int = 0,
    depth: int = 1,
    num_heads: int | None = None,
    hidden_dim: int | None = None,
    linear_norm: str = "batchnorm",
    seed: int = 0,
    device: str = "cpu",
) -> ProbeRun:
    """Train a probe on train, select the epoch by val top-1 (ties: earliest). Never sees test data.

    AdamW (no weight decay on biases/norm weights), per-step cosine schedule with optional linear
    warmup, cross-entropy. Init and shuffling come from ``seed`` only (global RNG untouched).
    """
    if kind not in PROBE_KINDS:
        raise ValueError(f"probe kind must be one of {PROBE_KINDS}, got {kind!r}")
    if epochs < 1 or batch_size < 1 or warmup_epochs < 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 1, warmup_epochs >= 0 "
                         f"(got {epochs}, {batch_size}, {warmup_epochs})")
    xtr, xva = _as_features(train_x, kind, "train_x"), _as_features(val_x, kind, "val_x")
    ytr = _as_labels(train_y, xtr.shape[0], num_classes, "train_y")
    yva = _as_labels(val_y, xva.shape[0], num_classes, "val_y")
    if xtr.shape[0] == 0 or xva.shape[0] == 0:
        raise BadInputError(f"the probe needs train and val clips (got {xtr.shape[0]} train, {xva.shape[0]} val)")
    if xtr.shape[1:] != xva.shape[1:]:
        raise ValueError(f"train and val features differ in shape: {tuple(xtr.shape[1:])} vs {tuple(xva.shape[1:])}")

    model_kwargs = dict(kind=kind, dim=int(xtr.shape[-1]), num_classes=num_classes, depth=depth,
                        num_heads=num_heads, hidden_dim=hidden_dim, linear_norm=linear_norm)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_probe(**model_kwargs).to(device)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    shuffle = torch.Generator().manual_seed(seed)
    n = xtr.shape[0]
    batches = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if kind == "linear" and linear_norm == "batchnorm" and len(batches) > 1 and batches[-1][1] - batches[-1][0] == 1:
        batches.pop()  # BatchNorm cannot train on one sample; the dropped clip differs every epoch
    total_steps, warmup_steps = epochs * len(batches), warmup_epochs * len(batches)

    history: list[dict[str, float]] = []
    best_acc, best_epoch, best_state = -1.0, 0, None
    step = 0
    with _deterministic_algorithms():
        for epoch in range(1, epochs + 1):
            model.train()
            perm = torch.randperm(n, generator=shuffle)
            loss_sum, hits, seen = 0.0, 0, 0
            for start, stop in batches:
                step_lr = warmup_cosine(step, total_steps, warmup_steps, lr)
                for group in opt.param_groups:
                    group["lr"] = step_lr
                idx = perm[start:stop]
                xb, yb = xtr[idx].to(device).float(), ytr[idx].to(device)
                logits = model(xb)  # (b, K)
                loss = F.cross_entropy(logits, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                loss_sum += loss.item() * len(idx)
                hits += (logits.argmax(dim=1) == yb).sum().item()
                seen += len(idx)
            val_loss, val_acc = _loss_and_accuracy(model, xva, yva, device)
            row = {"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": hits / seen,
                   "val_loss": val_loss, "val_acc": val_acc, "lr": step_lr}
            history.append(row)
            log.debug("probe epoch %d: %s", epoch, row)
            if val_acc > best_acc:  # strict: ties keep the earliest epoch
                best_acc, best_epoch = val_acc, epoch
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    assert best_state is not None  # epochs >= 1 guarantees one epoch was scored
    return ProbeRun(best_state, model_kwargs, best_epoch, best_acc, lr, weight_decay, history)


@torch.no_grad()
def evaluate_probe(
    model: nn.Module, x: Any, *, batch_size: int = EVAL_BATCH_SIZE, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """(predictions (N,) int64, logits (N, K) float32) of a trained probe on features ``x``."""
    kind = "attentive" if isinstance(model, AttentiveProbe) else "linear"
    feats = _as_features(x, kind, "x")
    model = model.to(device).eval()
    out = [model(feats[s : s + batch_size].to(device).float()).float().cpu()
           for s in range(0, feats.shape[0], batch_size)]
    logits = torch.cat(out).numpy().astype(np.float32)  # (N, K)
    return logits.argmax(axis=1).astype(np.int64), logits


def append_clip_vectors(features: Mapping[str, Any], vectors: Any) -> dict[str, Any]:
    """Features with one extra vector per clip (N, H) concatenated onto every token and the mean.

    This is how the head-only arms are probed: the motion_aux head's hidden vector is appended to
    the frozen encoder features, giving tokens (N, T, D + H) and means (N, D + H). Rows of
    ``vectors`` follow ``features["clip_ids"]``.
    """
    vec = np.asarray(vectors)
    n = len(features["clip_ids"])
    if vec.ndim != 2 or vec.shape[0] != n:
        raise ValueError(f"need one vector per clip, shape ({n}, H); got {vec.shape}")
    out = dict(features)
    if features.get("tokens") is not None:
        tokens = np.asarray(features["tokens"])  # (N, T, D)
        tiled = np.broadcast_to(vec[:, None, :], (n, tokens.shape[1], vec.shape[1])).astype(tokens.dtype)
        out["tokens"] = np.concatenate([tokens, tiled], axis=2)  # (N, T, D + H)
    if features.get("mean") is not None:
        mean = np.asarray(features["mean"])  # (N, D)
        out["mean"] = np.concatenate([mean, vec.astype(mean.dtype)], axis=1)  # (N, D + H)
    return out


def _split_indices(
    clip_ids: Sequence[str], labels: Mapping[str, int], splits: Mapping[str, str]
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Row indices per split of the clips that have both a label and a split; counts what was dropped."""
    if len(set(clip_ids)) != len(clip_ids):
        raise ValueError("features contain duplicate clip ids")
    rows: dict[str, list[int]] = {s: [] for s in SPLITS}
    dropped = {"no_label": 0, "no_split": 0}
    for i, cid in enumerate(clip_ids):
        if cid not in labels:
            dropped["no_label"] += 1  # e.g. a rare motion class the labeller dropped
            continue
        split = splits.get(cid)
        if split is None:
            dropped["no_split"] += 1
            continue
        if split not in rows:
            raise ValueError(f"clip {cid!r} has unknown split {split!r}; expected one of {SPLITS}")
        rows[split].append(i)
    for s in SPLITS:
        if not rows[s]:
            raise BadInputError(f"no labelled clips in the {s} split: the probe cannot run "
                                f"(dropped {dropped['no_label']} unlabelled, {dropped['no_split']} without a split)")
    return {s: np.asarray(r, dtype=np.int64) for s, r in rows.items()}, dropped


def _features_for(features: Mapping[str, Any], kind: str) -> Any:
    if kind == "attentive":
        if features.get("tokens") is None:
            raise ValueError("the attentive probe needs features['tokens'] (N, n_tokens, D)")
        return features["tokens"]
    if features.get("mean") is not None:
        return features["mean"]
    if features.get("tokens") is not None:
        return features["tokens"]  # _as_features averages them
    raise ValueError("the linear probe needs features['mean'] (N, D) or features['tokens']")


def _predictions_csv(clip_ids: Sequence[str], labels: np.ndarray, preds: np.ndarray) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["clip_id", "label", "pred", "correct"])
    for cid, y, p in zip(clip_ids, labels, preds):
        writer.writerow([cid, int(y), int(p), int(y == p)])
    return buf.getvalue()


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in values]


def feature_stats(train: np.ndarray, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per feature dimension of the train split; tokens ``(N, T, D)`` pooled over clips
    and tokens. A constant dimension gets std 1 (it stays 0 rather than blowing up)."""
    axes = tuple(range(train.ndim - 1))
    x = train.astype(np.float32)
    mean, std = x.mean(axis=axes), x.std(axis=axes)
    return mean, np.where(std > eps, std, 1.0).astype(np.float32)


def standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` per feature dimension (the train statistics, for every split alike).

    Without it a probe's optimiser sees whatever scale an encoder happens to produce (one encoder's
    features span 1e-3, another's 1e2), and the same lr fits one and not the other."""
    return ((x.astype(np.float32) - mean) / std).astype(np.float32)


def probe_flags(preds: np.ndarray, train_acc: float, num_classes: int) -> list[str]:
    """Why a probe's score would not mean anything: it predicts (nearly) one class, or it never fit
    its own train split."""
    out = []
    if preds.size:
        share = float(np.bincount(preds, minlength=num_classes).max() / preds.size)
        if share >= ONE_CLASS_SHARE:
            out.append(f"predicts one class for {share:.0%} of test clips")
    chance = 1.0 / num_classes
    if train_acc < NEAR_CHANCE * chance:
        out.append(f"train accuracy {train_acc:.0%} stays near chance ({chance:.0%})")
    return out


def run_probe(
    features: Mapping[str, Any],
    labels: Mapping[str, int],
    splits: Mapping[str, str],
    class_names: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    kind: str = "attentive",
    lr: float = 5e-4,
    weight_decay: float = 0.05,
    batch_size: int = 64,
    epochs: int = 20,
    warmup_epochs: int = 0,
    depth: int = 1,
    num_heads: int | None = None,
    hidden_dim: int | None = None,
    linear_norm: str = "batchnorm",
    sweep: Sequence[tuple[float, float]] | None = None,
    seed: int = 0,
    n_resamples: int = 10_000,
    alpha: float = 0.05,
    device: str = "cpu",
    standardize_features: bool = True,
) -> ProbeResult:
    """Train (optionally sweeping lr × wd, chosen on val top-1), score test once, write ``out_dir``.

    ``features``: {"clip_ids": [...], "tokens": (N, T, D), "mean": (N, D)} (either array may be
    missing if its probe kind is not used). ``labels``: clip_id -> class id; ``splits``: clip_id ->
    "train"|"val"|"test". Clips lacking a label or split are dropped and counted.
    ``sweep``: list of (lr, weight_decay); None trains once with ``lr``/``weight_decay``. Sweep
    ties keep the first entry.
    """
    num_classes = len(class_names)
    clip_ids = [str(c) for c in features["clip_ids"]]
    x_all = _features_for(features, kind)
    if len(x_all) != len(clip_ids):
        raise ValueError(f"{len(clip_ids)} clip ids but {len(x_all)} feature rows")
    rows, dropped = _split_indices(clip_ids, labels, splits)
    y_all = np.asarray([labels.get(c, -1) for c in clip_ids], dtype=np.int64)
    x_np = x_all if isinstance(x_all, np.ndarray) else torch.as_tensor(x_all).cpu().numpy()
    part = {s: (x_np[r], y_all[r]) for s, r in rows.items()}
    stats = feature_stats(part["train"][0]) if standardize_features else None  # train statistics only
    if stats is not None:
        part = {s: (standardize(x, *stats), y) for s, (x, y) in part.items()}

    grid = list(sweep) if sweep else [(lr, weight_decay)]
    runs: list[ProbeRun] = []
    for run_lr, run_wd in grid:
        run = train_probe(*part["train"], *part["val"], num_classes, kind=kind, lr=float(run_lr),
                          weight_decay=float(run_wd), batch_size=batch_size, epochs=epochs,
                          warmup_epochs=warmup_epochs, depth=depth, num_heads=num_heads,
                          hidden_dim=hidden_dim, linear_norm=linear_norm, seed=seed, device=device)
        log.info("probe lr=%g wd=%g: best val top-1 %.4f at epoch %d",
                 run_lr, run_wd, run.best_val_acc, run.best_epoch)
        runs.append(run)
    chosen = max(runs, key=lambda r: r.best_val_acc)  # max() keeps the first of equal values

    # The one and only look at the test split.
    test_ids = [clip_ids[i] for i in rows["test"]]
    test_y = part["test"][1]
    model = chosen.build_model()
    preds, logits = evaluate_probe(model, part["test"][0], device=device)
    top1, ci_low, ci_high = bootstrap_ci_bca(preds == test_y, n_resamples=n_resamples, alpha=alpha, seed=seed)
    support = np.bincount(test_y, minlength=num_classes)
    best_row = chosen.history[chosen.best_epoch - 1]
    flags = probe_flags(preds, float(best_row["train_acc"]), num_classes)
    for f in flags:
        log.warning("probe %s: %s — its top-1 does not measure the encoder", kind, f)
    metrics = {
        "kind": kind,
        "top1": top1,
        "flags": flags,
        "standardized": standardize_features,
        "train_top1": float(best_row["train_acc"]),
        "ci_low": ci_low,
        "ci_high": ci_high,
        "ci_method": "bca",
        "n_resamples": n_resamples,
        "alpha": alpha,
        "per_class_accuracy": dict(zip(class_names, _nan_to_none(per_class_accuracy(test_y, preds, num_classes)))),
        "per_class_support": dict(zip(class_names, support.tolist())),
        "macro_f1": macro_f1(test_y, preds, num_classes),
        "confusion_counts": confusion_matrix(test_y, preds, num_classes, normalize=False).tolist(),
        "n_train": len(rows["train"]),
        "n_val": len(rows["val"]),
        "n_test": len(rows["test"]),
        "n_dropped_no_label": dropped["no_label"],
        "n_dropped_no_split": dropped["no_split"],
        "num_classes": num_classes,
        "class_names": list(class_names),
        "chance": 1.0 / num_classes,
        "best_epoch": chosen.best_epoch,
        "val_top1": chosen.best_val_acc,
        "lr": chosen.lr,
        "weight_decay": chosen.weight_decay,
        "epochs": epochs,
        "batch_size": batch_size,
        "warmup_epochs": warmup_epochs,
        "depth": depth if kind == "attentive" else None,
        "num_heads": getattr(model, "num_heads", None),
        "seed": seed,
        "sweep": [{"lr": r.lr, "weight_decay": r.weight_decay, "best_epoch": r.best_epoch, "val_top1": r.best_val_acc}
                  for r in runs],
    }
    out = Path(out_dir)
    storage.write_text(out / "predictions.csv", _predictions_csv(test_ids, test_y, preds))
    storage.save_npz(out / "logits.npz", clip_ids=np.asarray(test_ids, dtype=np.str_), logits=logits,
                     labels=test_y, preds=preds)
    storage.write_json(out / "history.json", {
        "lr": chosen.lr, "weight_decay": chosen.weight_decay, "best_epoch": chosen.best_epoch,
        "history": chosen.history,
        "sweep": [{"lr": r.lr, "weight_decay": r.weight_decay, "best_epoch": r.best_epoch, "history": r.history}
                  for r in runs],
    })
    storage.save_torch(out / "probe.pt", {
        "state_dict": chosen.state_dict, "model_kwargs": chosen.model_kwargs,
        # what its input was standardised with (None: raw features): apply before evaluate_probe
        "feature_mean": torch.from_numpy(stats[0]) if stats else None,
        "feature_std": torch.from_numpy(stats[1]) if stats else None,
    })
    storage.write_json(out / "metrics.json", metrics)  # last: marks the run complete
    log.info("probe %s: test top-1 %.4f [%.4f, %.4f] on %d clips (val %.4f, epoch %d)",
             kind, top1, ci_low, ci_high, len(test_ids), chosen.best_val_acc, chosen.best_epoch)
    return ProbeResult(out, metrics, chosen.history, test_ids, test_y, preds, logits)


def read_predictions(path: str | os.PathLike) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(clip_ids, labels, preds) from a ``predictions.csv``."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"clip_id", "label", "pred"} - set(reader.fieldnames or ())
        if missing:
            raise BadInputError(f"{path} is not a probe predictions file (missing columns {sorted(missing)})")
        rows = list(reader)
    ids = [r["clip_id"] for r in rows]
    try:
        labels = np.asarray([int(r["label"]) for r in rows], np.int64)
        preds = np.asarray([int(r["pred"]) for r in rows], np.int64)
    except (TypeError, ValueError) as err:
        raise BadInputError(f"{path}: label/pred must be integer class ids ({err})") from err
    return ids, labels, preds


def load_probe_results(out_dir: str | os.PathLike) -> ProbeResult:
    """Read back what :func:`run_probe` wrote; fails clearly if the run is incomplete."""
    out = Path(out_dir)
    if not (out / "metrics.json").is_file():
        raise BadInputError(f"{out} holds no finished probe run (metrics.json missing)")
    metrics = storage.read_json(out / "metrics.json")
    history = storage.read_json(out / "history.json")["history"]
    ids, labels, preds = read_predictions(out / "predictions.csv")
    with np.load(out / "logits.npz", allow_pickle=False) as z:
        if list(z["clip_ids"]) != ids:
            raise BadInputError(f"{out}: logits.npz and predictions.csv list different clips")
        logits = z["logits"]
    return ProbeResult(out, metrics, history, ids, labels, preds, logits)


def _class_names(run_dir: str | os.PathLike) -> list[str] | None:
    path = Path(run_dir) / "metrics.json"
    return storage.read_json(path).get("class_names") if path.is_file() else None


def compare_arms(
    ref_dir: str | os.PathLike,
    arm_dir: str | os.PathLike,
    n_resamples: int = 10_000,
    alpha: float = 0.05,
    seed: int = 0,
) -> PairedResult:
    """Paired Δ = top-1(arm) − top-1(reference) over the test clips both runs scored.

    Clips are matched by id (sorted, so file order does not matter); their labels must agree and
    so must the class lists, otherwise the two runs measured different things.
    """
    ref_names, arm_names = _class_names(ref_dir), _class_names(arm_dir)
    if ref_names is not None and arm_names is not None and ref_names != arm_names:
        raise BadInputError(f"{ref_dir} and {arm_dir} used different class lists: {ref_names} vs {arm_names}")
    ref_ids, ref_y, ref_p = read_predictions(Path(ref_dir) / "predictions.csv")
    arm_ids, arm_y, arm_p = read_predictions(Path(arm_dir) / "predictions.csv")
    ref_row = {c: i for i, c in enumerate(ref_ids)}
    arm_row = {c: i for i, c in enumerate(arm_ids)}
    shared = sorted(set(ref_row) & set(arm_row))
    if not shared:
        raise BadInputError(f"{ref_dir} and {arm_dir} share no test clips; a paired comparison is impossible")
    ri = np.asarray([ref_row[c] for c in shared])
    ai = np.asarray([arm_row[c] for c in shared])
    if not np.array_equal(ref_y[ri], arm_y[ai]):
        bad = int(np.count_nonzero(ref_y[ri] != arm_y[ai]))
        raise BadInputError(f"{bad} shared clips have different labels in {ref_dir} and {arm_dir}")
    if len(shared) < max(len(ref_ids), len(arm_ids)):
        log.warning("comparing on %d shared test clips (reference has %d, arm %d)",
                    len(shared), len(ref_ids), len(arm_ids))
    return paired_bootstrap(ref_p[ri] == ref_y[ri], arm_p[ai] == arm_y[ai],
                            n_resamples=n_resamples, alpha=alpha, seed=seed)
