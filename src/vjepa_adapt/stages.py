"""Stage adapters (config → module calls → files in the run folder) and the pipeline's graph.

Each ``run_*`` function reads its inputs from upstream stage folders, calls the module that owns
the work, and returns a ``StageResult``; ``build_graph`` says who needs whom and which config
sections each stage reads (its cache key). Nothing here does maths.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vjepa_adapt import storage
from vjepa_adapt.config import PipelineConfig, TrainConfig
from vjepa_adapt.data.clips import Clip
from vjepa_adapt.errors import NotBuiltError, UserError
from vjepa_adapt.pipeline import StageContext, StageGraph, StageSpec, is_complete
from vjepa_adapt.progress import get_logger
from vjepa_adapt.stage_result import StageResult, check_bad_share

log = get_logger("stages")

CLIPS_FILE, SPLITS_FILE = "clips.jsonl", "splits.csv"
FROZEN, RANDOM_INIT, FRAME_SHUFFLED, PRETRAIN_HEAD = "frozen", "random_init", "frame_shuffled", "pretrain_head"


# ------------------------------------------------------------------------------------ devices


def resolve_device(cfg: PipelineConfig) -> str:
    if cfg.run.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.run.device == "cuda" and not torch.cuda.is_available():
        raise UserError("run.device=cuda but no CUDA device is visible; use run.device=cpu or auto")
    return cfg.run.device


def _setup_threads(cfg: PipelineConfig) -> None:
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)


# ------------------------------------------------------------------------------------ synth


def synth_command(cfg: PipelineConfig, out: str, num_clips: int | None, style: str, seed: int | None) -> None:
    from vjepa_adapt.data.synthetic import generate_world

    s = cfg.synth
    n = num_clips if num_clips is not None else (s.target_clips if style == "target" else s.source_clips)
    recs = generate_world(out, num_clips=n, style=style, seed=s.seed if seed is None else seed, width=s.width,
                          height=s.height, num_frames=s.num_frames, fps=s.fps, clips_per_video=s.clips_per_video)
    print(f"wrote {len(recs)} {style} clips to {out} (manifest.jsonl, contact_sheet.png)")


def run_synth(ctx: StageContext) -> StageResult:
    from vjepa_adapt.data.synthetic import generate_world

    s = ctx.cfg.synth
    total = 0
    for style, n, seed in (("source", s.source_clips, s.seed + 1), ("target", s.target_clips, s.seed)):
        if n:
            total += len(generate_world(ctx.out_dir / style, num_clips=n, style=style, seed=seed, width=s.width,
                                        height=s.height, num_frames=s.num_frames, fps=s.fps,
                                        clips_per_video=s.clips_per_video, num_workers=max(s.workers, 1),
                                        skip_existing=True))  # an interrupted synth resumes
    return StageResult(done=total)


# ------------------------------------------------------------------------------------ clips + splits


def clips_source(cfg: PipelineConfig, run_dir: Path) -> str:
    return cfg.data.clips if cfg.data.clips else str(run_dir / "synth" / "target" / "manifest.jsonl")


def clips_fingerprint(cfg: PipelineConfig) -> Any:
    """What the clip list depends on outside the run: the source path and its size/mtime."""
    if not cfg.data.clips:
        return None
    p = Path(cfg.data.clips)
    if p.exists():
        st = p.stat()
        return {"source": str(p.resolve()), "mtime": int(st.st_mtime), "size": st.st_size}
    return {"source": cfg.data.clips}


def run_clips(ctx: StageContext) -> StageResult:
    from vjepa_adapt.data.clips import cut_into_clips, load_clips, make_splits, save_splits

    clips = load_clips(clips_source(ctx.cfg, ctx.run_dir))
    if ctx.cfg.data.clip_seconds:
        clips = cut_into_clips(clips, clip_seconds=ctx.cfg.data.clip_seconds)
    if not clips:
        raise UserError(f"no clips found in {clips_source(ctx.cfg, ctx.run_dir)}")
    # Stratify by the generator's intended class when the manifest has one (synthetic world).
    labels = {c.clip_id: str(c.meta["motion_class"]) for c in clips if c.meta.get("motion_class")} or None
    splits = make_splits(clips, ratios=tuple(ctx.cfg.data.split_ratios), seed=ctx.cfg.data.split_seed, labels=labels)
    storage.write_jsonl(ctx.out_dir / CLIPS_FILE, [_clip_row(c) for c in clips])
    save_splits(ctx.out_dir / SPLITS_FILE, splits)
    counts = {s: sum(1 for v in splits.values() if v == s) for s in ("train", "val", "test")}
    return StageResult(done=len(clips), extra={"splits": counts, "videos": len({c.video_id for c in clips})})


def _clip_row(c: Clip) -> dict[str, Any]:
    return {"clip_id": c.clip_id, "path": c.path, "video_id": c.video_id, "start": c.start, "end": c.end,
            **{k: v for k, v in c.meta.items() if isinstance(v, (str, int, float, bool)) or v is None}}


def load_run_clips(run_dir: Path) -> tuple[list[Clip], dict[str, str]]:
    from vjepa_adapt.data.clips import load_splits

    rows = storage.read_jsonl(run_dir / "clips" / CLIPS_FILE)
    base = {"clip_id", "path", "video_id", "start", "end"}
    clips = [Clip(r["clip_id"], r["path"], r["video_id"], r.get("start"), r.get("end"),
                  {k: v for k, v in r.items() if k not in base}) for r in rows]
    return clips, load_splits(run_dir / "clips" / SPLITS_FILE)


# ------------------------------------------------------------------------------------ tag, motion


def run_tag(ctx: StageContext) -> StageResult:
    from vjepa_adapt.data.clips import open_clip
    from vjepa_adapt.data.video import VideoError, read_frames
    from vjepa_adapt.tagging import build_backend, load_taxonomy, tag_clips

    t = ctx.cfg.tag
    taxonomy = load_taxonomy(t.taxonomy)
    kwargs: dict[str, Any] = {}
    if t.backend == "hf":
        kwargs.update(model_id_or_path=t.model, max_new_tokens=t.max_new_tokens, num_frames_for_vlm=t.num_frames,
                      device=resolve_device(ctx.cfg))
    elif t.backend == "openai":
        kwargs.update(base_url=t.base_url, model=t.model or "default", api_key=os.environ.get(t.api_key_env),
                      timeout_s=t.timeout_s, max_new_tokens=t.max_new_tokens, num_frames_for_vlm=t.num_frames)
    backend = build_backend(t.backend, taxonomy=taxonomy, **kwargs)
    clips, _ = load_run_clips(ctx.run_dir)
    # The heuristic measures motion from consecutive frames: read a short run at the clip's own fps.
    n = 8 if t.backend == "heuristic" else max(t.num_frames, 8)

    def items():
        for c in clips:
            try:
                yield c.clip_id, read_frames(open_clip(c), num_frames=n, start=c.start, end=c.end)
            except VideoError as e:
                yield c.clip_id, e

    return tag_clips(items(), backend, taxonomy, ctx.out_dir / "tags.jsonl", total=len(clips),
                     max_default_fraction=t.max_default_fraction, max_bad_fraction=ctx.cfg.data.max_bad_fraction)


def run_motion(ctx: StageContext) -> StageResult:
    from vjepa_adapt.data.clips import open_clip
    from vjepa_adapt.motion import build_labels, extract_features_for_clips, read_clip_pairs, write_motion_outputs

    m = ctx.cfg.motion
    clips, splits = load_run_clips(ctx.run_dir)
    device = resolve_device(ctx.cfg)
    items = ((c.clip_id, (lambda c=c: read_clip_pairs(open_clip(c), num_pairs=m.num_pairs, start=c.start,
                                                       end=c.end))) for c in clips)
    ext = extract_features_for_clips(items, backend=m.backend, max_side=m.max_side, device=device, total=len(clips),
                                     checkpoint_path=ctx.out_dir / "partial.npz")
    result = StageResult(done=len(ext.features))
    for cid, reason in ext.skipped:
        result.skip(cid, reason)
    check_bad_share(result, ctx.cfg.data.max_bad_fraction, "motion")
    kept_splits = {c: splits[c] for c in ext.features}
    label_set = build_labels(ext.features, kept_splits, num_classes=m.num_classes,
                             min_count_per_split=m.min_count_per_split, magnitude=m.magnitude)
    write_motion_outputs(ctx.out_dir, ext.features, label_set, kept_splits, skipped=ext.skipped, backend=m.backend)
    (ctx.out_dir / "partial.npz").unlink(missing_ok=True)
    agreement = _truth_agreement(clips, label_set.all_labels)
    result.extra.update({"classes": label_set.classes, "kept": len(label_set.labels), "dropped": label_set.dropped,
                         "cuts": list(label_set.cuts), **({"truth_agreement": agreement} if agreement else {})})
    if agreement:
        log.info(f"motion: flow-derived class agrees with the generator's intended class on {agreement:.1%} of clips")
    return result


def _truth_agreement(clips: list[Clip], derived: dict[str, str]) -> float | None:
    pairs = [(c.meta.get("motion_class"), derived.get(c.clip_id)) for c in clips if c.meta.get("motion_class")]
    pairs = [(a, b) for a, b in pairs if b is not None]
    return sum(a == b for a, b in pairs) / len(pairs) if pairs else None


# ------------------------------------------------------------------------------------ models


def frozen_weights(cfg: PipelineConfig, run_dir: Path) -> str:
    """The encoder every arm starts from: model.weights, or the demo's base model."""
    if cfg.model.weights:
        return cfg.model.weights
    return str(run_dir / "base" / "final" / "encoder")


