"""Throughput of the real trainer (``vjepa_adapt.train.loop.train``) on real synthetic H.264 clips.

For each (crop, patch, batch) x dtype x DataLoader workers x torch threads it runs ``train()`` for a
few steps (``--steps`` at 64 px, ``--steps128`` at 128 px) and reports, over the steady-state steps
(the first ``--warmup`` steps and the last one, which also evaluates, checkpoints and exports, are
left out):

* steps/s and clips/s from the wall time between the trainer's own step boundaries (``progress`` in
  the loop module is wrapped to timestamp each step; nothing in the trainer is changed);
* achieved GFLOP/s from an analytic count of the masked JEPA step — per mask generator the student
  encoder on its context tokens and the predictor on context + target tokens (x3: forward + backward),
  plus one no-grad teacher pass on the full clip (x1) — using the exact context/target counts of each
  step, which are a pure function of (seed, step) and are replayed here with the trainer's masker;
  the count is cross-checked against ``torch.utils.flop_counter`` (eager attention) on one step;
* the ratio to a large ``torch.matmul`` (fp32 and bf16) measured in the same run (bench_model.py);
* where the step time goes: data wait, forward+backward, and the rest (grad clip, AdamW, EMA,
  logging), from the cumulative ``data_wait_s`` / ``compute_s`` of the history rows.

    python bench/bench_train.py                               # ~1 min on an idle 2-core CPU
    python bench/bench_train.py --quick                       # 64 px only, fewer steps
    OMP_WAIT_POLICY=PASSIVE python bench/bench_train.py       # on a CPU shared with other jobs

Rows with torch's default thread count (2 on the dev box) can be tens of times slower than 1 thread
when other processes load the cores: libgomp's spinning threads wait for a descheduled sibling at
every parallel region. The ``th`` column shows it; each row stops after ``--row-budget`` seconds.

Other processes sharing the CPU make the numbers noisy (the load average is printed); compare rows
of one run, not runs.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import VJEPA2Config
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import _layer_flops, matmul_peak_gflops  # noqa: E402  (bench/ is not a package)

from vjepa_adapt.config import DataConfig, MaskingConfig, TrainConfig  # noqa: E402
from vjepa_adapt.data.clips import Clip, load_clips  # noqa: E402
from vjepa_adapt.masking import MaskSpec, MultiblockMasker  # noqa: E402
from vjepa_adapt.models.vjepa import build_model, teacher_targets, token_grid  # noqa: E402
from vjepa_adapt.train import loop  # noqa: E402
from vjepa_adapt.world import generate_world  # noqa: E402

FRAMES = 16


@dataclass(frozen=True)
class Setting:
    crop: int
    patch: int
    batch: int
    clips_dir: str  # which synthetic source feeds this crop
    steps: int
    warmup: int


# ---------------------------------------------------------------------------------------- FLOPs


def masked_step_flops(config: VJEPA2Config, n_tokens: int, masks: list[tuple[int, int]], batch: int) -> float:
    """Analytic matmul/conv FLOPs of one trainer step; ``masks`` = [(Nc, Nt)] per mask generator.

    Backward = 2x forward for trained parts; the student's patch embedding runs on every token (the
    context is gathered after it) and needs only its weight gradient (the video has no grad).
    """
    c = config
    patch = 2 * n_tokens * (c.in_chans * c.tubelet_size * c.patch_size**2) * c.hidden_size
    enc = lambda n: c.num_hidden_layers * _layer_flops(n, c.hidden_size, c.mlp_ratio)  # noqa: E731
    total = enc(n_tokens) + patch  # teacher: full clip, no grad
    for n_ctx, n_tgt in masks:
        pred = (
            2 * n_ctx * c.hidden_size * c.pred_hidden_size  # predictor_embeddings
            + c.pred_num_hidden_layers * _layer_flops(n_ctx + n_tgt, c.pred_hidden_size, c.pred_mlp_ratio)
            + 2 * n_tgt * c.pred_hidden_size * c.hidden_size  # proj
        )
        total += 3 * enc(n_ctx) + 2 * patch + 3 * pred
    return batch * total


def build_masker(config: VJEPA2Config, masking: MaskingConfig, seed: int) -> MultiblockMasker:
    # The same construction as train(): masks of step s are masker(B, s), whatever process draws them.
    specs = tuple(MaskSpec(g.num_blocks, g.spatial_scale, tuple(g.aspect_ratio)) for g in masking.generators)
    return MultiblockMasker(grid=token_grid(config, FRAMES), specs=specs, seed=seed)


def mask_sizes(masker: MultiblockMasker, batch: int, step: int) -> list[tuple[int, int]]:
    return [(m.context_ids.shape[1], m.target_ids.shape[1]) for m in masker(batch, step)]


def counted_step_flops(s: Setting, masking: MaskingConfig, seed: int) -> tuple[float, float]:
    """(flop_counter, analytic) FLOPs of step 0 through the trainer's own Student (eager attention)."""
    torch.manual_seed(seed)
    model = build_model("tiny", crop_size=s.crop, frames_per_clip=FRAMES, patch_size=s.patch,
                        attn_implementation="eager").train()
    teacher = copy.deepcopy(model.encoder).eval().requires_grad_(False)
    student = loop.Student(model, None, "jepa")
    masker = build_masker(model.config, masking, seed)
    masks = masker(s.batch, 0)
    video = torch.randn(s.batch, FRAMES, 3, s.crop, s.crop)  # (B, T, 3, S, S)
    with FlopCounterMode(display=False) as counter:
        targets = teacher_targets(teacher, video)  # (B, N, D)
        student(video, masks, targets, None, None, 0.0)["loss"].backward()
    n = model.config.crop_size // s.patch
    analytic = masked_step_flops(model.config, (FRAMES // 2) * n * n, mask_sizes(masker, s.batch, 0), s.batch)
    return float(counter.get_total_flops()), analytic


# ----------------------------------------------------------------------------------- the runs


class StepClock:
    """Wraps ``loop.progress``: timestamps the start of every step, and the end of the loop.

    Ends the loop early (train() then exports and returns its history as usual) once ``budget_s``
    has passed and at least ``min_steps`` steps are done, so a slow row cannot eat the whole run.
    """

    def __init__(self, budget_s: float, min_steps: int) -> None:
        self.budget_s, self.min_steps = budget_s, min_steps
        self.stamps: list[float] = []
        self.stopped_early = False

    def __call__(self, iterable: Iterable, desc: str = "", total: int | None = None, **_: Any) -> Iterator:
        for done, item in enumerate(iterable):
            self.stamps.append(time.perf_counter())
            if done >= self.min_steps and self.stamps[-1] - self.stamps[0] > self.budget_s:
                self.stopped_early = True
                return
            yield item
        self.stamps.append(time.perf_counter())


def make_clips(root: Path, name: str, width: int, height: int, num_clips: int) -> list[Clip]:
    folder = root / name
    generate_world(folder, num_clips=num_clips, style="target", seed=0, width=width, height=height,
                   num_frames=32, fps=16.0, contact_sheet=False)
    return load_clips(folder / "manifest.jsonl")


def run_train(s: Setting, clips: list[Clip], dtype: str, workers: int, threads: int, seed: int,
              out_root: Path, budget_s: float) -> dict[str, Any]:
    steps, warmup = s.steps, s.warmup
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads)
    torch.manual_seed(seed)
    model = build_model("tiny", crop_size=s.crop, frames_per_clip=FRAMES, patch_size=s.patch)
    masking = MaskingConfig()
    tcfg = TrainConfig(steps=steps, batch_size=s.batch, warmup_steps=1, eval_every=steps, checkpoint_every=steps,
                       keep_last=1, resume="none", motion_aux_weight=0.0)
    data = DataConfig(num_frames=FRAMES, size=s.crop)
    out_dir = out_root / f"train-{s.crop}-{dtype}-w{workers}-t{threads}"
    clock = StepClock(budget_s, min_steps=warmup + 1)
    original = loop.progress
    loop.progress = clock
    try:
        result = loop.train(tcfg=tcfg, data=data, masking=masking, model=model, head=None,
                            train_clips=clips[:-4], val_clips=clips[-4:], aux=None, out_dir=out_dir,
                            seed=seed, device="cpu", dtype=dtype, num_workers=workers)
    finally:
        loop.progress = original
        torch.set_num_threads(default_threads)
    hist = result.history
    # stamps[k] is the start of step k (and the end of step k-1); history[k] holds the totals after
    # step k. A full run's last step also evaluates and exports, so it is left out.
    first, last = warmup, (len(hist) - 1 if clock.stopped_early else steps - 2)
    wall = clock.stamps[last + 1] - clock.stamps[first]
    data_s = hist[last]["data_wait_s"] - hist[first - 1]["data_wait_s"]
    comp_s = hist[last]["compute_s"] - hist[first - 1]["compute_s"]
    n_steps = last - first + 1
    masker = build_masker(model.config, masking, seed)
    side = s.crop // s.patch
    n_tokens = (FRAMES // 2) * side * side
    flops = sum(masked_step_flops(model.config, n_tokens, mask_sizes(masker, s.batch, k), s.batch)
                for k in range(first, last + 1))
    ctx = [sz[0] for k in range(first, last + 1) for sz in mask_sizes(masker, s.batch, k)]
    return dict(crop=s.crop, patch=s.patch, tokens=n_tokens, batch=s.batch, dtype=dtype, workers=workers,
                threads=threads or default_threads,
                n_steps=n_steps, wall=wall, data=data_s, comp=comp_s, flops=flops,
                ctx=sum(ctx) / len(ctx), loss=hist[-1]["loss"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12, help="trainer steps per 64 px row (>= warmup + 3)")
    ap.add_argument("--steps128", type=int, default=8, help="trainer steps per 128 px row (>= warmup128 + 3)")
    ap.add_argument("--warmup", type=int, default=2, help="leading 64 px steps left out of the timing")
    ap.add_argument("--warmup128", type=int, default=2, help="leading 128 px steps left out of the timing")
    ap.add_argument("--row-budget", type=float, default=20.0,
                    help="seconds after which a row stops early (after warmup + 1 steps)")
    ap.add_argument("--batch128", type=int, default=4, help="batch size at 128 px (64 px uses 8, the demo's)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0], help="DataLoader workers (run.num_workers)")
    ap.add_argument("--threads", type=int, nargs="+", default=[0, 1],
                    help="torch threads per row (run.threads); 0 = torch's default")
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--quick", action="store_true", help="64 px only, 5 steps")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.quick:
        args.steps = min(args.steps, 5)
    for steps, warmup in ((args.steps, args.warmup), (args.steps128, args.warmup128)):
        if steps < warmup + 3 or warmup < 1:
            ap.error("need warmup >= 1 and steps >= warmup + 3 (the last step also evaluates and exports)")
    logging.getLogger("vjepa_adapt").setLevel(logging.WARNING)  # the trainer's per-step info lines
    hf_logging.disable_progress_bar()  # "Writing model shards" at every export

    load0 = os.getloadavg()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        root = Path(tmp)
        settings = [Setting(64, 16, 8, "s128x96", args.steps, args.warmup)]
        sources = {"s128x96": make_clips(root, "s128x96", 128, 96, 24)}
        if not args.quick:
            settings.append(Setting(128, 16, args.batch128, "s160x128", args.steps128, args.warmup128))
            sources["s160x128"] = make_clips(root, "s160x128", 160, 128, 24)
        t_synth = time.perf_counter() - t_start

        counted, analytic = counted_step_flops(settings[0], MaskingConfig(), args.seed)
        peak32 = matmul_peak_gflops(torch.float32)
        peak16 = matmul_peak_gflops(torch.bfloat16)
        rows = [run_train(s, sources[s.clips_dir], d, w, t, args.seed, root, args.row_budget)
                for s in settings for d in args.dtypes for w in args.workers for t in args.threads]
        # Measured again after the runs; a shared CPU makes either measurement alone unreliable.
        peak32 = max(peak32, matmul_peak_gflops(torch.float32))
        peak16 = max(peak16, matmul_peak_gflops(torch.bfloat16))
    load1 = os.getloadavg()

    print(f"torch {torch.__version__}, default threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, "
          f"load avg (1/5/15 min) before {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, "
          f"after {load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f}")
    print(f"matmul peak fp32 {peak32:.1f} GFLOP/s, bf16 {peak16:.1f} GFLOP/s (default threads, best of "
          f"before/after)")
    print(f"FLOP check, one {settings[0].crop} px step: analytic {analytic / 1e9:.3f} GFLOP, "
          f"flop_counter (eager attention) {counted / 1e9:.3f} GFLOP")
    timed = ", ".join(f"{s.crop} px: up to {s.steps} steps, first {s.warmup} untimed" for s in settings)
    print(f"train(): tiny preset, {FRAMES} frames, default 2 mask generators; {timed}, rows stop after "
          f"~{args.row_budget:.0f}s (synthetic clips in {t_synth:.1f}s)")
    head = (f"{'crop':>4} {'patch':>5} {'tok':>4} {'ctx':>4} {'B':>2} {'dtype':>5} {'wk':>2} {'th':>2} {'n':>2} "
            f"{'steps/s':>7} {'clips/s':>7} {'GF/step':>7} {'GFLOP/s':>7} {'/fp32pk':>7} {'/dtypepk':>8} "
            f"{'data%':>5} {'f+b%':>5} {'other%':>6}")
    print(head)
    # ctx: mean context tokens per mask generator; wk: DataLoader workers; th: torch threads; n: timed steps;
    # other%: what is neither data wait nor forward+backward (grad clip, AdamW, EMA, logging).
    for r in rows:
        sps = r["n_steps"] / r["wall"]
        rate = r["flops"] / r["wall"] / 1e9
        peak = peak32 if r["dtype"] == "fp32" else peak16
        other = r["wall"] - r["data"] - r["comp"]
        print(f"{r['crop']:>4} {r['patch']:>5} {r['tokens']:>4} {r['ctx']:>4.0f} {r['batch']:>2} {r['dtype']:>5} "
              f"{r['workers']:>2} {r['threads']:>2} {r['n_steps']:>2} {sps:>7.2f} {sps * r['batch']:>7.1f} "
              f"{r['flops'] / r['n_steps'] / 1e9:>7.2f} {rate:>7.1f} {rate / peak32:>7.2f} {rate / peak:>8.2f} "
              f"{100 * r['data'] / r['wall']:>5.0f} {100 * r['comp'] / r['wall']:>5.0f} "
              f"{100 * other / r['wall']:>6.0f}")
    best = max(rows, key=lambda r: r["flops"] / r["wall"])
    wait = max(rows, key=lambda r: r["data"] / r["wall"])
    rate = best["flops"] / best["wall"] / 1e9
    print(f"summary: best {best['crop']} px {best['dtype']} {best['threads']} threads at {rate:.1f} GFLOP/s "
          f"({rate / peak32:.0%} of the fp32 matmul peak); data wait up to {wait['data'] / wait['wall']:.0%} of "
          f"step time ({wait['crop']} px {wait['dtype']}, {wait['workers']} workers, {wait['threads']} threads); "
          f"total {time.perf_counter() - t_start:.0f}s")


if __name__ == "__main__":
    main()
