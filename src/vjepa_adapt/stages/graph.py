"""The pipeline's graph: who needs whom, which config each stage reads (its cache key), and running it."""

from __future__ import annotations

from pathlib import Path

from vjepa_adapt.config import PipelineConfig, TrainConfig
from vjepa_adapt.errors import ConfigError
from vjepa_adapt.pipeline import StageGraph, StageSpec, is_complete
from vjepa_adapt.stages.adapt import _train_arm
from vjepa_adapt.stages.arms import (
    FRAME_SHUFFLED,
    FROZEN,
    PRETRAIN_HEAD,
    RANDOM_INIT,
    SURGERY_HEAD,
    UNTRAINED,
    all_arms,
    is_head_only,
    pretrain_arms,
    surgery_arms,
)
from vjepa_adapt.stages.data import (
    check_motion_backend,
    check_tag_backend,
    clips_fingerprint,
    run_clips,
    run_motion,
    run_synth,
    run_tag,
)
from vjepa_adapt.stages.encoders import (
    _setup_threads,
    check_device,
    check_frozen_weights,
    frozen_fingerprint,
    uses_packaged_base,
)
from vjepa_adapt.stages.evaluate import (
    FLOW_CEILING,
    _embed,
    _probe,
    run_compare,
    run_flow_ceiling,
    run_plots,
)
from vjepa_adapt.stages.segment import (
    FACTORIZE,
    SEGMENT,
    check_segment_backend,
    factorize_reads,
    run_factorize,
    run_segment,
    segment_reads,
)
from vjepa_adapt.stages.surgery import (
    SET_BY_RECIPE,
    check_factor_frames,
    run_surgery,
    run_surgery_head,
)


def build_graph(cfg: PipelineConfig) -> StageGraph:
    synthetic = not cfg.data.clips
    # Requirements belong to the stages that need them; the graph checks those a command selects.
    frozen_encoder, device = (check_device, check_frozen_weights), (check_device,)
    data_keys = ["data.num_frames", "data.size", "data.fps_stride", "data.max_bad_fraction", "data.frame_cache"]
    # the demo's packaged base (model.weights unset) enters through its fingerprint: a re-shipped base
    # re-runs everything that starts from it
    model_keys = ["model", "run.seed", "run.dtype"]
    augment_keys = ["data.flip_prob", "data.crop_scale", "data.crop_ratio"]
    specs: list[StageSpec] = []
    if synthetic:
        # every synth field but `workers`, which changes how fast, not what, is rendered
        synth_reads = [f"synth.{f}" for f in type(cfg.synth).model_fields if f != "workers"]
        specs.append(StageSpec("synth", run_synth, reads=synth_reads))
    specs += [
        StageSpec("clips", run_clips, needs=["synth"] if synthetic else [],
                  reads=["data.clips", "data.clip_seconds", "data.split_ratios", "data.split_seed",
                         "data.split_guard_seconds"],
                  inputs=clips_fingerprint),
        StageSpec("tag", run_tag, needs=["clips"], reads=["tag", "data.max_bad_fraction"],
                  requires=(check_tag_backend,), clip_parallel=True),
        StageSpec("motion", run_motion, needs=["clips"], reads=["motion", "data.max_bad_fraction"],
                  requires=(check_motion_backend,), clip_parallel=True),
    ]
    # Ch 11a: the surgery arms' inputs (with segment.in_run=false `run` selects them only through those arms)
    specs.append(StageSpec(SEGMENT, run_segment, needs=["clips"], reads=segment_reads(),
                           requires=(check_segment_backend,), clip_parallel=True))
    specs.append(StageSpec(FACTORIZE, run_factorize, needs=["clips", SEGMENT], reads=factorize_reads(),
                           clip_parallel=True))
    # Trained arms read train.* and the data/model settings; the surgery recipe (train.surgery) and the
    # arm switches only where they are used, so e.g. an added ablation does not re-run pretrain.
    common = ["masking", "motion.aux_dims", *model_keys, *data_keys, *augment_keys]
    pretrain_reads = [f"train.{f}" for f in TrainConfig.model_fields if f != "surgery"] + common
    head_reads = [*pretrain_reads, "arms.head_only_steps", "arms.head_only_lr"]
    surgery_reads = [f"train.{f}" for f in TrainConfig.model_fields if f not in SET_BY_RECIPE] + [
        *common, "factors.num_frames"]
    arms = all_arms(cfg)
    for name, lam in (pretrain_arms(cfg).items() if cfg.arms.pretrain else []):
        specs.append(StageSpec(name, lambda ctx, lam=lam: _train_arm(ctx, "jepa", lam), folder=f"pretrain/{name}",
                               distributed=True,
                               needs=["clips", "motion"], reads=pretrain_reads, requires=frozen_encoder,
                               inputs=frozen_fingerprint))
    if cfg.arms.pretrain_head:
        specs.append(StageSpec(PRETRAIN_HEAD, lambda ctx: _train_arm(ctx, "head_only", 0.0), distributed=True,
                               needs=["clips", "motion"], reads=head_reads, requires=frozen_encoder,
                               inputs=frozen_fingerprint))
    surgery_requires = (*frozen_encoder, check_factor_frames)
    for name, off in surgery_arms(cfg).items():
        specs.append(StageSpec(name, lambda ctx, off=off: run_surgery(ctx, off), folder=f"surgery/{name}",
                               distributed=True, needs=["clips", "motion", FACTORIZE],
                               reads=surgery_reads, requires=surgery_requires, inputs=frozen_fingerprint))
    if cfg.arms.surgery_head:
        specs.append(StageSpec(SURGERY_HEAD, run_surgery_head, distributed=True,
                               needs=["clips", "motion", FACTORIZE],
                               reads=[*surgery_reads, "arms.head_only_steps", "arms.head_only_lr"],
                               requires=surgery_requires, inputs=frozen_fingerprint))
    for arm in arms:
        trained = [] if arm in UNTRAINED else [arm]
        # random_init reads the packaged base's config on the demo world (its input transform)
        loads_frozen = arm in (FROZEN, FRAME_SHUFFLED) or (arm == RANDOM_INIT and uses_packaged_base(cfg))
        # a head-only arm's encoder is the frozen one: its features are embed/frozen's plus its head's
        # vector (one rank appends it, nothing is encoded again)
        head_only = is_head_only(arm)
        specs.append(StageSpec(f"embed/{arm}", lambda ctx, arm=arm: _embed(ctx, arm),
                               needs=["clips", *trained, *([f"embed/{FROZEN}"] if head_only else [])],
                               reads=["embed", *model_keys, *data_keys],
                               requires=frozen_encoder if loads_frozen else device,
                               clip_parallel=not head_only, inputs=frozen_fingerprint))
        specs.append(StageSpec(f"probe/{arm}", lambda ctx, arm=arm: _probe(ctx, arm),
                               needs=[f"embed/{arm}", "motion", "clips"], reads=["probe"], requires=device))
    if cfg.probe.flow_ceiling:  # not an arm: what the labels allow, through the same splits and protocol
        specs.append(StageSpec(f"probe/{FLOW_CEILING}", run_flow_ceiling, needs=["motion", "clips"], reads=["probe"],
                               requires=device))
    probes = [f"probe/{a}" for a in arms] + ([f"probe/{FLOW_CEILING}"] if cfg.probe.flow_ceiling else [])
    specs.append(StageSpec("plots", run_plots, needs=probes,
                           reads=["report.reference_arm", "probe.bootstrap_resamples", "probe.seed"]))
    # compare writes the table and the HTML report, which shows every stage of the run: it needs them all
    # (segment/factorize only when the run selects them: for their own sake, or as a surgery arm's input)
    report_needs = [s.name for s in specs if cfg.segment.in_run or s.name not in (SEGMENT, FACTORIZE)]
    specs.append(StageSpec("compare", run_compare, needs=report_needs, folder="report",
                           reads=["report", "probe.bootstrap_resamples", "probe.seed"],
                           requires=(_reference_check([s.name[len("probe/"):] for s in specs if s.name.startswith("probe/")]),)))
    return StageGraph(specs)


