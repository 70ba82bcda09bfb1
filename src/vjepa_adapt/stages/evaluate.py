"""Evaluate stages: embed every arm, probe it, plot it, and the comparison table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vjepa_adapt import storage
from vjepa_adapt.config import PipelineConfig
from vjepa_adapt.pipeline import StageContext
from vjepa_adapt.progress import get_logger
from vjepa_adapt.stage_result import StageResult, check_bad_share
from vjepa_adapt.stages.arms import (
    FRAME_SHUFFLED,
    FROZEN,
    PRETRAIN_HEAD,
    RANDOM_INIT,
    all_arms,
)
from vjepa_adapt.stages.data import load_run_clips
from vjepa_adapt.stages.encoders import _perf, build_random, load_frozen, resolve_device

log = get_logger("stages")


def _embed(ctx: StageContext, arm: str) -> StageResult:
    from vjepa_adapt.evaluate.embed import embed_clips
    from vjepa_adapt.models.vjepa import load_model

    cfg = ctx.cfg
    clips, _ = load_run_clips(ctx.run_dir)
    shuffle_seed, extra = None, None
    if arm == RANDOM_INIT:
        model = build_random(cfg)
    elif arm in (FROZEN, FRAME_SHUFFLED):
        model = load_frozen(cfg, ctx.run_dir)
        shuffle_seed = cfg.run.seed if arm == FRAME_SHUFFLED else None
    elif arm == PRETRAIN_HEAD:
        model = load_frozen(cfg, ctx.run_dir)
        extra = _head_features(ctx.path_of(PRETRAIN_HEAD) / "best" / "head.safetensors", model, cfg)
    else:
        model, _ = load_model(str(ctx.path_of(arm) / "best" / "encoder"), crop_size=cfg.data.size,
                              frames_per_clip=cfg.data.num_frames, min_loaded_fraction=cfg.model.min_loaded_fraction,
                              attn_implementation=cfg.model.attn_implementation)
        model = _perf(model, cfg)
    e = cfg.embed
    result = embed_clips(model.encoder, clips, ctx.out_dir, num_frames=cfg.data.num_frames, size=cfg.data.size,
                         batch_size=e.batch_size, chunk_size=e.chunk_size, pooled_grid=tuple(e.pooled_grid),
                         device=resolve_device(cfg), dtype=cfg.run.dtype, num_workers=cfg.run.num_workers,
                         frame_shuffle_seed=shuffle_seed, extra_features=extra)
    check_bad_share(result, cfg.data.max_bad_fraction, f"embed/{arm}")
    return result


def _head_features(path: Path, model, cfg: PipelineConfig):
    """The head-only arm's extra features: the motion_aux head's hidden vector on mean-pooled tokens."""
    from safetensors.torch import load_file

    from vjepa_adapt.models.heads import MotionAuxHead

    sd = load_file(str(path))
    head = MotionAuxHead(model.config.hidden_size, sd["cls.weight"].shape[0], reg_dims=sd["reg.weight"].shape[0])
    head.load_state_dict(sd)
    head.eval().to(resolve_device(cfg))
    return lambda tokens: head(tokens.float().mean(dim=1))[2]


def _probe(ctx: StageContext, arm: str) -> StageResult:
    from vjepa_adapt.evaluate.embed import load_features
    from vjepa_adapt.evaluate.probe import run_probe
    from vjepa_adapt.motion import load_motion_outputs

    cfg, p = ctx.cfg, ctx.cfg.probe
    feats = load_features(ctx.path_of(f"embed/{arm}"))
    mo = load_motion_outputs(ctx.path_of("motion"))
    index = {n: i for i, n in enumerate(mo.label_set.classes)}
    labels = {c: index[n] for c, n in mo.label_set.labels.items()}
    res = run_probe(feats, labels, mo.splits, mo.label_set.classes, ctx.out_dir, kind=p.kind, lr=p.lr,
                    weight_decay=p.weight_decay, batch_size=p.batch_size, epochs=p.epochs, depth=p.depth,
                    num_heads=p.num_heads, sweep=p.sweep, seed=p.seed, n_resamples=p.bootstrap_resamples,
                    device=resolve_device(cfg))
    m = res.metrics
    log.info(f"probe/{arm}: top-1 {m['top1']:.1%} [{m['ci_low']:.1%}, {m['ci_high']:.1%}] on {m['n_test']} test clips")
    return StageResult(done=int(m["n_test"]), extra={"top1": m["top1"], "ci_low": m["ci_low"], "ci_high": m["ci_high"]})


def run_plots(ctx: StageContext) -> StageResult:
    from vjepa_adapt.evaluate import plots
    from vjepa_adapt.evaluate.probe import load_probe_results, read_predictions

    n = 0
    for arm in all_arms(ctx.cfg):
        pdir = ctx.path_of(f"probe/{arm}")
        res = load_probe_results(pdir)
        k = res.metrics["num_classes"]
        plots.plot_training(res.history, ctx.out_dir / f"training_{arm}.png", chance=1.0 / k, title=arm)
        _, y, pred = read_predictions(pdir / "predictions.csv")
        plots.plot_confusion(y, pred, res.metrics["class_names"], ctx.out_dir / f"confusion_{arm}.png", title=arm)
        n += 2
    summary = _summary(ctx)
    arms = summary["arms"]
    ref = ctx.cfg.report.reference_arm
    plots.plot_top1_bars({a: (v["top1"], v["ci_low"], v["ci_high"]) for a, v in arms.items()},
                         ctx.out_dir / "top1.png", chance=1.0 / next(iter(arms.values()))["num_classes"],
                         reference_name=ref)
    plots.plot_delta_forest({a: (v["delta_vs_frozen"], v["delta_ci_low"], v["delta_ci_high"])
                             for a, v in arms.items() if a != ref}, ctx.out_dir / "delta_forest.png",
                            reference_name=ref, p_values={a: v["p_value"] for a, v in arms.items() if a != ref})
    return StageResult(done=n + 2)


def _summary(ctx: StageContext) -> dict[str, Any]:
    from vjepa_adapt.evaluate.probe import compare_arms, load_probe_results

    cfg = ctx.cfg
    ref = cfg.report.reference_arm
    ref_dir = ctx.path_of(f"probe/{ref}")
    out: dict[str, Any] = {"reference": ref, "arms": {}}
    for arm in all_arms(cfg):
        pdir = ctx.path_of(f"probe/{arm}")
        m = load_probe_results(pdir).metrics
        row = {k: m[k] for k in ("top1", "ci_low", "ci_high", "n_test", "num_classes")}
        if arm == ref:
            row.update(delta_vs_frozen=0.0, delta_ci_low=0.0, delta_ci_high=0.0, p_value=1.0)
        else:
            pr = compare_arms(ref_dir, pdir, n_resamples=cfg.probe.bootstrap_resamples, seed=cfg.probe.seed)
            row.update(delta_vs_frozen=pr.delta, delta_ci_low=pr.ci_low, delta_ci_high=pr.ci_high, p_value=pr.p_value)
        out["arms"][arm] = row
    return out


def run_compare(ctx: StageContext) -> StageResult:
    summary = _summary(ctx)
    summary["not_built"] = ["surgery", "surgery_head", "segment", "factorize", "html report"]
    storage.write_json(ctx.out_dir / "summary.json", summary)
    table = format_table(summary)
    storage.write_text(ctx.out_dir / "summary.txt", table + "\n")
    print(table)
    return StageResult(done=len(summary["arms"]))


def format_table(summary: dict[str, Any]) -> str:
    ref = summary["reference"]
    lines = [f"{'arm':<18} {'top-1':>7}  {'95% CI':<16} {'Δ vs ' + ref:>11}  {'Δ 95% CI':<18} {'p':>7}  n_test",
             "-" * 84]
    for arm, r in summary["arms"].items():
        ci = f"[{r['ci_low']:.1%}, {r['ci_high']:.1%}]"
        if arm == ref:
            d, dci, p = "—", "", ""
        else:
            d = f"{r['delta_vs_frozen'] * 100:+.1f} pp"
            dci = f"[{r['delta_ci_low'] * 100:+.1f}, {r['delta_ci_high'] * 100:+.1f}]"
            p = f"{r['p_value']:.3f}"
        lines.append(f"{arm:<18} {r['top1']:>7.1%}  {ci:<16} {d:>11}  {dci:<18} {p:>7}  {r['n_test']}")
    k = next(iter(summary["arms"].values()))["num_classes"]
    lines.append(f"chance = 1/{k} = {1 / k:.1%}. Not built yet: surgery, surgery-head, segment, factorize, HTML report.")
    return "\n".join(lines)
