"""GPU check (issue #9): the real presets with random weights through the real code on one CUDA GPU.

Per preset (vitl-256, vitg-384; random init with models/vjepa.py build_model, no hub download),
in bf16 autocast with SDPA attention and activation checkpointing, through the toolkit's own code:

1. JEPA: ``train.loop.train`` with ``train.stages`` = two stages (prefix 50% of the blocks, then
   all): a progressive stage change, EMA teacher, motion_aux head, L2 anchor, checkpoint, export;
2. head-only: the same trainer with ``mode=head_only``;
3. embed: ``evaluate.embed.embed_clips`` over synthetic clips (decode + resize + encoder), and the
   bare encoder forward on a ready tensor;
4. probe: ``evaluate.probe.run_probe`` (attentive) on the stored features.

Printed: train step time (wall, from the trainer's per-step metric rows, CUDA-synchronised, the first
step after the stage change and the eval/checkpoint step excluded), its data-wait share, model
FLOPs per step and MFU against the H200's bf16 dense peak (989 TFLOP/s), peak GPU memory per phase,
embed clips/s (goal for ViT-g/384 at 16 frames: >= 20 clips/s) and probe time.

Model FLOPs (matmuls only, 2 FLOPs per multiply-add; activation recompute NOT counted, as MFU is
defined): a ViT of depth L, width D, MLP width F on n tokens costs
    F_vit(n) = L * (2 n (4 D^2 + 2 D F) + 4 n^2 D) + 2 n (3 p^2 t) D        (patch embedding)
and the predictor (Lp, Dp, Fp) on the m = n_ctx + n_tgt tokens of a mask generator costs
    F_pred = Lp * (2 m (4 Dp^2 + 2 Dp Fp) + 4 m^2 Dp) + 2 n_ctx D Dp + 2 n_tgt Dp D.
One JEPA step, per clip: F_vit(N) (teacher, forward only) + sum over generators of
3 (F_vit(n_ctx) + F_pred) (student + predictor, forward + backward). Head-only step and embed:
F_vit(N) per clip. n_ctx / n_tgt are averaged over masks drawn by the trainer's own sampler.
MFU = model FLOPs per step / compute seconds per step (wall minus data wait) / peak.

``--cpu-smoke`` runs the same code path on CPU at tiny sizes (preset tiny) so the suite can test it.
Exit status: 0 when every phase ran, 1 when one failed (its traceback is printed, the rest still run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

H200_BF16_DENSE = 989e12
EMBED_GOAL = 20.0  # clips/s, ViT-g/384 at 16 frames


@dataclass
class Scale:
    preset: str
    size: int
    frames: int
    train_batch: int
    embed_batch: int
    embed_clips: int
    jepa_stages: tuple[int, int]  # steps of stage 1 (50% prefix) and stage 2 (all blocks)
    head_steps: int
    patch_size: int | None = None
    probe_epochs: int = 3
    pooled_grid: tuple[int, int, int] = (1, 4, 4)  # embed.pooled_grid default


GPU_SCALES = {
    "vitl-256": Scale("vitl-256", 256, 16, train_batch=16, embed_batch=32, embed_clips=256, jepa_stages=(3, 5),
                      head_steps=4),
    "vitg-384": Scale("vitg-384", 384, 16, train_batch=8, embed_batch=16, embed_clips=320, jepa_stages=(3, 5),
                      head_steps=4),
}
CPU_SCALE = Scale("tiny", 32, 8, train_batch=4, embed_batch=8, embed_clips=16, jepa_stages=(2, 3), head_steps=3,
                  patch_size=16, probe_epochs=2, pooled_grid=(1, 2, 2))


@dataclass
class Row:
    preset: str
    phase: str
    ok: bool = True
    values: dict[str, Any] = field(default_factory=dict)
    error: str = ""


# ----------------------------------------------------------------------------------------- timing


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def step_clock(device: str):
    """Wall-clock stamp of every metrics row the trainer writes (one per step), after a device sync."""
    from vjepa_adapt import progress

    stamps: list[tuple[int, float, float]] = []  # (step, time, cumulative data-wait seconds)
    original = progress.MetricsLog.write

    def write(self, row: dict) -> None:
        _sync(device)
        stamps.append((int(row["step"]), time.perf_counter(), float(row.get("data_wait_s", 0.0))))
        original(self, row)

    progress.MetricsLog.write = write
    try:
        yield stamps
    finally:
        progress.MetricsLog.write = original


def step_times(stamps: list[tuple[int, float, float]], first: int, last: int) -> tuple[float, float]:
    """Mean wall seconds and mean data-wait seconds of steps ``first..last`` (1-based, inclusive)."""
    by_step = {s: (t, w) for s, t, w in stamps}
    walls, waits = [], []
    for k in range(first, last + 1):
        if k in by_step and k - 1 in by_step:
            walls.append(by_step[k][0] - by_step[k - 1][0])
            waits.append(by_step[k][1] - by_step[k - 1][1])
    if not walls:
        raise RuntimeError(f"no timed steps {first}..{last}: the trainer wrote rows for {sorted(by_step)}")
    return sum(walls) / len(walls), sum(waits) / len(waits)


@contextlib.contextmanager
def peak_memory(device: str, out: dict[str, Any]):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    try:
        yield
    finally:
        if device == "cuda":
            torch.cuda.synchronize()
            out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30


# ----------------------------------------------------------------------------------------- FLOPs


def vit_flops(n: float, depth: int, dim: int, mlp: int, patch_tokens_in: int = 0) -> float:
    return depth * (2 * n * (4 * dim * dim + 2 * dim * mlp) + 4 * n * n * dim) + 2 * n * patch_tokens_in * dim


def model_flops(config, n_all: int, gens: list[tuple[float, float]]) -> dict[str, float]:
    """FLOPs per clip of: teacher/embed forward, and one JEPA student+predictor fwd+bwd (see module doc)."""
    d, L, f = config.hidden_size, config.num_hidden_layers, int(config.hidden_size * config.mlp_ratio)
    dp, lp, fp = config.pred_hidden_size, config.pred_num_hidden_layers, int(config.pred_hidden_size * config.pred_mlp_ratio)
    patch_in = 3 * config.patch_size ** 2 * config.tubelet_size
    fwd_all = vit_flops(n_all, L, d, f, patch_in)
    student = 0.0
    for n_ctx, n_tgt in gens:
        m = n_ctx + n_tgt
        pred = lp * (2 * m * (4 * dp * dp + 2 * dp * fp) + 4 * m * m * dp) + 2 * n_ctx * d * dp + 2 * n_tgt * dp * d
        student += 3 * (vit_flops(n_ctx, L, d, f, patch_in) + pred)
    return {"forward": fwd_all, "jepa": fwd_all + student}


def mask_counts(masking_cfg, grid, batch: int, draws: int = 8) -> list[tuple[float, float]]:
    """Mean (context, target) tokens per clip for each generator, from the trainer's sampler."""
    from vjepa_adapt.masking import MaskSpec, MultiblockMasker

    specs = tuple(MaskSpec(g.num_blocks, g.spatial_scale, tuple(g.aspect_ratio)) for g in masking_cfg.generators)
    masker = MultiblockMasker(grid=grid, specs=specs, seed=12345)
    sums = [[0.0, 0.0] for _ in specs]
    for step in range(draws):
        for i, m in enumerate(masker(batch, step)):
            sums[i][0] += m.context_ids.shape[1] / draws
            sums[i][1] += m.target_ids.shape[1] / draws
    return [(c, t) for c, t in sums]


