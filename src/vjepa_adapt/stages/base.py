"""``vjepa-adapt base``: train the demo's base encoder — the stand-in for Meta's weights — and ship it.

There is no model hub on a CPU demo machine, so the embedded default needs an encoder that already
understands motion, as V-JEPA 2's weights do on real footage (56.6% frozen on this probe, 4.5x
chance). This command makes one, from random init, on the *source* style of the synthetic world,
with the pipeline's own pieces run as a small stage graph in ``--out`` (so it caches and resumes):

    world   render ``base.clips`` source-style clips (seeded; never the demo's target scenes)
    clips   split them 70/15/15 by video
    motion  their flow-derived motion classes (the same motion stage as every run)
    base    the one trainer: JEPA (a frozen random-init teacher: from scratch, an EMA teacher on a
            CPU budget collapses) + motion_aux on the source labels (``base.*``)
    embed/base, probe/base
            the frozen base through the same probe protocol: its source-style score

``--ship`` copies the best checkpoint's encoder (HF format), its motion_aux head and the record
``base.json`` (recipe, source-style probe score, class list, versions, timings) into
``vjepa_adapt/assets/demo_base``, which is what a run on the synthetic world starts from when
``model.weights`` is unset. A test checks that the shipped record's recipe is the current one.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from vjepa_adapt import storage
from vjepa_adapt.config import PipelineConfig, TrainConfig, dump_config
from vjepa_adapt.pipeline import StageContext, StageGraph, StageSpec, read_stage_record
from vjepa_adapt.progress import get_logger
from vjepa_adapt.stage_result import StageResult
from vjepa_adapt.stages.adapt import fit_arm
from vjepa_adapt.stages.data import (
    SOURCE_SEED_OFFSET,
    render_world,
    run_clips,
    run_motion,
)
from vjepa_adapt.stages.encoders import (
    _setup_threads,
    build_random,
    check_device,
    packaged_base,
)
from vjepa_adapt.stages.evaluate import _embed, _probe

log = get_logger("base")

BASE = "base"
BASE_SPLITS = (0.7, 0.15, 0.15)
RECORD = "base.json"
# What the recipe of a base is: the settings its weights depend on (the record stores them; a test
# compares). The probe is left out: it only scores the base, its record keeps the score.
RECIPE_KEYS = ("base", *(f"synth.{f}" for f in ("width", "height", "num_frames", "fps", "clips_per_video",
                                                  "vertical_share", "seed")),
               *(f"model.{f}" for f in ("preset", "patch_size", "attn_implementation", "predictor_mask_index")),
               "masking", "motion",
               *(f"data.{f}" for f in ("num_frames", "size", "fps_stride", "crop_scale", "crop_ratio", "flip_prob",
                                       "split_seed")), "run.seed")


def base_config(cfg: PipelineConfig, out: Path) -> PipelineConfig:
    """The run config of the base graph: its clips are the source world it renders, split 70/15/15."""
    data = cfg.data.model_copy(update={"clips": str(out / "world" / "manifest.jsonl"), "split_ratios": BASE_SPLITS})
    model = cfg.model.model_copy(update={"weights": None})
    return cfg.model_copy(update={"data": data, "model": model, "run": cfg.run.model_copy(update={"out": str(out)})})


def base_train_config(cfg: PipelineConfig) -> TrainConfig:
    b = cfg.base
    return TrainConfig(mode="jepa", steps=b.steps, batch_size=b.batch_size, lr=b.lr, final_lr=b.lr * 0.01,
                       warmup_steps=b.warmup_steps, weight_decay=0.04, teacher="frozen",
                       motion_aux_weight=b.motion_aux_weight, aux_input=b.aux_input, aux_lr_mult=1.0,
                       l2_anchor=[0.0], eval_every=max(b.steps // 5, 1), checkpoint_every=b.checkpoint_every,
                       resume=cfg.train.resume)


def run_world(ctx: StageContext) -> StageResult:
    s = ctx.cfg.synth
    rows = render_world(ctx.cfg, ctx.out_dir, "source", ctx.cfg.base.clips, s.seed + SOURCE_SEED_OFFSET)
    return StageResult(done=len(rows))


def run_base_train(ctx: StageContext) -> StageResult:
    cfg = ctx.cfg
    model = build_random(cfg, input_transform=cfg.base.input_transform)
    return fit_arm(ctx, base_train_config(cfg), cfg.masking, model=model)


def build_base_graph(cfg: PipelineConfig) -> StageGraph:
    model_data = ["model", "run.seed", "run.dtype", "data.num_frames", "data.size", "data.fps_stride",
                  "data.max_bad_fraction", "data.frame_cache"]
    return StageGraph([
        StageSpec("world", run_world, reads=["base.clips", *(f"synth.{f}" for f in type(cfg.synth).model_fields
                                                               if f not in ("workers", "target_clips"))]),
        StageSpec("clips", run_clips, needs=["world"], reads=["data.split_ratios", "data.split_seed"]),
        StageSpec("motion", run_motion, needs=["clips"], reads=["motion", "data.max_bad_fraction"]),
        StageSpec(BASE, run_base_train, needs=["clips", "motion"], requires=(check_device,), distributed=True,
                  reads=["base", "masking", "train.resume", "motion.aux_dims", "data.flip_prob", "data.crop_scale",
                         "data.crop_ratio", *model_data]),
        StageSpec(f"embed/{BASE}", lambda ctx: _embed(ctx, BASE), needs=["clips", BASE], requires=(check_device,),
                  reads=["embed", *model_data]),
        StageSpec(f"probe/{BASE}", lambda ctx: _probe(ctx, BASE), needs=[f"embed/{BASE}", "motion", "clips"],
                  requires=(check_device,), reads=["probe"]),
    ])


def base_record(cfg: PipelineConfig, out: Path) -> dict[str, Any]:
    """What was trained, how, and how well the frozen base reads motion on the source style."""
    from vjepa_adapt.pipeline import _config_subset, _versions

    probe = storage.read_json(out / "probe" / BASE / "metrics.json")
    classes = storage.read_json(out / "motion" / "classes.json")
    stages = {n: read_stage_record(out / n) or {} for n in ("world", "clips", "motion", BASE, f"probe/{BASE}")}
    train = stages[BASE].get("extra", {})
    return {
        "format": 1,
        "command": " ".join(["vjepa-adapt", *sys.argv[1:]]),
        "recipe": _config_subset(cfg.model_dump(mode="json"), list(RECIPE_KEYS)),
        "source_probe": {k: probe[k] for k in ("top1", "ci_low", "ci_high", "n_test", "num_classes", "macro_f1")
                         if k in probe},
        "classes": classes.get("classes"),
        "cuts": classes.get("cuts"),
        "train": {"steps": stages[BASE].get("done"), "best_step": train.get("best_step"),
                  "best_val_score": train.get("best_score"), "last": train.get("last")},
        "seconds": {n: r.get("seconds") for n, r in stages.items()},
        "versions": _versions(),
    }


def ship(out: Path, dest: Path | None = None) -> Path:
    """Copy the trained base (best checkpoint) and its record into the package's assets."""
    dest = dest or packaged_base()
    best = out / BASE / "best"
    files = {"config.json": best / "encoder" / "config.json", "model.safetensors": best / "encoder" / "model.safetensors",
             "head.safetensors": best / "head.safetensors", RECORD: out / RECORD}
    dest.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        storage.write_bytes(dest / name, src.read_bytes())
    return dest


def run_base_command(cfg: PipelineConfig, out: str | None, do_ship: bool = False, force: bool = False) -> int:
    _setup_threads(cfg)
    folder = Path(out or "runs/base")
    bcfg = base_config(cfg, folder)
    graph = build_base_graph(bcfg)
    graph.run(bcfg, folder, force=list(graph.specs) if force else None)
    record = base_record(bcfg, folder)
    storage.write_json(folder / RECORD, record)
    storage.write_text(folder / "recipe.yaml", dump_config(bcfg))
    p = record["source_probe"]
    print(f"base: frozen probe on the source style {p['top1']:.1%} [{p['ci_low']:.1%}, {p['ci_high']:.1%}] "
          f"on {p['n_test']} test clips (chance {1 / p['num_classes']:.1%}); encoder in {folder / BASE / 'best'}")
    if do_ship:
        print(f"shipped to {ship(folder)}")
    return 0

