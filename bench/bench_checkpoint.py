"""On-disk size and peak host RAM of one trainer checkpoint save, and the arithmetic to ViT-g.

    .venv/bin/python bench/bench_checkpoint.py                 # ViT-L (vitl-256) random weights, CPU
    .venv/bin/python bench/bench_checkpoint.py --compare-bytes # also the old in-memory save, for contrast

Each measurement runs in a fresh subprocess: build the model, the EMA teacher (a copy of the
encoder), the motion_aux head and AdamW with its two moments populated (one step), exactly the
trainer's checkpoint payload; then reset the process's peak-RSS counter (/proc/self/clear_refs) and
save. ``peak extra`` is the peak RSS during the save minus the RSS before it. ``stream`` is
``train.checkpoint.save_checkpoint`` (torch.save streamed into the temp file; ``latest`` a symlink);
``bytes`` is the previous implementation (serialise to a BytesIO, write it, copy it to ``latest``).
The ViT-g line is arithmetic from parameter counts (models built on the 'meta' device, no memory).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GIB = 2**30


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _payload(preset: str):
    import torch

    from vjepa_adapt.config import TrainConfig
    from vjepa_adapt.models.heads import MotionAuxHead
    from vjepa_adapt.models.vjepa import build_model
    from vjepa_adapt.train import checkpoint as ckpt
    from vjepa_adapt.train.loop import Student

    torch.manual_seed(0)
    model = build_model(preset)
    head = MotionAuxHead(model.config.hidden_size, 8, reg_dims=13)
    student = Student(model, head, "jepa")
    teacher = __import__("copy").deepcopy(model.encoder).requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    for p in student.parameters():  # populate exp_avg / exp_avg_sq for every parameter
        p.grad = torch.zeros_like(p)
    opt.step()
    for p in student.parameters():
        p.grad = None
    tcfg = TrainConfig()
    payload = {
        "student": student.state_dict(), "teacher": teacher.state_dict(), "optimizer": opt.state_dict(),
        "rng": ckpt.capture_rng(), "data": {"sampler_position": 0, "world_size": 1},
        "best": {"step": -1, "score": float("-inf")}, "history": [], "config": tcfg.model_dump(mode="json"),
    }
    counts = {"student": sum(p.numel() for p in student.parameters()),
              "encoder": sum(p.numel() for p in model.encoder.parameters())}
    return payload, counts


def _save_bytes(folder: Path, step: int, payload: dict) -> Path:
    """The save before issue #9: the whole file in a BytesIO, written, then copied to latest."""
    import io

    import torch

    from vjepa_adapt import storage

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:08d}.pt"
    buf = io.BytesIO()
    torch.save({"format_version": 1, "kind": "vjepa-adapt/trainer", "step": step, **payload}, buf)
    storage.write_bytes(path, buf.getbuffer())
    del buf
    storage.write_bytes(folder / "latest.pt", path.read_bytes())
    return path


def measure(preset: str, method: str, folder: Path) -> dict:
    from vjepa_adapt.train import checkpoint as ckpt

    payload, counts = _payload(preset)
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        hwm_reset = True
    except OSError:
        hwm_reset = False
    before = _status("VmRSS")
    t0 = time.perf_counter()
    if method == "stream":
        path = ckpt.save_checkpoint(folder, 1, payload, keep_last=2)
    else:
        path = _save_bytes(folder, 1, payload)
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM")
    on_disk = sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and not p.is_symlink())
    return {"preset": preset, "method": method, "params": counts, "file_bytes": path.stat().st_size,
            "folder_bytes": on_disk, "rss_before": before, "peak_extra": peak - before, "peak_reset": hwm_reset,
            "seconds": seconds}


def vitg_arithmetic(preset: str = "vitg-384") -> dict:
    """fp32 parameter counts of the checkpoint's parts for ``preset``, without allocating them."""
    import torch

    from vjepa_adapt.models.heads import MotionAuxHead
    from vjepa_adapt.models.vjepa import build_model

    with torch.device("meta"):
        model = build_model(preset)
        head = MotionAuxHead(model.config.hidden_size, 8, reg_dims=13)
    enc = sum(p.numel() for p in model.encoder.parameters())
    pred = sum(p.numel() for p in model.predictor.parameters())
    hd = sum(p.numel() for p in head.parameters())
    student = enc + pred + hd
    # student + EMA teacher (encoder) + AdamW exp_avg and exp_avg_sq over every student parameter, fp32
    ckpt_bytes = 4 * (student + enc + 2 * student)
    return {"preset": preset, "encoder": enc, "predictor": pred, "head": hd, "checkpoint_bytes": ckpt_bytes,
            "anchor_bytes": 4 * enc}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="vitl-256")
    ap.add_argument("--compare-bytes", action="store_true", help="also measure the old in-memory save")
    ap.add_argument("--child", choices=["stream", "bytes"], help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.preset, args.child, Path(args.dir))))
        return
    rows = []
    for method in ["stream", *(["bytes"] if args.compare_bytes else [])]:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as d:
            out = subprocess.run([sys.executable, __file__, "--preset", args.preset, "--child", method, "--dir", d],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for r in rows:
        print(f"{r['preset']} {r['method']:>6}: student {r['params']['student'] / 1e6:.0f}M + teacher "
              f"{r['params']['encoder'] / 1e6:.0f}M params; file {r['file_bytes'] / GIB:.2f} GiB, folder "
              f"{r['folder_bytes'] / GIB:.2f} GiB; RSS before save {r['rss_before'] / GIB:.2f} GiB, peak extra "
              f"during save {r['peak_extra'] / 2**20:.0f} MiB{'' if r['peak_reset'] else ' (peak not reset)'}; "
              f"{r['seconds']:.1f} s")
    g = vitg_arithmetic()
    per = g["checkpoint_bytes"]
    print(f"{g['preset']} (arithmetic): encoder {g['encoder'] / 1e9:.3f}B + predictor {g['predictor'] / 1e6:.1f}M "
          f"+ head {g['head'] / 1e6:.2f}M params; checkpoint = 4 B x (student + teacher + 2 Adam moments) = "
          f"{per / GIB:.1f} GiB; keep_last=2 -> {2 * per / GIB:.1f} GiB + anchor.pt {g['anchor_bytes'] / GIB:.1f} GiB "
          f"once; latest is a link (0 GiB)")


if __name__ == "__main__":
    main()
