"""Evaluate stages: embed every arm, probe it, plot it, and the comparison table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vjepa_adapt import storage
from vjepa_adapt.config import PipelineConfig
from vjepa_adapt.pipeline import StageContext
from vjepa_adapt.progress import get_logger
from vjepa_adapt.report.summary import FLOW_CEILING, LINEAR_DIR
from vjepa_adapt.stage_result import StageResult, check_bad_share
from vjepa_adapt.stages.arms import (
    FRAME_SHUFFLED,
    FROZEN,
    PRETRAIN_HEAD,
    RANDOM_INIT,
)
from vjepa_adapt.stages.data import frame_reader, load_run_clips
from vjepa_adapt.stages.encoders import (
    _perf,
    build_random_init,
    load_frozen,
    packaged_base,
    resolve_device,
    uses_packaged_base,
)

log = get_logger("stages")


def _embed(ctx: StageContext, arm: str) -> StageResult:
    import functools

    from vjepa_adapt.engine import run_configured
    from vjepa_adapt.evaluate.embed import embed_job, merge_chunks

    cfg = ctx.cfg
    if _is_head_only(arm):
        return _embed_head_only(ctx, arm)
    clips, _ = load_run_clips(ctx.run_dir)
    arm_dir = ctx.path_of(arm) if arm in ctx.folders else None
    job = embed_job(clips, ctx.out_dir, cfg.embed.chunk_size,
                    functools.partial(make_embed_worker, cfg, ctx.run_dir, arm, arm_dir))
    parts = run_configured(job, cfg.run)
    if parts is None:  # another rank of a torchrun job: rank 0 merges and writes
        return StageResult()
    result = merge_chunks(ctx.out_dir, parts)
    check_bad_share(result, cfg.data.max_bad_fraction, f"embed/{arm}")
    return result


def _embed_head_only(ctx: StageContext, arm: str) -> StageResult:
    """A head-only arm's features without encoding again: its encoder is the frozen one, so its tokens
    are embed/frozen's; the head's hidden vector on their mean (embed/frozen's ``mean``, the head's own
    input) is appended to every pooled token and to the mean (``append_clip_vectors``). The same arrays
    as encoding every clip again with the head as the embed work's ``extra_features``, without the forwards."""
    import json

    import numpy as np
    import torch

    from vjepa_adapt.evaluate.embed import FEATURES_FILE, load_features
    from vjepa_adapt.evaluate.probe import append_clip_vectors

    frozen_dir = ctx.path_of(f"embed/{FROZEN}")
    feats = load_features(frozen_dir)
    head = _head_features(ctx.path_of(arm) / "best" / "head.safetensors", feats["mean"].shape[1], ctx.cfg)
    with torch.no_grad():
        hidden = head(torch.from_numpy(np.asarray(feats["mean"], np.float32))).float().cpu().numpy()  # (N, E)
    out = append_clip_vectors(feats, hidden)
    storage.save_npz(ctx.out_dir / FEATURES_FILE, clip_ids=out["clip_ids"], tokens=out["tokens"], mean=out["mean"])
    result = StageResult(done=len(feats["clip_ids"]), extra={"from": f"embed/{FROZEN}"})
    for s in json.loads((frozen_dir / "stage.json").read_text()).get("skipped", []):
        result.skip(s["clip"], s["reason"])  # the same clips could not be read
    return result