def _reference_check(arms: list[str]):
    def check_reference_arm(cfg: PipelineConfig) -> None:
        if cfg.report.reference_arm not in arms:
            raise ConfigError(f"report.reference_arm: {cfg.report.reference_arm!r} is not an arm of this run "
                              f"(arms: {', '.join(arms)})")
    return check_reference_arm


def targets_for(command: str, cfg: PipelineConfig, graph: StageGraph, run_dir: Path) -> list[str] | None:
    """Which stages a subcommand asks for (their upstream stages come along when missing)."""
    if command in ("run", "demo"):
        # segment.in_run=false (the demo): the whole graph but Ch 11a's stages
        return None if cfg.segment.in_run else [n for n in graph.specs if n not in (SEGMENT, FACTORIZE)]
    if command == "report":
        return ["compare"]  # the compare stage writes report/index.html
    if command == "pretrain":
        return list(pretrain_arms(cfg)) if cfg.arms.pretrain else []
    if command == "pretrain-head":
        return [PRETRAIN_HEAD]
    if command == "surgery":  # the surgery arm and its ablations (segment and factorize come along)
        return list(surgery_arms(cfg))
    if command == "surgery-head":
        return [SURGERY_HEAD] if cfg.arms.surgery_head else []
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
    if command == "report":
        from vjepa_adapt.report import write_report

        # re-rendered from the files even when compare was up to date (a cached stage writes nothing)
        folders = {n: run_dir / s.dirname for n, s in graph.specs.items()}
        print(f"report: {write_report(run_dir, folders['compare'], stage_dirs=folders)}")
    if command == "demo":
        print(f"\ndemo finished: open {run_dir / 'report' / 'index.html'} in a browser "
              "(also report/summary.json, report/summary.md, plots/*.png).")
    return 0