def _perf(model, cfg: PipelineConfig):
    from vjepa_adapt.models.vjepa import apply_performance_switches

    return apply_performance_switches(model, gradient_checkpointing=cfg.model.gradient_checkpointing,
                                      compile=cfg.model.compile)


def build_random(cfg: PipelineConfig):
    from vjepa_adapt.models.vjepa import build_model

    torch.manual_seed(cfg.run.seed)
    extra = {"patch_size": cfg.model.patch_size} if cfg.model.patch_size else {}
    return _perf(build_model(cfg.model.preset, crop_size=cfg.data.size, frames_per_clip=cfg.data.num_frames,
                             attn_implementation=cfg.model.attn_implementation, **extra), cfg)


def load_frozen(cfg: PipelineConfig, run_dir: Path):
    from vjepa_adapt.models.vjepa import load_model

    # The preset is checked against the weights' own config, unless the patch size was overridden.
    preset = None if cfg.model.patch_size else cfg.model.preset
    model, report = load_model(frozen_weights(cfg, run_dir), preset=preset, crop_size=cfg.data.size,
                               frames_per_clip=cfg.data.num_frames, min_loaded_fraction=cfg.model.min_loaded_fraction,
                               attn_implementation=cfg.model.attn_implementation)
    return _perf(model, cfg)