def make_embed_worker(cfg: PipelineConfig, run_dir: Path, arm: str, arm_dir: Path | None):
    """The embed stage's per-chunk work (vjepa_adapt.engine) for one arm: its encoder, loaded here —
    once per process, rank or Ray actor."""
    from vjepa_adapt.evaluate.embed import make_embed_work
    from vjepa_adapt.models.vjepa import load_model

    shuffle_seed = None
    if arm == RANDOM_INIT:
        model = build_random_init(cfg, run_dir)
    elif arm in (FROZEN, FRAME_SHUFFLED):
        model = load_frozen(cfg, run_dir)
        shuffle_seed = cfg.run.seed if arm == FRAME_SHUFFLED else None
    else:
        model, _ = load_model(str(arm_dir / "best" / "encoder"), crop_size=cfg.data.size,
                              frames_per_clip=cfg.data.num_frames, min_loaded_fraction=cfg.model.min_loaded_fraction,
                              attn_implementation=cfg.model.attn_implementation)
        model = _perf(model, cfg)
    e = cfg.embed
    return make_embed_work(model.encoder, num_frames=cfg.data.num_frames, size=cfg.data.size,
                           batch_size=e.batch_size, pooled_grid=tuple(e.pooled_grid), device=resolve_device(cfg),
                           dtype=cfg.run.dtype, num_workers=cfg.run.num_workers, frame_shuffle_seed=shuffle_seed,
                           read=frame_reader(cfg, run_dir))


def _head_features(path: Path, dim: int, cfg: PipelineConfig):
    """The head-only arm's extra features: ``fn(mean-pooled frozen tokens (B, D)) -> the motion_aux
    head's hidden vector (B, E)``."""
    from safetensors.torch import load_file

    from vjepa_adapt.models.heads import MotionAuxHead

    sd = load_file(str(path))
    head = MotionAuxHead(dim, sd["cls.weight"].shape[0], reg_dims=sd["reg.weight"].shape[0])
    head.load_state_dict(sd)
    head.eval().to(resolve_device(cfg))
    return lambda mean: head(mean.float().to(resolve_device(cfg)))[2]


def _probe_inputs(ctx: StageContext):
    """The motion stage's outputs and its labels as class ids (read once per probe stage)."""
    from vjepa_adapt.motion import load_motion_outputs

    mo = load_motion_outputs(ctx.path_of("motion"))
    index = {n: i for i, n in enumerate(mo.label_set.classes)}
    return mo, {c: index[n] for c, n in mo.label_set.labels.items()}


def _run_probe(ctx: StageContext, mo, labels: dict[str, int], feats, out_dir: Path, kind: str):
    """The run's probe protocol (``probe.*``) on ``feats``; the linear kind uses ``probe.linear_lr``."""
    from vjepa_adapt.evaluate.probe import run_probe

    p = ctx.cfg.probe
    lr = p.linear_lr if kind == "linear" and p.kind != "linear" else p.lr
    return run_probe(feats, labels, mo.splits, mo.label_set.classes, out_dir, kind=kind, lr=lr,
                     weight_decay=p.weight_decay, batch_size=p.batch_size, epochs=p.epochs, depth=p.depth,
                     num_heads=p.num_heads, sweep=p.sweep if kind == p.kind else None, seed=p.seed,
                     n_resamples=p.bootstrap_resamples, device=resolve_device(ctx.cfg))


def _probe(ctx: StageContext, arm: str) -> StageResult:
    from vjepa_adapt.evaluate.embed import load_features

    p = ctx.cfg.probe
    feats = load_features(ctx.path_of(f"embed/{arm}"))
    mo, labels = _probe_inputs(ctx)
    m = _run_probe(ctx, mo, labels, feats, ctx.out_dir, p.kind).metrics
    log.info(f"probe/{arm}: top-1 {m['top1']:.1%} [{m['ci_low']:.1%}, {m['ci_high']:.1%}] on {m['n_test']} test clips")
    extra = {"top1": m["top1"], "ci_low": m["ci_low"], "ci_high": m["ci_high"]}
    if p.kind == "attentive" and p.also_linear:
        lin = _run_probe(ctx, mo, labels, {"clip_ids": feats["clip_ids"], "mean": feats["mean"]},
                         ctx.out_dir / LINEAR_DIR, "linear").metrics
        log.info(f"probe/{arm}: linear top-1 {lin['top1']:.1%} [{lin['ci_low']:.1%}, {lin['ci_high']:.1%}]")
        extra["linear_top1"] = lin["top1"]
    if _is_head_only(arm) and arm in ctx.folders:
        extra["head_top1"] = _head_eval(ctx.path_of(arm) / "best" / "head.safetensors", feats, labels, mo.splits,
                                        mo.label_set.classes, ctx.out_dir, p.bootstrap_resamples, p.seed)["top1"]
    return StageResult(done=int(m["n_test"]), extra=extra)


