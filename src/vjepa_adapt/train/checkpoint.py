"""Trainer checkpoints: one self-describing dict, written atomically, ``latest`` + rotated step files.

Format (``FORMAT_VERSION``): {"format_version", "kind": "vjepa-adapt/trainer", "step", "config"
(the arm's TrainConfig), "student" (encoder + predictor + motion_aux head), "teacher", "optimizer",
"rng", "data" {"sampler_position", "world_size"}, "best", "history"}. θ₀ is not in it: the run's
``anchor.pt`` holds it once. State dicts are plain tensors so ``torch.load(weights_only=True)``
reads them back; RNG states are stored as uint8 tensors for the same reason.

Size at scale: every step file is streamed to disk (no in-memory copy) and ``latest.pt`` is a
symlink to the newest step file, not a copy, so a run holds ``keep_last`` checkpoints on disk.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vjepa_adapt import storage
from vjepa_adapt.errors import UserError

FORMAT_VERSION = 1
KIND = "vjepa-adapt/trainer"
LATEST = "latest.pt"
_STEP_RE = re.compile(r"^step-(\d+)\.pt$")


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _np_state_to_tensor(np.random.get_state()),
        "python": _py_state_to_dict(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(_np_state_from_tensor(state["numpy"]))
    random.setstate(_py_state_from_dict(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: str | Path, step: int, payload: dict[str, Any], keep_last: int = 2) -> Path:
    """Stream ``step-<N>.pt`` to disk atomically, point the ``latest.pt`` link at it, prune old steps.

    Order matters for a crash at any point: the new step file is complete before ``latest`` moves to
    it, and old step files go only after that, so ``latest`` never points at a missing file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = {"format_version": FORMAT_VERSION, "kind": KIND, "step": step, **payload}
    path = folder / f"step-{step:08d}.pt"
    storage.save_torch(path, ckpt)
    storage.link_atomic(folder / LATEST, path.name)  # relative: the run folder can be moved
    steps = sorted(_list_steps(folder))
    for old in steps[:-keep_last]:
        (folder / f"step-{old:08d}.pt").unlink(missing_ok=True)
    return path


def _list_steps(folder: Path) -> list[int]:
    return [int(m.group(1)) for p in folder.iterdir() if (m := _STEP_RE.match(p.name))]


def find_resume(folder: str | Path, resume: str) -> Path | None:
    """``resume``: 'none' → None; 'auto' → the newest step file in ``folder`` if any; else a checkpoint path.

    'auto' reads the step files, not ``latest``: each is complete (written atomically), and after a
    crash between writing one and moving the link the newest is one step ahead of ``latest``.
    """
    if resume == "none":
        return None
    if resume == "auto":
        folder = Path(folder)
        steps = _list_steps(folder) if folder.is_dir() else []
        if steps:
            return folder / f"step-{max(steps):08d}.pt"
        p = folder / LATEST  # a run folder of an older version: latest.pt alone
        return p if p.exists() else None
    p = Path(resume)
    if not p.exists():
        raise UserError(f"train.resume: checkpoint not found: {resume}")
    return p


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    try:
        ckpt = storage.load_torch(path)
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"cannot read checkpoint {path}: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != KIND:
        raise UserError(f"{path} is not a vjepa-adapt trainer checkpoint")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(
            f"{path} has checkpoint format {ckpt['format_version']}, newer than this toolkit's {FORMAT_VERSION}"
        )
    return ckpt


# -- RNG state ↔ tensors (so weights_only loading works) ------------------------------------------


def _np_state_to_tensor(st: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = st
    return {
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
        "name": str(name),
    }


def _np_state_from_tensor(d: dict[str, Any]) -> tuple:
    return (d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["cached"])


def _py_state_to_dict(st: tuple) -> dict[str, Any]:
    version, internal, gauss = st
    return {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": None if gauss is None else float(gauss)}


def _py_state_from_dict(d: dict[str, Any]) -> tuple:
    # Rebuilt from plain numbers: nothing in a checkpoint is ever unpickled as code.
    return (d["version"], tuple(int(x) for x in d["internal"].tolist()), d["gauss"])
