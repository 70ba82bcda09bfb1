"""Surgery step time relative to the pretrain step time: one trainer, one model, one batch size, one run.

A small synthetic target world goes through the stage graph (clips → motion → segment → factorize, the
demo's sizes: 64 px crop, patch 16, 16 frames, classical segmentation of the train split), then the tiny
preset trains with ``loop.train()`` for the same number of steps as

* **pretrain**: raw train clips, multiblock masks, EMA teacher (the demo's ``train.*``);
* **surgery**: the demo recipe — LP-FT stage, then the three unfreezing stages over D_L / D_A + replay /
  D_I + replay with SALT, SPD and MGMAE — its stage lengths scaled to the same total;
* **surgery, MGMAE off**: the same with multiblock masks, which isolates the cost of the per-sample flow.

Each step's wall time comes from timestamps at the trainer's own step boundaries (bench_train's
``StepClock`` wraps ``progress`` in the loop module; nothing in the trainer changes). The first
``--warmup`` steps and the last one (eval, checkpoint, export) are left out; surgery's first step of
every stage is kept (its re-wrap and stage switch are part of its cost). Printed: s/step, the
data-wait share (decode, augmentation and — with MGMAE — optical flow in the collate), the ratio to
pretrain, and surgery's s/step per stage (LP-FT trains no encoder block: a cheaper backward).

    python bench/bench_surgery.py                 # ~1-2 min on an idle 2-core CPU
    python bench/bench_surgery.py --steps 40 --clips 64

On a CPU shared with other jobs the load average is printed; compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning OpenMP threads crawl on a shared CPU
os.environ.setdefault("VJEPA_ADAPT_QUIET", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import StepClock  # noqa: E402  (bench/ is not a package)

from vjepa_adapt.config import Stage, load_config  # noqa: E402
from vjepa_adapt.models.heads import MotionAuxHead  # noqa: E402
from vjepa_adapt.train import loop  # noqa: E402


def prepare(root: Path, num_clips: int, seed: int) -> tuple[Any, Path]:
    """The world and its stage outputs (motion labels, segment masks, factor clips) under ``root``."""
    from vjepa_adapt.stages.graph import build_graph
    from vjepa_adapt.world.generate import generate_world

    world = root / "world"
    generate_world(world, num_clips=num_clips, style="target", seed=seed, width=128, height=96, num_frames=32,
                   clips_per_video=4)
    run = root / "run"
    cfg = load_config("demo", [f"run.out={run}", f"data.clips={world / 'manifest.jsonl'}", "motion.num_classes=4",
                               "motion.min_count_per_split=1", "factors.splits=[train]"])
    t0 = time.perf_counter()
    build_graph(cfg).run(cfg, run, targets=["motion", "factorize"])
    print(f"stages clips/motion/segment/factorize on {num_clips} clips: {time.perf_counter() - t0:.1f} s")
    return cfg, run


def surgery_stages(cfg: Any, steps: int, streams: dict) -> list[Stage]:
    """The demo's surgery stages scaled to ``steps`` in all (LP-FT ~1/8); a stream without clips in this
    small world is dropped from the mixtures (and a stage left without data with it)."""
    lpft = max(2, steps // 8)
    stages = []
    for s in cfg.train.surgery.stages:
        mix = {k: v for k, v in s.mixture.items() if k == "raw" or streams[k].clips}
        if set(mix) <= {"raw"} and s.mixture.keys() - {"raw"}:
            print(f"  (stage {s.name}: no {sorted(s.mixture.keys() - {'raw'})} clips in this world, left out)")
            continue
        total = sum(mix.values())
        stages.append(s.model_copy(update={"mixture": {k: v / total for k, v in mix.items()}}))
    rest = steps - lpft
    per = [rest // len(stages) + (1 if i < rest % len(stages) else 0) for i in range(len(stages))]
    return [s.model_copy(update={"steps": n}) for s, n in zip(stages, per)], lpft


def timed_run(name: str, cfg: Any, run: Path, tcfg: Any, masking: Any, streams: dict | None, warmup: int,
              out: Path) -> dict[str, Any]:
    from vjepa_adapt.stages.adapt import _aux_targets
    from vjepa_adapt.stages.data import load_run_clips
    from vjepa_adapt.stages.encoders import build_random

    aux, mo = _aux_targets(cfg, run)
    clips = [c for c in load_run_clips(run)[0] if c.clip_id in mo.features]
    torch.manual_seed(0)
    model = build_random(cfg)
    head = MotionAuxHead(model.config.hidden_size, len(mo.label_set.classes), reg_dims=cfg.motion.aux_dims)
    clock = StepClock(budget_s=1e9, min_steps=tcfg.steps)
    original = loop.progress
    loop.progress = clock
    try:
        res = loop.train(tcfg=tcfg, data=cfg.data, masking=masking, model=model, head=head,
                         train_clips=[c for c in clips if mo.splits[c.clip_id] == "train"],
                         val_clips=[c for c in clips if mo.splits[c.clip_id] == "val"], aux=aux, out_dir=out / name,
                         seed=0, streams=streams)
    finally:
        loop.progress = original
    hist, stamps = res.history, clock.stamps
    steps = range(warmup, len(hist) - 1)  # step k took stamps[k+1] - stamps[k]; the last one evaluates
    per_step = {k: stamps[k + 1] - stamps[k] for k in steps}
    data = hist[steps[-1]]["data_wait_s"] - hist[steps[0] - 1]["data_wait_s"]
    comp = hist[steps[-1]]["compute_s"] - hist[steps[0] - 1]["compute_s"]
    by_stage: dict[str, list[float]] = {}
    for k in steps:
        by_stage.setdefault(hist[k]["stage"], []).append(per_step[k])
    wall = sum(per_step.values())
    return {"arm": name, "steps": len(per_step), "s_per_step": wall / len(per_step),
            "median_s_per_step": statistics.median(per_step.values()), "data_wait_share": data / wall,
            "compute_share": comp / wall, "by_stage": {s: sum(v) / len(v) for s, v in by_stage.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=48, help="synthetic target clips (the train split is segmented)")
    ap.add_argument("--steps", type=int, default=24, help="trainer steps per arm (the same for every arm)")
    ap.add_argument("--warmup", type=int, default=1, help="first steps left out of the timing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the rows as JSON here")
    args = ap.parse_args()
    logging.getLogger("vjepa_adapt").setLevel(logging.WARNING)
    from vjepa_adapt.stages.adapt import _aux_targets
    from vjepa_adapt.stages.data import load_run_clips
    from vjepa_adapt.stages.surgery import factor_streams, surgery_train_config

    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg, run = prepare(root, args.clips, args.seed)
        _, mo = _aux_targets(cfg, run)
        clips = [c for c in load_run_clips(run)[0] if c.clip_id in mo.features]
        streams = factor_streams(cfg, run / "factorize", run / "segment", mo, clips)
        print("factor clips of the train split: " + ", ".join(f"{k} {len(s.clips)}" for k, s in streams.items()))
        n = args.steps
        common = {"steps": n, "warmup_steps": 1, "eval_every": n, "checkpoint_every": n, "resume": "none"}
        pre = cfg.train.for_arm(cfg.train.l2_anchor[0]).model_copy(update=common)
        stages, lpft = surgery_stages(cfg, n, streams)
        recipe = cfg.train.surgery.model_copy(update={"stages": stages, "lpft_steps": lpft})
        base = cfg.train.model_copy(update={**common, "surgery": recipe})
        rows = [timed_run("pretrain", cfg, run, pre, cfg.masking, None, args.warmup, root)]
        for name, off in (("surgery", ()), ("surgery_no_mgmae", ("mgmae",))):
            tcfg, masking = surgery_train_config(base, cfg.masking, off)
            rows.append(timed_run(name, cfg, run, tcfg.model_copy(update={"warmup_steps": 1}), masking, streams,
                                  args.warmup, root))
    ref = rows[0]["s_per_step"]
    print(f"\nbatch {cfg.train.batch_size}, {cfg.data.num_frames} frames at {cfg.data.size} px, tiny preset "
          f"(patch {cfg.model.patch_size}), {n} steps per arm, first {args.warmup} and the last left out")
    print(f"{'arm':<18} {'steps':>5} {'s/step':>8} {'median':>8} {'data-wait':>9}  {'vs pretrain':>11}")
    for r in rows:
        r["ratio_to_pretrain"] = r["s_per_step"] / ref
        print(f"{r['arm']:<18} {r['steps']:>5} {r['s_per_step']:>8.3f} {r['median_s_per_step']:>8.3f} "
              f"{r['data_wait_share']:>9.0%}  {r['ratio_to_pretrain']:>10.2f}x")
    for r in rows[1:]:
        print(f"  {r['arm']} per stage: " + ", ".join(f"{s} {v:.3f} s ({v / ref:.2f}x)" for s, v in r["by_stage"].items()))
    print(f"\nsurgery step time / pretrain step time = {rows[1]['ratio_to_pretrain']:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