def run_flow_ceiling(ctx: StageContext) -> StageResult:
    """``probe/flow_ceiling``: a linear probe on the 23-D flow features the motion classes are cut
    from, on the same clips and splits — not an encoder, the row that shows what the labels allow."""
    import numpy as np

    mo, labels = _probe_inputs(ctx)
    ids = sorted(mo.features)
    feats = {"clip_ids": ids, "mean": np.stack([mo.features[c] for c in ids]).astype(np.float32)}
    m = _run_probe(ctx, mo, labels, feats, ctx.out_dir, "linear").metrics
    log.info(f"probe/{FLOW_CEILING}: top-1 {m['top1']:.1%} [{m['ci_low']:.1%}, {m['ci_high']:.1%}] "
             f"on {m['n_test']} test clips")
    return StageResult(done=int(m["n_test"]), extra={"top1": m["top1"], "ci_low": m["ci_low"], "ci_high": m["ci_high"]})


def _is_head_only(arm: str) -> bool:
    """Head-only arms (pretrain_head, surgery_head): encoder frozen, only the motion_aux head trained."""
    return arm == PRETRAIN_HEAD or arm.endswith("_head")


def _head_eval(head_file: Path, feats: dict, labels: dict[str, int], splits: dict[str, str], classes: list[str],
               out_dir: Path, n_resamples: int, seed: int) -> dict[str, Any]:
    """A head-only arm's own test accuracy: its motion_aux head on the test clips by itself.

    The head reads mean-pooled frozen tokens, which are the first D columns of the arm's stored mean
    vector (the head's hidden vector is appended after them, see ``_embed``). Writes
    ``head_eval.json`` and ``head_predictions.csv`` next to the probe outputs (the report reads them).
    """
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from vjepa_adapt.evaluate.stats import (
        bootstrap_ci_bca,
        macro_f1,
        per_class_accuracy,
    )
    from vjepa_adapt.models.heads import MotionAuxHead
    from vjepa_adapt.report.summary import HEAD_EVAL_FILE

    sd = load_file(str(head_file))
    dim = sd["trunk.0.weight"].shape[1]  # (hidden, D)
    head = MotionAuxHead(dim, sd["cls.weight"].shape[0], reg_dims=sd["reg.weight"].shape[0],
                         hidden=sd["cls.weight"].shape[1])
    head.load_state_dict(sd)
    head.eval()
    ids = [str(c) for c in feats["clip_ids"]]
    rows = [i for i, c in enumerate(ids) if splits.get(c) == "test" and c in labels]
    y = np.asarray([labels[ids[i]] for i in rows], dtype=np.int64)
    with torch.no_grad():
        logits = head(torch.from_numpy(np.asarray(feats["mean"][rows, :dim], dtype=np.float32)))[0]  # (n, K)
    pred = logits.argmax(dim=1).numpy().astype(np.int64)
    top1, lo, hi = bootstrap_ci_bca(pred == y, n_resamples=n_resamples, seed=seed)
    k = len(classes)
    acc = per_class_accuracy(y, pred, k)
    out = {"top1": top1, "ci_low": lo, "ci_high": hi, "n_test": len(rows), "macro_f1": macro_f1(y, pred, k),
           "per_class_accuracy": {c: (None if np.isnan(a) else float(a)) for c, a in zip(classes, acc)},
           "head_file": str(head_file)}
    lines = ["clip_id,label,pred,correct"] + [f"{ids[i]},{t},{q},{int(t == q)}" for i, t, q in zip(rows, y, pred)]
    storage.write_text(out_dir / "head_predictions.csv", "\n".join(lines) + "\n")
    storage.write_json(out_dir / HEAD_EVAL_FILE, out)
    log.info(f"head of {out_dir.name}: own test top-1 {top1:.1%} [{lo:.1%}, {hi:.1%}] on {len(rows)} clips")
    return out


