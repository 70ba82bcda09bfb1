"""The stage graph: which stage needs which outputs, when a stage can be skipped, and running it.

Every stage writes into ``<run>/<folder>/`` and finishes by writing ``stage.json``:
``{"stage", "status": "complete", "hash", "inputs", "config", "versions", "done", "skipped": [{clip, reason}],
"seconds", "extra"}``. A stage's hash covers the config sections it reads, its input fingerprint and the
hashes of the stages it needs, so

* a finished stage with the same hash is skipped,
* a changed setting changes the hash of the stages that read it and, through them, of every
  stage downstream — exactly those re-run,
* an interrupted stage has no complete ``stage.json`` (it is written last, atomically), so it runs
  again; stages that can resume (embed chunks, trainer checkpoints) pick up their own partial work.

A stage declares what it needs from outside the run (weights, a model folder, an optional package) as
``requires`` checks. Before the first stage of a command runs, the checks of every stage that will run
(the targets and what they need, less the ones already up to date) are called, each check once: a
wrong weights path fails in seconds, before hours of tagging and motion, and a stage that needs no
model never asks for one.
"""

from __future__ import annotations

import functools
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vjepa_adapt import storage
from vjepa_adapt.config import PipelineConfig, config_hash, dump_config
from vjepa_adapt.errors import UserError
from vjepa_adapt.progress import get_logger
from vjepa_adapt.stage_result import StageResult

STAGE_FILE = "stage.json"
STARTED_FILE = "stage.started.json"  # the hash a stage's partial outputs belong to
log = get_logger("pipeline")


@dataclass
class StageContext:
    cfg: PipelineConfig
    run_dir: Path
    out_dir: Path
    folders: dict[str, Path]

    def path_of(self, stage: str) -> Path:
        """The output folder of an upstream stage."""
        return self.folders[stage]


@dataclass
class StageSpec:
    name: str
    run: Callable[[StageContext], StageResult]
    needs: list[str] = field(default_factory=list)
    reads: list[str] = field(default_factory=list)  # dotted config paths, e.g. ["data", "probe.lr"]
    inputs: Callable[[PipelineConfig], Any] | None = None  # fingerprint of files read from outside the run
    folder: str | None = None  # default: the stage name
    # checks of what the stage needs from outside the run; each raises UserError naming the setting
    requires: tuple[Callable[[PipelineConfig], None], ...] = ()
    # under torchrun: True = every rank runs it (DDP training); False = rank 0 runs it, the others wait
    distributed: bool = False
    # a clip-parallel stage (vjepa_adapt.engine): under torchrun with run.engine=local every rank runs
    # it on its share of the chunks and rank 0 merges; with run.engine=ray rank 0 drives the cluster
    clip_parallel: bool = False

    def every_rank(self, cfg: PipelineConfig) -> bool:
        return self.distributed or (self.clip_parallel and cfg.run.engine == "local")

    @property
    def dirname(self) -> str:
        return self.folder or self.name


