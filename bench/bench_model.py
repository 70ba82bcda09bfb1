"""Masked JEPA training-step speed of the tiny V-JEPA 2 on this machine (fp32 vs bf16).

One step = student ``encode_context`` on a random 25-40% context, teacher ``teacher_targets`` on the
full clip (no grad), ``predict`` at the remaining (target) positions, L1 loss, backward. Reports ms per
step, achieved GFLOP/s (analytic count of matmul/conv FLOPs, cross-checked against
torch.utils.flop_counter with eager attention, since the counter does not see CPU SDPA) and the ratio
to a large fp32 ``torch.matmul`` measured in the same run.

    OMP_NUM_THREADS=2 python bench/bench_model.py --crops 64 128 --batch 2 --iters 3
    OMP_NUM_THREADS=1 python bench/bench_model.py --crops 64 --profile     # where one step's time goes

Other processes sharing the CPU make the numbers noisy; compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import VJEPA2Config

from vjepa_adapt.models.vjepa import (
    autocast_context,
    build_model,
    encode_context,
    predict,
    teacher_targets,
    token_grid,
)


def matmul_peak_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """Best of ``repeats`` square matmuls: the least-disturbed run is the closest to the machine's peak."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    torch.matmul(a, b)  # warm-up (thread pool, packing buffers)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * size**3 / min(times) / 1e9


def _layer_flops(n: int, d: int, mlp_ratio: float) -> float:
    # q, k, v, proj (4 d^2) + fc1, fc2 (2 r d^2) per token; QK^T and AV (2 n d) per token; 2 FLOPs per MAC.
    return 2 * n * (4 * d * d + 2 * int(d * mlp_ratio) * d) + 2 * 2 * n * n * d


def jepa_step_flops(config: VJEPA2Config, n_tokens: int, n_ctx: int, batch: int) -> float:
    """Analytic FLOPs of one step; backward = 2x forward for everything that is trained."""
    c = config
    patch = 2 * n_tokens * (c.in_chans * c.tubelet_size * c.patch_size**2) * c.hidden_size
    enc = lambda n: c.num_hidden_layers * _layer_flops(n, c.hidden_size, c.mlp_ratio)  # noqa: E731
    n_tgt = n_tokens - n_ctx
    pred = (
        2 * n_ctx * c.hidden_size * c.pred_hidden_size  # predictor_embeddings
        + c.pred_num_hidden_layers * _layer_flops(n_tokens, c.pred_hidden_size, c.pred_mlp_ratio)
        + 2 * n_tgt * c.pred_hidden_size * c.hidden_size  # proj
    )
    student = 3 * enc(n_ctx) + 2 * patch  # the patch-embed input needs no grad: weight grad only
    teacher = enc(n_tokens) + patch
    return batch * (student + teacher + 3 * pred)


def make_step(model, teacher, video, ctx, tgt):
    def step() -> None:
        targets = teacher_targets(teacher.encoder, video)  # (B, N, D)
        targets = torch.gather(targets, 1, tgt.unsqueeze(-1).expand(-1, -1, targets.shape[-1]))
        states = encode_context(model.encoder, video, ctx)  # (B, Nc, D)
        pred = predict(model.predictor, states, ctx, tgt)  # (B, Nt, D)
        loss = (pred.float() - targets.float()).abs().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def _setup(crop: int, frames: int, batch: int, seed: int, attn: str = "sdpa"):
    """Student, frozen teacher, a random clip batch and a 25-40% context/target split, seeded."""
    torch.manual_seed(seed)
    model = build_model("tiny", crop_size=crop, frames_per_clip=frames, attn_implementation=attn).train()
    teacher = build_model("tiny", crop_size=crop, frames_per_clip=frames, attn_implementation=attn).eval()
    t, h, w = token_grid(model.config, frames)
    n = t * h * w
    g = torch.Generator().manual_seed(seed)
    n_ctx = int(n * (0.25 + 0.15 * torch.rand(1, generator=g).item()))
    perms = torch.stack([torch.randperm(n, generator=g) for _ in range(batch)])
    ctx, tgt = perms[:, :n_ctx].sort(1).values, perms[:, n_ctx:].sort(1).values
    video = torch.randn(batch, frames, 3, crop, crop, generator=g)
    return model, teacher, video, ctx, tgt, n, n_ctx