# ----------------------------------------------------------------------------------------- phases


def make_clips(root: Path, n: int, cpu: bool):
    """Synthetic street clips (the decode path is real; content does not matter for speed)."""
    from vjepa_adapt.data.clips import Clip, load_clips
    from vjepa_adapt.world import generate_world

    w, h, frames = (64, 48, 20) if cpu else (128, 96, 32)
    workers = 1 if cpu else max(1, min(8, (os.cpu_count() or 2) - 1))
    generate_world(root, num_clips=n, style="target", seed=0, width=w, height=h, num_frames=frames,
                   clips_per_video=2, num_workers=workers, contact_sheet=False)
    return load_clips(str(root / "manifest.jsonl")), Clip


def build(scale: Scale, device: str):
    import torch

    from vjepa_adapt.models.vjepa import apply_performance_switches, build_model

    extra = {"patch_size": scale.patch_size} if scale.patch_size else {}
    torch.manual_seed(0)
    ctx = torch.device(device) if device == "cuda" else contextlib.nullcontext()
    with ctx:  # on the GPU the 1B-parameter init runs there, not on the host
        model = build_model(scale.preset, crop_size=scale.size, frames_per_clip=scale.frames,
                            attn_implementation="sdpa", **extra)
    return apply_performance_switches(model, gradient_checkpointing=True)


