"""The pipeline's graph: who needs whom, which config each stage reads (its cache key), and running it."""

from __future__ import annotations

from pathlib import Path

from vjepa_adapt.config import PipelineConfig
from vjepa_adapt.errors import UserError
from vjepa_adapt.pipeline import StageGraph, StageSpec, is_complete
from vjepa_adapt.stages.adapt import _train_arm, run_base
from vjepa_adapt.stages.arms import PRETRAIN_HEAD, UNTRAINED, all_arms, pretrain_arms
from vjepa_adapt.stages.data import (
    clips_fingerprint,
    run_clips,
    run_motion,
    run_synth,
    run_tag,
)
from vjepa_adapt.stages.encoders import _setup_threads
from vjepa_adapt.stages.evaluate import _embed, _probe, run_compare, run_plots


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
        trained = [] if arm in UNTRAINED else [arm]
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
        arms = [a for a in all_arms(cfg) if a in UNTRAINED
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
