"""Dense optical flow between two frames: OpenCV Farnebäck (default), OpenCV DIS, torchvision RAFT.

Every backend returns flow in pixels per frame at the resolution it was given, as ``(H, W, 2)``
float32 with channel 0 = dx (positive = rightwards) and channel 1 = dy (positive = downwards,
image convention). Frames are ``(H, W, 3)`` uint8 RGB (what the data layer decodes).

- ``farneback``: ``cv2.calcOpticalFlowFarneback`` on grayscale frames. CPU, no extra dependency.
- ``dis``: ``cv2.DISOpticalFlow`` (preset MEDIUM) on grayscale frames. CPU, several times faster.
- ``raft_small`` / ``raft_large``: torchvision's RAFT with its pretrained weights, optional, for GPUs.
  Needs the ``raft`` extra (``pip install vjepa-adapt[raft]``, i.e. torchvision). RAFT was trained on
  RGB, so it gets the RGB frames (not grayscale) scaled to **[-1, 1]**, and its input height and width
  must be **divisible by 8**: frames are edge-padded up to the next multiple of 8 and the flow is
  cropped back. The weights are fetched by torchvision on first use (cache: ``$TORCH_HOME``).
"""

from __future__ import annotations

import importlib
from typing import Any

import cv2
import numpy as np

BACKENDS = ("farneback", "dis", "raft_small", "raft_large")
RAFT_BACKENDS = ("raft_small", "raft_large")

# Farnebäck parameters: OpenCV's documented example values. 3 pyramid levels of scale 0.5 with a
# 15 px window track displacements of tens of pixels, which covers both demo (~128 px) and
# real-scale (~384 px) frames at walking/traffic speeds.
FARNEBACK_PARAMS = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown optical-flow backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def to_gray(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8; a (H, W) frame passes through."""
    frame = _check_frame(frame)
    if frame.ndim == 2:
        return frame
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def _check_frame(frame: Any) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (0-255), got dtype {frame.dtype}")
    if not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 3)):
        raise ValueError(f"a frame must be (H, W, 3) RGB or (H, W) gray, got shape {frame.shape}")
    if frame.shape[0] < 2 or frame.shape[1] < 2:
        raise ValueError(f"frame is too small for optical flow: {frame.shape}")
    return np.ascontiguousarray(frame)


_DIS_CACHE: dict[int, Any] = {}


def _dis() -> Any:
    # One DIS object per preset is reused: creating it allocates buffers; it is not thread-safe,
    # but the toolkit runs flow from one thread per process.
    key = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
    if key not in _DIS_CACHE:
        _DIS_CACHE[key] = cv2.DISOpticalFlow_create(key)
    return _DIS_CACHE[key]


def compute_flow(prev: np.ndarray, next: np.ndarray, backend: str = "farneback", device: str = "cuda") -> np.ndarray:
    """Flow from ``prev`` to ``next``: (H, W, 3) uint8 RGB each -> (H, W, 2) float32 (dx, dy).

    ``device`` is used by the RAFT backends only.
    """
    check_backend(backend)
    if backend in RAFT_BACKENDS:
        return compute_flow_batch([(prev, next)], backend=backend, device=device)[0]
    a, b = to_gray(prev), to_gray(next)
    if a.shape != b.shape:
        raise ValueError(f"the two frames of a pair differ in size: {a.shape} vs {b.shape}")
    if backend == "farneback":
        flow = cv2.calcOpticalFlowFarneback(a, b, None, **FARNEBACK_PARAMS)
    else:
        flow = _dis().calc(a, b, None)
    return np.asarray(flow, dtype=np.float32)


def compute_flow_batch(
    pairs: list[tuple[np.ndarray, np.ndarray]] | np.ndarray, backend: str = "farneback", device: str = "cuda"
) -> np.ndarray:
    """Flow for P pairs at once -> (P, H, W, 2) float32. RAFT runs them as one GPU batch."""
    check_backend(backend)
    if len(pairs) == 0:
        raise ValueError("no frame pairs given")
    if backend not in RAFT_BACKENDS:
        return np.stack([compute_flow(a, b, backend=backend) for a, b in pairs])
    return _raft_flow(pairs, backend, device)


# ----------------------------------------------------------------------------------------- RAFT

_RAFT_CACHE: dict[tuple[str, str], Any] = {}


def _import_raft() -> Any:
    try:
        return importlib.import_module("torchvision.models.optical_flow")
    except ImportError as err:
        raise ImportError(
            "the RAFT optical-flow backend needs torchvision: run `pip install vjepa-adapt[raft]` "
            "(or `pip install torchvision` matching your torch version), or use backend 'farneback' "
            f"or 'dis' (OpenCV, CPU). Import failed with: {err}"
        ) from err


def load_raft(backend: str = "raft_small", device: str = "cuda") -> Any:
    """The pretrained torchvision RAFT model in eval mode on ``device`` (cached per process)."""
    key = (backend, str(device))
    if key not in _RAFT_CACHE:
        of = _import_raft()
        if backend == "raft_small":
            model = of.raft_small(weights=of.Raft_Small_Weights.DEFAULT, progress=False)
        elif backend == "raft_large":
            model = of.raft_large(weights=of.Raft_Large_Weights.DEFAULT, progress=False)
        else:
            raise ValueError(f"not a RAFT backend: {backend!r}")
        _RAFT_CACHE[key] = model.eval().to(device)
    return _RAFT_CACHE[key]


def prepare_raft_input(frames: np.ndarray) -> tuple[Any, tuple[int, int]]:
    """(B, H, W, 3) uint8 RGB -> (B, 3, H8, W8) float32 tensor in [-1, 1], padded to multiples of 8.

    Returns the tensor and the original (H, W) to crop the flow back to.
    """
    import torch
    import torch.nn.functional as F

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"RAFT needs (B, H, W, 3) uint8 RGB frames, got {frames.dtype} {frames.shape}")
    h, w = frames.shape[1:3]
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # (B, 3, H, W)
    x = x / 127.5 - 1.0  # RAFT's training range is [-1, 1]
    ph, pw = (-h) % 8, (-w) % 8
    if ph or pw:
        # Edge padding (not zeros) so the border adds no fake gradients for RAFT to match.
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, (h, w)


def _raft_flow(pairs: Any, backend: str, device: str) -> np.ndarray:
    import torch

    a = np.stack([np.asarray(p[0]) for p in pairs])  # (P, H, W, 3)
    b = np.stack([np.asarray(p[1]) for p in pairs])
    if a.shape != b.shape:
        raise ValueError(f"the two frames of a pair differ in size: {a.shape[1:]} vs {b.shape[1:]}")
    model = load_raft(backend, device)
    x1, (h, w) = prepare_raft_input(a)
    x2, _ = prepare_raft_input(b)
    with torch.inference_mode():
        # RAFT returns one flow per refinement iteration; the last is the final estimate.
        flow = model(x1.to(device), x2.to(device))[-1]  # (P, 2, H8, W8)
    return flow[:, :, :h, :w].permute(0, 2, 3, 1).float().cpu().numpy().astype(np.float32)