def aux_targets(clips, num_classes: int = 8, dims: int = 13):
    import numpy as np

    from vjepa_adapt.data.loader import AuxTargets

    rng = np.random.default_rng(0)
    labels = {c.clip_id: int(rng.integers(num_classes)) for c in clips}
    reg = {c.clip_id: rng.standard_normal(dims).astype(np.float32) for c in clips}
    return AuxTargets(labels=labels, reg=reg, reg_flipped=reg, label_flipped=labels)


def run_train(scale: Scale, mode: str, clips, work: Path, device: str, dtype: str, row: Row) -> None:
    import torch

    from vjepa_adapt.config import DataConfig, MaskingConfig, Stage, TrainConfig
    from vjepa_adapt.models.heads import MotionAuxHead
    from vjepa_adapt.models.vjepa import token_grid
    from vjepa_adapt.train.loop import train

    model = build(scale, device)
    head = MotionAuxHead(model.config.hidden_size, 8, reg_dims=13)
    data = DataConfig(num_frames=scale.frames, size=scale.size)
    masking = MaskingConfig()
    if mode == "jepa":
        s1, s2 = scale.jepa_stages
        steps = s1 + s2
        stages = [Stage(name="prefix", steps=s1, unfreeze_fraction=0.5), Stage(name="all", steps=s2)]
        timed = (s1 + 2, steps - 1)  # not the first step of stage 2 (re-wrap, new optimizer state) nor the eval step
    else:
        steps, stages = scale.head_steps, None
        timed = (2, steps - 1)
    tcfg = TrainConfig(mode=mode, steps=steps, batch_size=scale.train_batch, warmup_steps=1, lr=1e-4,
                       stages=stages, eval_every=steps, checkpoint_every=steps, keep_last=1, resume="none",
                       l2_anchor=[1e-3 if mode == "jepa" else 0.0],
                       motion_aux_weight=0.1 if mode == "jepa" else 1.0)
    first_block = next(model.encoder.layer[0].parameters()).detach().clone()
    last_block = next(model.encoder.layer[-1].parameters()).detach().clone()
    out = work / f"{scale.preset}-{mode}"
    with peak_memory(device, row.values), step_clock(device) as stamps:
        t0 = time.perf_counter()
        res = train(tcfg=tcfg, data=data, masking=masking, model=model, head=head, train_clips=clips[:-4],
                    val_clips=clips[-4:], aux=aux_targets(clips), out_dir=out, seed=0, device=device, dtype=dtype,
                    num_workers=0 if device == "cpu" else min(8, os.cpu_count() or 1))
        row.values["run_s"] = time.perf_counter() - t0
    wall, wait = step_times(stamps, *timed)
    assert res.steps == steps and len(res.history) == steps, (res.steps, len(res.history))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in res.history), "non-finite loss"
    assert next(model.parameters()).device.type == torch.device(device).type
    moved_first = not torch.equal(first_block, next(model.encoder.layer[0].parameters()).detach())
    moved_last = not torch.equal(last_block, next(model.encoder.layer[-1].parameters()).detach())
    if mode == "jepa":
        # block 0 trains in both stages; the last block only after the stage change
        assert moved_first and moved_last, f"stage change: first block moved {moved_first}, last {moved_last}"
    else:
        assert not moved_first and not moved_last, "head-only moved the encoder"
    grid = token_grid(model.config, scale.frames)
    n_all = grid[0] * grid[1] * grid[2]
    fl = model_flops(model.config, n_all, mask_counts(masking, grid, scale.train_batch))
    per_step = (fl["jepa"] if mode == "jepa" else fl["forward"]) * scale.train_batch
    compute = max(wall - wait, 1e-9)
    row.values.update(batch=scale.train_batch, tokens=n_all, step_s=wall, data_wait=wait / wall,
                      tflop_step=per_step / 1e12, mfu=per_step / compute / H200_BF16_DENSE,
                      loss=res.history[-1]["loss"])
    shutil.rmtree(out, ignore_errors=True)  # ViT-g checkpoints are ~16 GB
    del model