def _arm_probe_dirs(ctx: StageContext) -> dict[str, Path]:
    """The arms of this run, discovered from the graph: every ``probe/<arm>`` stage, in graph order."""
    return {n.split("/", 1)[1]: p for n, p in ctx.folders.items() if n.startswith("probe/")}


def run_plots(ctx: StageContext) -> StageResult:
    from vjepa_adapt.evaluate import plots
    from vjepa_adapt.evaluate.probe import load_probe_results
    from vjepa_adapt.report.run_files import read_metrics_log

    n = 0
    arms = _arm_probe_dirs(ctx)
    for arm, pdir in arms.items():
        res = load_probe_results(pdir)
        k = res.metrics["num_classes"]
        plots.plot_training(res.history, ctx.out_dir / f"training_{arm}.png", chance=1.0 / k, title=arm)
        plots.plot_confusion(res.labels, res.preds, res.metrics["class_names"], ctx.out_dir / f"confusion_{arm}.png",
                             title=arm)
        n += 2
    # training curves of every trained stage of the graph (base, pretrain arms, head-only, surgery)
    for name, folder in ctx.folders.items():
        rows = read_metrics_log(folder / "metrics.jsonl")
        if rows and plots.plot_trainer_curves(rows, ctx.out_dir / f"trainer_{name.replace('/', '_')}.png",
                                              title=f"{name}: training"):
            n += 1
    summary = _summary(ctx, with_tags=False)
    rows = summary["arms"]
    ref = summary["reference"]
    plots.plot_top1_bars({a: (v["top1"], v["ci_low"], v["ci_high"]) for a, v in rows.items()},
                         ctx.out_dir / "top1.png", chance=summary["chance"], reference_name=ref)
    others = {a: v for a, v in rows.items() if a != ref}
    if others:
        plots.plot_delta_forest({a: (v["delta_vs_frozen"], v["delta_ci_low"], v["delta_ci_high"])
                                 for a, v in others.items()}, ctx.out_dir / "delta_forest.png",
                                reference_name=ref, p_values={a: v["p_value"] for a, v in others.items()})
        n += 1
    return StageResult(done=n + 1)


def _summary(ctx: StageContext, with_tags: bool = True) -> dict[str, Any]:
    from vjepa_adapt.report import build_summary
    from vjepa_adapt.tagging.stage import TAGS_FILE

    cfg = ctx.cfg
    tags = ctx.path_of("tag") / TAGS_FILE if with_tags and "tag" in ctx.folders else None
    summary = build_summary(_arm_probe_dirs(ctx), cfg.report.reference_arm, tags_file=tags,
                            min_tag_count=cfg.report.min_tag_count, n_resamples=cfg.probe.bootstrap_resamples,
                            seed=cfg.probe.seed)
    record = packaged_base() / "base.json"
    if uses_packaged_base(cfg) and record.is_file():  # the frozen base's score on its own (source) style
        src = storage.read_json(record)["source_probe"]
        summary["source_style"] = {**{k: src[k] for k in ("top1", "ci_low", "ci_high", "n_test")},
                                   "where": "vjepa_adapt/assets/demo_base/base.json"}
    return summary


def run_compare(ctx: StageContext) -> StageResult:
    """The comparison table (summary.json/.md/.txt, printed) and the HTML report, into RUN/report."""
    from vjepa_adapt.report import format_table, write_report, write_summary

    summary = _summary(ctx)
    write_summary(summary, ctx.out_dir)
    page = write_report(ctx.run_dir, ctx.out_dir, summary=summary, stage_dirs=ctx.folders)
    print(format_table(summary))
    print(f"report: {page}")
    return StageResult(done=len(summary["arms"]), extra={"report": str(page)})