def _mask_index(cfg: PipelineConfig) -> int:
    from vjepa_adapt.models.vjepa import DEFAULT_PREDICTOR_MASK_INDEX

    return cfg.model.predictor_mask_index if cfg.model.predictor_mask_index is not None \
        else DEFAULT_PREDICTOR_MASK_INDEX


def run_base(ctx: StageContext) -> StageResult:
    """Demo only: pretrain the tiny V-JEPA 2 from random init on the source-style world (JEPA only)."""
    from vjepa_adapt.data.clips import load_clips, make_splits
    from vjepa_adapt.train.loop import train

    cfg = ctx.cfg
    model = build_random(cfg)
    clips = load_clips(str(ctx.path_of("synth") / "source" / "manifest.jsonl"))
    splits = make_splits(clips, ratios=(0.9, 0.05, 0.05), seed=cfg.data.split_seed)
    b = cfg.base
    # A frozen random-init teacher (SALT-style): from scratch, an EMA teacher on a few hundred CPU
    # steps collapses (all targets alike, loss → 0 — measured: token std of targets 0.07); fixed
    # random targets cannot collapse, and the student learns spatio-temporal structure predicting them.
    tcfg = TrainConfig(mode="jepa", steps=b.steps, batch_size=b.batch_size, lr=b.lr, final_lr=b.lr * 0.01,
                       warmup_steps=b.warmup_steps, weight_decay=0.04, teacher="frozen",
                       motion_aux_weight=0.0, l2_anchor=[0.0], eval_every=b.steps, checkpoint_every=max(b.steps // 4, 1),
                       resume=cfg.train.resume)
    res = train(tcfg=tcfg, data=cfg.data, masking=cfg.masking, model=model, head=None,
                train_clips=[c for c in clips if splits[c.clip_id] != "val"],
                val_clips=[c for c in clips if splits[c.clip_id] == "val"], aux=None, out_dir=ctx.out_dir,
                mask_index=_mask_index(cfg), seed=cfg.run.seed, device=resolve_device(ctx.cfg), dtype=cfg.run.dtype,
                num_workers=cfg.run.num_workers)
    return _train_result(res, len(clips))


def _train_result(res, n_clips: int) -> StageResult:
    out = StageResult(done=res.steps, extra={"best_step": res.best_step, "best_score": res.best_score,
                                             "clips": n_clips, "last": {k: v for k, v in res.history[-1].items()
                                                                       if k != "drift_blocks"}})
    for cid, reason in dict(res.skipped).items():  # a bad clip is met once per epoch: report it once
        out.skip(cid, reason)
    return out


def _aux_targets(cfg: PipelineConfig, run_dir: Path):
    from vjepa_adapt.motion import load_motion_outputs, mirror_class, motion_aux_targets
    from vjepa_adapt.motion.classes import mirror_motion_aux_targets
    from vjepa_adapt.train.data import AuxTargets

    mo = load_motion_outputs(run_dir / "motion")
    ids = list(mo.features)
    train_ids = [c for c in ids if mo.splits[c] == "train"]
    z, mean, std = motion_aux_targets(mo.features, train_ids, dims=cfg.motion.aux_dims, clip_ids=ids)
    zf = mirror_motion_aux_targets(z, mean, std)
    index = {name: i for i, name in enumerate(mo.label_set.classes)}
    labels = {c: index[n] for c, n in mo.label_set.labels.items()}
    label_flipped = {c: index.get(mirror_class(n), -1) for c, n in mo.label_set.labels.items()}
    aux = AuxTargets(labels=labels, reg={c: z[i] for i, c in enumerate(ids)},
                     reg_flipped={c: zf[i] for i, c in enumerate(ids)}, label_flipped=label_flipped)
    return aux, mo


def _train_arm(ctx: StageContext, mode: str, l2: float) -> StageResult:
    from vjepa_adapt.models.heads import MotionAuxHead
    from vjepa_adapt.train.loop import train

    cfg = ctx.cfg
    aux, mo = _aux_targets(cfg, ctx.run_dir)
    clips, _ = load_run_clips(ctx.run_dir)
    clips = [c for c in clips if c.clip_id in mo.features]  # clips the motion stage could read
    torch.manual_seed(cfg.run.seed)
    model = load_frozen(cfg, ctx.run_dir)
    head = MotionAuxHead(model.config.hidden_size, len(mo.label_set.classes), reg_dims=cfg.motion.aux_dims)
    if mode == "head_only":
        a = cfg.arms
        tcfg = cfg.train.model_copy(update={"mode": "head_only", "steps": a.head_only_steps, "lr": a.head_only_lr,
                                            "warmup_steps": min(cfg.train.warmup_steps, a.head_only_steps),
                                            "motion_aux_weight": 1.0, "aux_lr_mult": 1.0, "stages": None,
                                            "eval_every": min(cfg.train.eval_every, a.head_only_steps)})
    else:
        tcfg = cfg.train
    res = train(tcfg=tcfg, data=cfg.data, masking=cfg.masking, model=model, head=head,
                train_clips=[c for c in clips if mo.splits[c.clip_id] == "train"],
                val_clips=[c for c in clips if mo.splits[c.clip_id] == "val"], aux=aux, out_dir=ctx.out_dir,
                l2_lambda=l2, spd_lambda=tcfg.spd, mask_index=_mask_index(cfg), seed=cfg.run.seed,
                device=resolve_device(cfg), dtype=cfg.run.dtype, num_workers=cfg.run.num_workers)
    return _train_result(res, len(clips))


def pretrain_arms(cfg: PipelineConfig) -> dict[str, float]:
    """One arm per λ: 'pretrain' for a single value, else 'pretrain_l<λ>'."""
    lams = cfg.train.l2_anchor
    return {"pretrain": lams[0]} if len(lams) == 1 else {f"pretrain_l{lam:g}": lam for lam in lams}


# ------------------------------------------------------------------------------------ embed, probe


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


# ------------------------------------------------------------------------------------ plots, compare


def all_arms(cfg: PipelineConfig) -> list[str]:
    arms = [FROZEN, *cfg.embed.baselines]
    if cfg.arms.pretrain:
        arms += list(pretrain_arms(cfg))
    if cfg.arms.pretrain_head:
        arms.append(PRETRAIN_HEAD)
    return arms


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


# ------------------------------------------------------------------------------------ the graph


def build_graph(cfg: PipelineConfig) -> StageGraph:
    synthetic = not cfg.data.clips
    has_base = synthetic and not cfg.model.weights
    if not synthetic and not cfg.model.weights:
        raise UserError("model.weights: required for real clips (a Hub id such as facebook/vjepa2-vitl-fpc64-256, "
                        "an HF folder or an official .pt); the self-pretrained base exists only for the demo world")
    data_keys = ["data.num_frames", "data.size", "data.fps_stride", "data.max_bad_fraction"]
    model_keys = ["model", "run.seed", "run.dtype"]
    base_needs = ["base"] if has_base else []
    specs: list[StageSpec] = []
    if synthetic:
        # every synth field but `workers`, which changes how fast, not what, is rendered
        synth_reads = [f"synth.{f}" for f in type(cfg.synth).model_fields if f != "workers"]
        specs.append(StageSpec("synth", run_synth, reads=synth_reads))
    specs += [
        StageSpec("clips", run_clips, needs=["synth"] if synthetic else [],
                  reads=["data.clips", "data.clip_seconds", "data.split_ratios", "data.split_seed"],
                  inputs=clips_fingerprint),
        StageSpec("tag", run_tag, needs=["clips"], reads=["tag", "data.max_bad_fraction"]),
        StageSpec("motion", run_motion, needs=["clips"], reads=["motion", "data.max_bad_fraction"]),
    ]
    if has_base:
        specs.append(StageSpec("base", run_base, needs=["synth"],
                               reads=["base", "masking", "train.resume", *model_keys, *data_keys]))
    train_reads = ["train", "masking", "motion.aux_dims", "arms", *model_keys, *data_keys, "data.flip_prob",
                   "data.crop_scale", "data.crop_ratio"]
    arms = all_arms(cfg)
    for name, lam in (pretrain_arms(cfg).items() if cfg.arms.pretrain else []):
        specs.append(StageSpec(name, lambda ctx, lam=lam: _train_arm(ctx, "jepa", lam), folder=f"pretrain/{name}",
                               needs=["clips", "motion", *base_needs], reads=train_reads))
    if cfg.arms.pretrain_head:
        specs.append(StageSpec(PRETRAIN_HEAD, lambda ctx: _train_arm(ctx, "head_only", 0.0),
                               needs=["clips", "motion", *base_needs], reads=train_reads))
    for arm in arms:
        trained = [arm] if arm not in (FROZEN, RANDOM_INIT, FRAME_SHUFFLED) else []
        specs.append(StageSpec(f"embed/{arm}", lambda ctx, arm=arm: _embed(ctx, arm),
                               needs=["clips", *base_needs, *trained], reads=["embed", *model_keys, *data_keys]))
        specs.append(StageSpec(f"probe/{arm}", lambda ctx, arm=arm: _probe(ctx, arm),
                               needs=[f"embed/{arm}", "motion", "clips"], reads=["probe"]))
    probes = [f"probe/{a}" for a in arms]
    specs.append(StageSpec("plots", run_plots, needs=probes, reads=["report", "probe.bootstrap_resamples"]))
    specs.append(StageSpec("compare", run_compare, needs=probes, folder="report",
                           reads=["report", "probe.bootstrap_resamples", "probe.seed"]))
    return StageGraph(specs)


def targets_for(command: str, cfg: PipelineConfig, graph: StageGraph, run_dir: Path) -> list[str] | None:
    """Which stages a subcommand asks for (their upstream stages come along when missing)."""
    if command in ("run", "demo"):
        return None
    if command == "pretrain":
        return list(pretrain_arms(cfg)) if cfg.arms.pretrain else []
    if command == "pretrain-head":
        return [PRETRAIN_HEAD]
    if command in ("embed", "probe"):
        # Arms that need no training, plus trained arms that already finished: `probe` never
        # starts an expensive training run as a side effect.
        hashes = graph.hashes(cfg)
        arms = [a for a in all_arms(cfg) if a in (FROZEN, RANDOM_INIT, FRAME_SHUFFLED)
                or is_complete(run_dir / graph.specs[a].dirname, hashes[a])]
        return [f"{command}/{a}" for a in arms]
    return [command]


def run_command(cfg: PipelineConfig, command: str, force: bool = False) -> int:
    _setup_threads(cfg)
    run_dir = Path(cfg.run.out)
    graph = build_graph(cfg)
    targets = targets_for(command, cfg, graph, run_dir)
    force_list = (targets or []) if force else None
    graph.run(cfg, run_dir, targets=targets, force=force_list)
    if command == "demo":
        print(f"\ndemo finished: run folder {run_dir} (report/summary.json, plots/*.png). "
              "Surgery, surgery-head and the HTML report are not built yet.")
    return 0