def run_embed_probe(scale: Scale, clips, clip_cls, work: Path, device: str, dtype: str,
                    emb: Row, bare: Row, probe: Row) -> None:
    import numpy as np
    import torch

    from vjepa_adapt.evaluate.embed import embed_clips, load_features
    from vjepa_adapt.evaluate.probe import run_probe
    from vjepa_adapt.models.vjepa import autocast_context, encode_full

    model = build(scale, device)
    encoder = model.encoder.to(device).eval()
    # the same files many times under distinct ids: as many clips as a real embed run, few to render
    many = [clip_cls(f"{c.clip_id}__r{k}", c.path, f"{c.video_id}__r{k}", c.start, c.end)
            for k in range(-(-scale.embed_clips // len(clips))) for c in clips][:scale.embed_clips]
    out = work / f"{scale.preset}-embed"
    with peak_memory(device, emb.values):
        t0 = time.perf_counter()
        result = embed_clips(encoder, many, out, num_frames=scale.frames, size=scale.size,
                             batch_size=scale.embed_batch, chunk_size=max(64, scale.embed_batch),
                             pooled_grid=scale.pooled_grid, device=device,
                             dtype=dtype, num_workers=0 if device == "cpu" else min(8, os.cpu_count() or 1))
        _sync(device)
        seconds = time.perf_counter() - t0
    assert result.done == len(many) and not result.skipped, (result.done, len(many), result.skipped[:3])
    emb.values.update(batch=scale.embed_batch, clips=len(many), clips_per_s=len(many) / seconds)

    video = torch.randn(scale.embed_batch, scale.frames, 3, scale.size, scale.size, device=device)
    with peak_memory(device, bare.values), torch.no_grad():
        for i in range(3):  # warm-up, then timed
            if i == 1:
                _sync(device)
                t0 = time.perf_counter()
            with autocast_context(torch.device(device).type, dtype):
                encode_full(encoder, video)
        _sync(device)
        per_batch = (time.perf_counter() - t0) / 2
    bare.values.update(batch=scale.embed_batch, clips_per_s=scale.embed_batch / per_batch)

    feats = load_features(out)
    ids = [str(c) for c in feats["clip_ids"]]
    rng = np.random.default_rng(0)
    labels = {c: int(rng.integers(8)) for c in ids}
    splits = {c: ("train" if i % 10 < 7 else "val" if i % 10 < 8 else "test") for i, c in enumerate(ids)}
    with peak_memory(device, probe.values):
        t0 = time.perf_counter()
        res = run_probe(feats, labels, splits, [f"c{k}" for k in range(8)], work / f"{scale.preset}-probe",
                        kind="attentive", epochs=scale.probe_epochs, batch_size=64, n_resamples=1000, device=device)
        probe.values["run_s"] = time.perf_counter() - t0
    assert 0.0 <= res.metrics["top1"] <= 1.0
    probe.values.update(n_test=res.metrics["n_test"], top1=res.metrics["top1"])
    shutil.rmtree(out, ignore_errors=True)


# ----------------------------------------------------------------------------------------- report


def fmt_table(rows: list[Row]) -> str:
    cols = [("preset", "preset"), ("phase", "phase"), ("ok", "ok"), ("batch", "batch"), ("tokens", "tok/clip"),
            ("step_s", "step s"), ("data_wait", "wait"), ("tflop_step", "TFLOP/step"), ("mfu", "MFU"),
            ("clips_per_s", "clips/s"), ("peak_gib", "peak GiB"), ("run_s", "run s")]

    def cell(r: Row, key: str) -> str:
        if key == "preset":
            return r.preset
        if key == "phase":
            return r.phase
        if key == "ok":
            return "ok" if r.ok else "FAIL"
        v = r.values.get(key)
        if v is None:
            return ""
        if key in ("data_wait", "mfu"):
            return f"{100 * v:.1f}%"
        if isinstance(v, float):
            return f"{v:.3g}" if v < 100 else f"{v:.0f}"
        return str(v)

    table = [[h for _, h in cols]] + [[cell(r, k) for k, _ in cols] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="the same code path on CPU at tiny sizes (preset tiny)")
    ap.add_argument("--presets", default="vitl-256,vitg-384", help="comma-separated presets (GPU mode)")
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temp folder, removed at the end)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--budget-s", type=float, default=400.0, help="skip phases that would start after this")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    t_start = time.perf_counter()

    import torch

    from vjepa_adapt.progress import silence_library_bars

    silence_library_bars()

    cpu = args.cpu_smoke
    if not cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible (use --cpu-smoke to test the code path on CPU)", file=sys.stderr)
        return 2
    device, dtype = ("cpu", "bf16") if cpu else ("cuda", "bf16")
    scales = [CPU_SCALE] if cpu else [GPU_SCALES[p.strip()] for p in args.presets.split(",") if p.strip()]
    if not cpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
              f"bf16 {torch.cuda.is_bf16_supported()}")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []

    def phase(preset: str, name: str, fn, *extra_rows: Row) -> None:
        row = Row(preset, name)
        rows.append(row)
        rows.extend(extra_rows)
        if time.perf_counter() - t_start > args.budget_s:
            row.ok, row.error = False, f"skipped: past the {args.budget_s:.0f} s budget"
            for r in extra_rows:
                r.ok, r.error = False, row.error
            return
        try:
            fn(row)
        except Exception as e:  # noqa: BLE001 - a check reports every phase; the traceback is printed
            traceback.print_exc()
            row.ok, row.error = False, f"{type(e).__name__}: {e}"
            for r in extra_rows:
                r.ok, r.error = False, "not run: " + row.error
        finally:
            if not cpu:
                torch.cuda.empty_cache()

    try:
        clips, clip_cls = make_clips(work / "world", 8 if cpu else 32, cpu)
        for sc in scales:
            phase(sc.preset, "jepa+stages", lambda r, sc=sc: run_train(sc, "jepa", clips, work, device, dtype, r))
            phase(sc.preset, "head-only", lambda r, sc=sc: run_train(sc, "head_only", clips, work, device, dtype, r))
            bare, probe = Row(sc.preset, "encoder fwd"), Row(sc.preset, "probe")
            phase(sc.preset, "embed", lambda r, sc=sc, bare=bare, probe=probe: run_embed_probe(
                sc, clips, clip_cls, work, device, dtype, r, bare, probe), bare, probe)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(fmt_table(rows))
    for r in rows:
        if r.error:
            print(f"{r.preset} {r.phase}: {r.error}")
    goal = next((r for r in rows if r.preset == "vitg-384" and r.phase == "embed" and r.ok), None)
    if goal is not None:
        v = goal.values["clips_per_s"]
        print(f"embed ViT-g/384, 16 frames: {v:.1f} clips/s — goal >= {EMBED_GOAL:.0f}: {'met' if v >= EMBED_GOAL else 'MISSED'}")
    print(f"MFU vs {H200_BF16_DENSE / 1e12:.0f} TFLOP/s bf16 dense (H200); total {time.perf_counter() - t_start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in rows], indent=1, default=str))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
