"""What a segmentation backend returns for one frame: instance masks with scores and categories."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Instances:
    """The instances of one frame. ``masks`` (N, H, W) bool may overlap (the stage resolves that)."""

    masks: np.ndarray  # (N, H, W) bool
    scores: np.ndarray  # (N,) float
    categories: list[str] = field(default_factory=list)  # (N,) e.g. "moving" (classical) or a SAM 3 prompt
    source_ids: np.ndarray | None = None  # (N,) the backend's own object ids (SAM 3 video), if any

    def __post_init__(self) -> None:
        self.masks = np.asarray(self.masks, dtype=bool)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if self.masks.ndim != 3 or len(self.masks) != len(self.scores):
            raise ValueError(f"masks must be (N, H, W) with N scores, got {self.masks.shape} and {self.scores.shape}")
        if len(self.categories) != len(self.scores):
            raise ValueError(f"{len(self.categories)} categories for {len(self.scores)} instances")

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls, height: int, width: int) -> Instances:
        return cls(np.zeros((0, height, width), bool), np.zeros(0), [])
