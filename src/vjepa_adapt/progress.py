"""Progress bars and log lines: one place decides how loud the toolkit is.

Bars are shown on an interactive terminal and hidden under CI (``CI`` set) or when
``VJEPA_ADAPT_QUIET=1``; log lines always go to stderr through the ``vjepa_adapt`` logger.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_LOGGER_NAME = "vjepa_adapt"


def quiet() -> bool:
    return bool(os.environ.get("CI")) or os.environ.get("VJEPA_ADAPT_QUIET") == "1" or not sys.stderr.isatty()


def silence_library_bars() -> None:
    """Hugging Face's own progress bars ("Writing model shards") follow our quiet setting."""
    if quiet():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def get_logger(name: str = "") -> logging.Logger:
    """A child of the package logger; configured once with a plain one-line format."""
    root = logging.getLogger(_LOGGER_NAME)
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        # under torchrun every rank logs: say which one
        rank = f" [rank {os.environ.get('RANK', '0')}]" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        handler.setFormatter(logging.Formatter(f"[%(asctime)s]{rank} %(message)s", datefmt="%H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return root.getChild(name) if name else root


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Wrap a long loop in a tqdm bar unless running quietly."""
    if quiet():
        yield from iterable
        return
    from tqdm.auto import tqdm

    yield from tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True, leave=False)


class MetricsLog:
    """Training metrics: one JSON line per step in ``metrics.jsonl`` (always), and TensorBoard event
    files in ``tb/`` when the ``tensorboard`` package is installed (``pip install vjepa-adapt[tensorboard]``).

    ``start_step``: the step the run (re)starts from. Rows of later steps — written after the last
    checkpoint by a run that then crashed — are dropped first (atomically), so a resumed run's file
    holds each step once.
    """

    def __init__(self, folder: str | os.PathLike, enabled: bool = True, start_step: int = 0):
        from pathlib import Path

        self.path = Path(folder) / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if enabled:
            truncate_metrics(self.path, start_step)
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional dependency: JSONL alone is the contract
                SummaryWriter = None
            if SummaryWriter is not None:  # purge_step: TensorBoard's own way to forget the replayed steps
                self._tb = SummaryWriter(log_dir=str(Path(folder) / "tb"), purge_step=start_step + 1)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        from vjepa_adapt import storage

        storage.append_jsonl(self.path, row)
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def truncate_metrics(path: str | os.PathLike, last_step: int) -> None:
    """Keep the rows of ``path`` with ``step <= last_step`` (and drop a torn last line), atomically."""
    import json

    from vjepa_adapt import storage

    if not os.path.exists(path):
        return
    keep, dropped = [], 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except ValueError:  # a line torn by the crash
                dropped += 1
                continue
            if isinstance(row, dict) and row.get("step", 0) <= last_step:
                keep.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        storage.write_text(path, "".join(keep))