def run(crop: int, frames: int, batch: int, iters: int, dtype: str, seed: int) -> dict:
    model, teacher, video, ctx, tgt, n, n_ctx = _setup(crop, frames, batch, seed)
    step = make_step(model, teacher, video, ctx, tgt)
    with autocast_context("cpu", dtype):
        step()  # warm-up
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    flops = jepa_step_flops(model.config, n, n_ctx, batch)
    return dict(crop=crop, tokens=n, ctx=n_ctx, dtype=dtype, ms=1e3 * statistics.median(times), flops=flops)


def counted_flops(crop: int, frames: int, batch: int, seed: int) -> float:
    """torch.utils.flop_counter total for one fp32 step with eager attention (cross-check)."""
    model, teacher, video, ctx, tgt, _, _ = _setup(crop, frames, batch, seed, attn="eager")
    with FlopCounterMode(display=False) as counter:
        make_step(model, teacher, video, ctx, tgt)()
    return float(counter.get_total_flops())


def profile_step(crop: int, frames: int, batch: int, seed: int, rows: int = 15) -> None:
    """Operator table of one fp32 step (after two warm-up steps): where the time goes."""
    from torch.profiler import ProfilerActivity, profile

    model, teacher, video, ctx, tgt, n, n_ctx = _setup(crop, frames, batch, seed)
    step = make_step(model, teacher, video, ctx, tgt)
    step()
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(f"one fp32 step, {crop} px, B={batch}, {n} tokens ({n_ctx} context), {torch.get_num_threads()} threads")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crops", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true", help="print where one fp32 step of the first crop spends "
                                                           "its time (torch.profiler, by operator)")
    args = ap.parse_args()
    if args.profile:
        profile_step(args.crops[0], args.frames, args.batch, args.seed)
        return

    check = counted_flops(args.crops[0], args.frames, args.batch, args.seed)
    peak32 = matmul_peak_gflops(torch.float32)
    peak16 = matmul_peak_gflops(torch.bfloat16)
    rows = [run(c, args.frames, args.batch, args.iters, d, args.seed) for c in args.crops for d in ("fp32", "bf16")]
    # Measured again after the steps; a shared CPU makes either measurement alone unreliable.
    peak32 = max(peak32, matmul_peak_gflops(torch.float32))
    peak16 = max(peak16, matmul_peak_gflops(torch.bfloat16))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"matmul peak fp32 {peak32:.1f} GFLOP/s, bf16 {peak16:.1f} GFLOP/s (best of before/after)")
    analytic0 = next(r["flops"] for r in rows if r["crop"] == args.crops[0])
    print(f"FLOP check at {args.crops[0]} px: analytic {analytic0 / 1e9:.2f} GFLOP, "
          f"flop_counter (eager attention) {check / 1e9:.2f} GFLOP")
    print(f"{'crop':>5} {'tokens':>6} {'ctx':>5} {'dtype':>5} {'ms/step':>9} {'GFLOP':>7} {'GFLOP/s':>8} {'/fp32 peak':>10}")
    for r in rows:
        gflops = r["flops"] / 1e9
        rate = gflops / (r["ms"] / 1e3)
        print(f"{r['crop']:>5} {r['tokens']:>6} {r['ctx']:>5} {r['dtype']:>5} {r['ms']:>9.1f} {gflops:>7.2f} "
              f"{rate:>8.1f} {rate / peak32:>10.2f}")


if __name__ == "__main__":
    main()
