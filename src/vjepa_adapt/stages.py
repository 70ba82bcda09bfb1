"""Stage adapters: config → module calls → files in the run folder, and the pipeline graph."""

from __future__ import annotations

from vjepa_adapt.config import PipelineConfig
from vjepa_adapt.errors import NotBuiltError


def synth_command(cfg: PipelineConfig, out: str, num_clips: int | None, style: str, seed: int | None) -> None:
    raise NotBuiltError("synth is being built")


def run_command(cfg: PipelineConfig, command: str, force: bool = False) -> int:
    raise NotBuiltError(f"{command} is being built")