def _config_subset(dumped: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    """The subtrees at dotted ``paths`` of a dumped config."""
    out: dict[str, Any] = {}
    for p in paths:
        node: Any = dumped
        for part in p.split("."):
            node = node[part]
        out[p] = node
    return out


def _non_default(value: Any, default: Any) -> Any:
    """The parts of a config subtree that differ from the schema defaults.

    Stage hashes use this, so adding a new field (with its default) to the schema does not
    invalidate every finished stage, while any setting a user changes still does.
    """
    if isinstance(value, dict) and isinstance(default, dict):
        out = {k: _non_default(v, default.get(k, _MISSING)) for k, v in value.items() if default.get(k, _MISSING) != v}
        return out
    return value


_MISSING = object()


def _hash_subset(dumped: dict[str, Any], default_dump: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    current, defaults = _config_subset(dumped, paths), _config_subset(default_dump, paths)
    return {p: _non_default(current[p], defaults[p]) for p in paths if current[p] != defaults[p]}


@functools.cache
def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("vjepa-adapt", "torch", "transformers", "numpy", "av", "opencv-python-headless"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


class StageGraph:
    def __init__(self, specs: list[StageSpec]):
        self.specs = {s.name: s for s in specs}
        for s in specs:
            for n in s.needs:
                if n not in self.specs:
                    raise ValueError(f"stage {s.name!r} needs unknown stage {n!r}")
        self._order = self._topological()

    def _topological(self) -> list[str]:
        order: list[str] = []
        state: dict[str, int] = {}

        def visit(n: str) -> None:
            if state.get(n) == 2:
                return
            if state.get(n) == 1:
                raise ValueError(f"stage graph has a cycle through {n!r}")
            state[n] = 1
            for m in self.specs[n].needs:
                visit(m)
            state[n] = 2
            order.append(n)

        for n in self.specs:
            visit(n)
        return order

    def upstream(self, targets: list[str]) -> list[str]:
        """Targets and everything they need, in run order."""
        want: set[str] = set()

        def add(n: str) -> None:
            if n not in self.specs:
                raise KeyError(n)
            if n not in want:
                want.add(n)
                for m in self.specs[n].needs:
                    add(m)

        for t in targets:
            add(t)
        return [n for n in self._order if n in want]

    def check_requirements(self, cfg: PipelineConfig, stages: list[str]) -> None:
        """Call the ``requires`` checks of ``stages``, each distinct check once, before any work.

        The first failing check raises its UserError (same class), with the stages that need it named.
        """
        users: dict[Callable[[PipelineConfig], None], list[str]] = {}
        for n in stages:
            for check in self.specs[n].requires:
                users.setdefault(check, []).append(n)
        for check, names in users.items():
            try:
                check(cfg)
            except UserError as e:
                raise type(e)(f"{e} (needed by {', '.join(names)})") from None

    def hashes(self, cfg: PipelineConfig) -> dict[str, str]:
        dumped, default_dump = cfg.model_dump(mode="json"), PipelineConfig().model_dump(mode="json")
        out: dict[str, str] = {}
        for n in self._order:
            s = self.specs[n]
            out[n] = config_hash(
                {
                    "stage": n,
                    "config": _hash_subset(dumped, default_dump, s.reads),
                    "inputs": s.inputs(cfg) if s.inputs else None,
                    "needs": {m: out[m] for m in s.needs},
                }
            )
        return out

    def run(
        self,
        cfg: PipelineConfig,
        run_dir: str | Path,
        targets: list[str] | None = None,
        force: list[str] | None = None,
    ) -> dict[str, str]:
        """Run ``targets`` (default: all) and what they need. Returns {stage: 'ran'|'cached'}.

        Under torchrun (several ranks) a ``distributed`` stage runs on every rank, and so does a
        ``clip_parallel`` one with ``run.engine=local`` (each rank its share of the clips, rank 0 merges);
        any other runs on rank 0 alone while the others wait; only rank 0 writes the run's files and
        stage records.
        """
        from vjepa_adapt import dist

        main = dist.info().is_main
        run_dir = Path(run_dir)
        hashes = self.hashes(cfg)
        folders = {n: run_dir / s.dirname for n, s in self.specs.items()}
        selected = self.upstream(targets or list(self.specs))
        up_to_date = {n for n in selected if n not in (force or []) and is_complete(folders[n], hashes[n])}
        # What the stages that will run need from outside the run is checked before anything is written.
        self.check_requirements(cfg, [n for n in selected if n not in up_to_date])
        run_dir.mkdir(parents=True, exist_ok=True)
        # The resolved config lands in the run folder before any work.
        if main:
            storage.write_text(run_dir / "config.yaml", dump_config(cfg))
        outcome: dict[str, str] = {}
        for n in selected:
            spec = self.specs[n]
            out_dir = folders[n]
            if n in up_to_date:
                log.info(f"{n}: up to date, skipped")
                outcome[n] = "cached"
                continue
            dist.wait_for_main()  # rank 0 has finished (and recorded) every stage before this one
            every_rank = spec.every_rank(cfg)
            if not (main or every_rank):
                outcome[n] = "ran on rank 0"
                continue
            if main:
                _prepare_folder(out_dir, hashes[n])
            if every_rank:
                dist.wait_for_main()  # the folder is ready before any rank writes into it
            log.info(f"{n}: running")
            t0 = time.perf_counter()
            result = spec.run(StageContext(cfg=cfg, run_dir=run_dir, out_dir=out_dir, folders=folders))
            seconds = time.perf_counter() - t0
            if main:
                write_stage_record(out_dir, n, hashes[n], spec, cfg, result, seconds)
            log.info(f"{n}: done={result.done} skipped={len(result.skipped)} in {seconds:.1f}s")
            outcome[n] = "ran"
        dist.wait_for_main()  # no rank leaves (tearing the group down) while rank 0 still works
        return outcome


def _prepare_folder(out_dir: Path, hash_: str) -> None:
    """Keep partial work of an interrupted run with the same hash (so it resumes); wipe the outputs
    of a different setting (a checkpoint of another config must never be resumed)."""
    started = out_dir / STARTED_FILE
    prev = None
    if started.exists():
        try:
            prev = storage.read_json(started).get("hash")
        except ValueError:
            prev = None
    if out_dir.exists() and prev != hash_ and any(out_dir.iterdir()):
        log.info(f"{out_dir}: outputs of a different setting, cleared before re-running")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    storage.remove_stale_temps(out_dir)
    (out_dir / STAGE_FILE).unlink(missing_ok=True)  # not 'complete' until it finishes again
    storage.write_json(started, {"hash": hash_})


def write_stage_record(
    out_dir: Path, name: str, hash_: str, spec: StageSpec, cfg: PipelineConfig, result: StageResult, seconds: float
) -> None:
    storage.write_json(
        out_dir / STAGE_FILE,
        {
            "stage": name,
            "status": "complete",
            "hash": hash_,
            "needs": spec.needs,
            "inputs": spec.inputs(cfg) if spec.inputs else None,
            "config": _config_subset(cfg.model_dump(mode="json"), spec.reads),
            "versions": _versions(),
            "done": result.done,
            "skipped": [{"clip": s.clip, "reason": s.reason} for s in result.skipped],
            "seconds": round(seconds, 3),
            "extra": result.extra,
        },
    )


def read_stage_record(out_dir: str | Path) -> dict[str, Any] | None:
    p = Path(out_dir) / STAGE_FILE
    if not p.exists():
        return None
    try:
        return storage.read_json(p)
    except ValueError:
        return None


def is_complete(out_dir: str | Path, hash_: str) -> bool:
    rec = read_stage_record(out_dir)
    return bool(rec) and rec.get("status") == "complete" and rec.get("hash") == hash_
