"""What a stage function returns to the stage graph (which writes it into ``stage.json``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Skipped:
    clip: str
    reason: str


@dataclass
class StageResult:
    done: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def skip(self, clip: str, reason: str) -> None:
        self.skipped.append(Skipped(clip, reason))


def check_bad_share(result: StageResult, max_bad_fraction: float, stage: str) -> None:
    """Fail the stage when more than ``max_bad_fraction`` of the clips were skipped.

    Everything already written stays on disk; the message lists the most common reasons.
    """
    from collections import Counter

    from vjepa_adapt.errors import BadInputError

    total = result.done + len(result.skipped)
    if total == 0:
        raise BadInputError(f"{stage}: no clips to process")
    share = len(result.skipped) / total
    if share > max_bad_fraction:
        reasons = Counter(s.reason.split(":")[0] for s in result.skipped).most_common(3)
        why = ", ".join(f"{r} ×{n}" for r, n in reasons)
        raise BadInputError(
            f"{stage}: {len(result.skipped)}/{total} clips unusable ({share:.0%} > allowed "
            f"{max_bad_fraction:.0%}; data.max_bad_fraction); most common: {why}"
        )
