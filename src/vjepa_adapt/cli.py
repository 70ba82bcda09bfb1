"""One thin entry point: parse, load the config, call one function per subcommand.

User errors (bad config, bad input, missing weights) print one line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from vjepa_adapt.errors import NotBuiltError, UserError

# subcommand → (help line, inputs/outputs description). Order = pipeline order.
STAGES: dict[str, tuple[str, str]] = {
    "synth": (
        "render the synthetic street world (videos + ground truth + contact sheet)",
        "in: nothing (seeded). out: OUT/videos/*.mp4, OUT/truth/*, OUT/manifest.jsonl, OUT/contact_sheet.png.\n"
        "Here --clips is the NUMBER of clips and --out the world folder.",
    ),
    "tag": (
        "tag clips with the scene taxonomy (VLM, OpenAI-compatible server, or heuristic backend)",
        "in: --clips (default: the run's clips). out: RUN/tag/tags.jsonl, stage.json.",
    ),
    "motion": (
        "optical-flow 23-D motion features and the 8 motion classes (the probe's labels)",
        "in: --clips. out: RUN/motion/{labels.csv,features.npz,classes.json}, stage.json.",
    ),
    "embed": (
        "frozen-encoder features (pooled tokens + mean) for every arm's encoder and the baselines",
        "in: --clips, model.weights or an arm's exported encoder. out: RUN/embed/<arm>/features.npz.",
    ),
    "probe": (
        "attentive probe on stored features: top-1 with BCa 95% CI, per-class accuracy, predictions",
        "in: RUN/embed/<arm>, RUN/motion. out: RUN/probe/<arm>/{metrics.json,predictions.csv,history.json}.",
    ),
    "plots": (
        "training curves, confusion matrices, top-1 bars and the delta-vs-frozen forest plot",
        "in: RUN/probe/*. out: RUN/plots/*.png.",
    ),
    "pretrain": (
        "continual JEPA pretraining (+ motion_aux head, L2 anchor); one arm per train.l2_anchor value",
        "in: --clips, RUN/motion, the starting encoder. out: RUN/pretrain/<arm>/{checkpoints,encoder}.",
    ),
    "pretrain-head": (
        "head-only arm: encoder and predictor frozen, only the motion_aux head trains (m09a2)",
        "in: --clips, RUN/motion, the frozen encoder. out: RUN/pretrain_head/{head.safetensors,metrics.json}.",
    ),
    "segment": (
        "instance masks (classical CPU or SAM 3), greedy-IoU tracklets, agent-vs-layout filter, interactions",
        "in: --clips (no model needed with segment.backend=classical; sam3 needs segment.model).\n"
        "out: RUN/segment/{masks/<clip>.npz (RLE masks + tracklet table), summary.jsonl, overlay.png}, stage.json\n"
        "(extra.truth: mask IoU, tracklet purity, agent/layout accuracy, interaction recall on synthetic clips).",
    ),
    "factorize": (
        "factor datasets: D_L layout-only, D_A agent-only, D_I interaction tubes, each with its motion target",
        "in: --clips, RUN/segment (run first if missing). out: RUN/factorize/{manifest.jsonl, motion.npz,\n"
        "samples_{layout,agent,interaction}.png, <kind>/<clip>.mp4 when factors.materialise}.",
    ),
    "surgery": (
        "progressive prefix unfreezing over the factor datasets with recipe-v3 (SALT, LP-FT, SPD, CLEAR, MGMAE) (m09c1)",
        "in: --clips, RUN/motion, RUN/factorize (segment and factorize run first if missing), the frozen encoder.\n"
        "out: RUN/surgery/<arm>/{checkpoints,best,final,metrics.jsonl}; one arm per arms.surgery_ablations entry\n"
        "(surgery_no_<switch>). Stages and switches: train.surgery.*.",
    ),
    "surgery-head": (
        "head-only on the factor streams: encoder and predictor frozen, only the motion_aux head trains (m09c2)",
        "in: --clips, RUN/motion, RUN/factorize, the frozen encoder. out: RUN/surgery_head/{best/head.safetensors,\n"
        "metrics.jsonl}; embedded with the head's hidden vector appended, like pretrain-head.",
    ),
    "compare": (
        "every arm through the same probe: top-1, 95% CI, paired delta vs frozen with CI and p-value",
        "in: RUN/probe/*, RUN/tag. out: RUN/report/{summary.json,summary.md,index.html} and a printed table.",
    ),
    "report": (
        "self-contained HTML report of the run: the table, all plots, training curves, provenance",
        "in: the run folder (its config.yaml unless --config is given; missing stages are run first).\n"
        "out: RUN/report/index.html (open it in a browser; no network needed), summary.json, summary.md.",
    ),
}


def _add_common(p: argparse.ArgumentParser, clips_help: str) -> None:
    p.add_argument("--clips", metavar="SOURCE", help=clips_help)
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default: run.out of the config)")
    p.add_argument("--config", metavar="PRESET|YAML", help="packaged preset name (demo, vitl-256, vitg-384) or YAML path")
    p.add_argument("--force", action="store_true", help="re-run the stage even if it is up to date")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. probe.lr=1e-3")


def build_parser() -> argparse.ArgumentParser:
    from vjepa_adapt import __version__

    parser = argparse.ArgumentParser(
        prog="vjepa-adapt",
        description="Evaluate and adapt the V-JEPA 2 video encoder to a new video domain.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Config layering: packaged defaults <- --config YAML <- key=value overrides.",
    )
    parser.add_argument("--version", action="version", version=f"vjepa-adapt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_line, io) in STAGES.items():
        p = sub.add_parser(name, help=help_line.replace("%", "%%"), description=f"{help_line}\n\n{io}".replace("%", "%%"),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == "synth":
            p.add_argument("--clips", type=int, default=None, metavar="N", help="number of clips to render")
            p.add_argument("--out", required=True, metavar="DIR", help="output folder of the world")
            p.add_argument("--style", choices=["source", "target"], default="target")
            p.add_argument("--seed", type=int, default=None)
            p.add_argument("--config", metavar="PRESET|YAML", help="sizes come from the synth section")
            p.add_argument("overrides", nargs="*", metavar="key=value")
        else:
            _add_common(p, "folder of videos, manifest (.csv/.jsonl) or shard pattern (default: data.clips, "
                           "else the run's synthetic target world)")
    p = sub.add_parser("base", help="train the demo's base encoder (stand-in for Meta's weights) on the source world",
                       description="Renders base.clips source-style clips, labels their motion, trains the tiny V-JEPA 2\n"
                                   "(base.*: JEPA + motion_aux on the source labels), probes the frozen result on the\n"
                                   "source style and writes OUT/base.json. --ship puts it into the package, where a run\n"
                                   "on the synthetic world starts from it when model.weights is unset.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", metavar="DIR", help="its run folder (default runs/base)")
    p.add_argument("--config", metavar="PRESET|YAML", help="default: the demo preset")
    p.add_argument("--ship", action="store_true", help="copy the result into the package (vjepa_adapt/assets/demo_base)")
    p.add_argument("--force", action="store_true", help="re-run every stage of it")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    for name, help_line in (
        ("run", "run the whole stage graph from a config (skips up-to-date stages)"),
        ("demo", "the whole graph on the embedded default: synthetic world + tiny V-JEPA 2 on CPU"),
    ):
        p = sub.add_parser(name, help=help_line, description=help_line)
        _add_common(p, "clips for the target domain (default: data.clips, else the synthetic world)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # OpenMP threads that spin while waiting make torch 20-40x slower when the CPU is shared (decode
    # workers, other jobs; measured in bench/bench_train.py). Must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return _dispatch(args)
    except NotBuiltError as e:
        print(f"vjepa-adapt {args.command}: {e}", file=sys.stderr)
        return 3
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is kept, re-run to resume", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from vjepa_adapt.config import load_config
    from vjepa_adapt.progress import silence_library_bars

    silence_library_bars()

    if args.command == "synth":
        from vjepa_adapt import stages

        cfg = load_config(args.config, args.overrides)
        stages.synth_command(cfg, out=args.out, num_clips=args.clips, style=args.style, seed=args.seed)
        return 0
    if args.command == "base":
        from vjepa_adapt import dist
        from vjepa_adapt.stages.base import run_base_command

        cfg = load_config(args.config or "demo", args.overrides)
        dist.init(cfg.run.device)
        try:
            return run_base_command(cfg, args.out, do_ship=args.ship, force=args.force)
        finally:
            dist.shutdown()
    preset = args.config or ("demo" if args.command == "demo" else None)
    if args.command == "report" and not args.config:
        # the report of a run folder: that run's own resolved config, so nothing re-runs by accident
        from pathlib import Path

        saved = Path(args.out or load_config(None, args.overrides).run.out) / "config.yaml"
        preset = str(saved) if saved.is_file() else None
    overrides = list(args.overrides)
    if args.clips:
        overrides.append(f"data.clips={args.clips}")
    if args.out:
        overrides.append(f"run.out={args.out}")
    cfg = load_config(preset, overrides)

    from vjepa_adapt import dist, stages

    dist.init(cfg.run.device)  # under torchrun (WORLD_SIZE > 1) the process group; else nothing
    try:
        return stages.run_command(cfg, args.command, force=args.force)
    finally:
        dist.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
