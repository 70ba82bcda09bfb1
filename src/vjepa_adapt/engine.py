"""Run a clip-parallel stage's per-chunk work in this process, on a Ray cluster, or sharded by rank.

A clip-parallel stage (motion, tag, embed) hands the engine a :class:`ClipJob`:

* its clips in the stage's order, cut into fixed chunks (chunk k = clips[k*C : (k+1)*C]) — the unit
  of work, of scheduling and of resume;
* ``make_worker``: a zero-argument factory, called once per process / Ray actor (a model is loaded
  there once), that returns ``work(chunks) -> iterator of (chunk index, Part)``. One call may get
  many chunks (the in-process engine passes them all, so embed keeps one decode loader across
  chunks); a Part is a dict of numpy arrays;
* where the parts go: ``parts_dir / part_name.format(k)``, each one atomic npz file.

:func:`run_job` computes the parts that are missing (a part on disk whose recorded clip ids match the
chunk is never recomputed: that is the resume after a crash), then returns every part in chunk
order, so the stage's merge sees the same parts in the same order whatever ran them and in whatever
order they finished — the merged files are the single-process run's bytes.

Engines (``run.engine``):

* ``local`` (default, needs no Ray): the parts in this process, in order. Under torchrun (several
  ranks) each rank takes the chunks k ≡ rank (mod world), writes its own part files, all ranks meet
  at a barrier, and rank 0 merges (the others get ``None``). ``run.cpu_workers`` = N > 1 (one
  process, no torchrun): a job that uses no device (motion, classical segment, factorize, heuristic
  tag) runs in N worker processes (``concurrent.futures``, forkserver/spawn — never fork: this
  process holds torch's thread pools), each calling ``make_worker`` once, with torch and OpenCV at
  one thread, taking the next missing chunk as it finishes one; this process writes each part as
  it arrives (so a crash keeps the finished ones). Ignored under torchrun (the ranks already split
  the chunks) and for device jobs (embed, model-backed tag / segment).
* ``ray``: Ray Data ``map_batches`` over one row per missing chunk — tasks for CPU stages (motion),
  an actor pool for stages that load a model (embed, tag; ``num_gpus=1`` per actor when the
  cluster has GPUs and ``run.device`` allows), ``run.ray_workers`` at a time. Workers return each
  part's bytes; this process (the driver) writes them as they arrive, so a part survives a crash of
  anything, and workers need no write access to the run folder (they do need to read the clips).
  ``run.ray_address``: ``None`` starts a local Ray in this process; ``auto`` or ``host:port``
  joins a running cluster (``ray start --head``).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vjepa_adapt import dist, storage
from vjepa_adapt.data.clips import Clip
from vjepa_adapt.errors import UserError
from vjepa_adapt.progress import get_logger, progress

log = get_logger("engine")

ENGINES = ("local", "ray")
CHUNK_CLIPS_KEY = "chunk_clip_ids"  # every part records the clip ids of its chunk (resume check)

Part = dict[str, np.ndarray]
Work = Callable[[Sequence["Chunk"]], Iterator[tuple[int, Part]]]


@dataclass(frozen=True)
class Chunk:
    index: int
    clips: tuple[Clip, ...]


@dataclass
class ClipJob:
    """One clip-parallel stage's work (see the module doc)."""

    name: str
    clips: Sequence[Clip]
    chunk_size: int
    parts_dir: Path
    make_worker: Callable[[], Work]
    part_name: str = "part-{:05d}.npz"
    uses_model: bool = False  # Ray: an actor pool (model loaded once per actor) instead of tasks
    uses_device: bool = False  # Ray: ask for a GPU per actor when the cluster has them
    device: str = "auto"  # run.device: "cpu" never asks for a GPU
    threads: int = 0  # torch threads in each Ray worker (0 = the CPUs Ray gives it)

    def chunks(self) -> list[Chunk]:
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        c = self.chunk_size
        return [Chunk(k, tuple(self.clips[lo:lo + c])) for k, lo in enumerate(range(0, len(self.clips), c))]

    def part_path(self, k: int) -> Path:
        return Path(self.parts_dir) / self.part_name.format(k)


# ----------------------------------------------------------------------------------------- parts


def encode_part(part: Part) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **part)
    return buf.getvalue()


def decode_part(data: bytes) -> Part:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_part(path: Path) -> Part | None:
    """A part on disk, or None when it is missing or unreadable (a torn file is recomputed)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        log.warning("%s: unreadable part (%s), recomputing it", path, e)
        return None


def _finished(job: ClipJob, chunk: Chunk) -> bool:
    part = load_part(job.part_path(chunk.index))
    if part is None:
        return False
    recorded = part.get(CHUNK_CLIPS_KEY)
    # A part written before the clip list / chunk size changed is not this chunk's part.
    return recorded is not None and recorded.tolist() == [c.clip_id for c in chunk.clips]


def clips_of(chunks: Sequence[Chunk], desc: str) -> Iterator[tuple[Chunk, Clip, bool]]:
    """A worker's clips in order with a progress bar: ``(chunk, clip, last)``, ``last`` when the clip
    ends its chunk (the worker then yields that chunk's part)."""
    flat = [(chunk, c, i == len(chunk.clips) - 1) for chunk in chunks for i, c in enumerate(chunk.clips)]
    yield from progress(flat, desc=desc, total=len(flat), unit="clip")


def pack_bytes(blobs: Sequence[bytes], name: str) -> dict[str, np.ndarray]:
    """Byte strings -> ``{name}_data`` (uint8, back to back) and ``{name}_offsets`` (len + 1,) int64."""
    offsets = np.zeros(len(blobs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs]) if blobs else []
    return {f"{name}_data": np.frombuffer(b"".join(blobs), np.uint8), f"{name}_offsets": offsets}


def unpack_bytes(part: dict[str, np.ndarray], name: str) -> list[bytes]:
    """The byte strings :func:`pack_bytes` packed into ``part``."""
    data, off = part[f"{name}_data"], part[f"{name}_offsets"]
    return [data[off[i]:off[i + 1]].tobytes() for i in range(len(off) - 1)]


def _save_part(job: ClipJob, chunk: Chunk, part: Part) -> None:
    storage.save_npz(job.part_path(chunk.index), **part,
                     **{CHUNK_CLIPS_KEY: np.asarray([c.clip_id for c in chunk.clips], dtype=str)})


# ----------------------------------------------------------------------------------------- running


def run_job(job: ClipJob, engine: str = "local", ray_address: str | None = None, workers: int = 0,
            cpu_workers: int = 0) -> list[Part] | None:
    """Compute the job's missing parts on ``engine``; every part in chunk order (rank 0), else None.

    ``cpu_workers`` > 1: the local engine's worker processes for a job without a device (see the module doc).
    """
    if engine not in ENGINES:
        raise UserError(f"run.engine: {engine!r} is not one of {', '.join(ENGINES)}")
    chunks = job.chunks()
    d = dist.info()
    sharded = engine == "local" and d.enabled
    mine = [c for c in chunks if not sharded or c.index % d.world_size == d.rank]
    todo = [c for c in mine if not _finished(job, c)]
    if len(todo) < len(mine):
        log.info("%s: %d of %d chunks already done, not recomputed", job.name, len(mine) - len(todo), len(mine))
    if todo:
        if engine == "ray":
            _run_ray(job, todo, ray_address, workers)
        elif cpu_workers > 1 and not sharded and not job.uses_device and len(todo) > 1:
            _run_processes(job, todo, cpu_workers)
        else:
            _run_local(job, todo)
    if sharded:
        dist.wait_for_main()  # every rank's parts are on disk
        if not d.is_main:
            return None
    return _collect(job, chunks)


def _run_local(job: ClipJob, todo: list[Chunk]) -> None:
    by_index = {c.index: c for c in todo}
    work = job.make_worker()
    for k, part in work(todo):
        _save_part(job, by_index[k], part)


# ----------------------------------------------------------------------------------------- worker processes

_PROCESS_WORK: Work | None = None  # in a cpu_workers process: the job's work, made once


def _process_init(make_worker: Callable[[], Work]) -> None:
    global _PROCESS_WORK
    import cv2
    import torch

    torch.set_num_threads(1)  # N processes of one thread each: as many busy cores as workers
    cv2.setNumThreads(1)
    os.environ.setdefault("VJEPA_ADAPT_QUIET", "1")  # one bar (the parent's), not N interleaved ones
    _PROCESS_WORK = make_worker()


def _process_chunk(chunk: Chunk) -> list[tuple[int, Part]]:
    assert _PROCESS_WORK is not None, "worker process not initialised"
    return list(_PROCESS_WORK([chunk]))


def _process_context() -> Any:
    import multiprocessing as mp

    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # the fork server imports these once; every worker forks from it (a fresh process, no threads)
        ctx.set_forkserver_preload(["vjepa_adapt.engine"])
        return ctx
    return mp.get_context("spawn")


def _run_processes(job: ClipJob, todo: list[Chunk], cpu_workers: int) -> None:
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    n = min(cpu_workers, len(todo))
    by_index = {c.index: c for c in todo}
    log.info("%s: %d chunks in %d worker processes (run.cpu_workers)", job.name, len(todo), n)
    bar = iter(progress(range(len(todo)), desc=job.name, total=len(todo), unit="chunk"))
    error: BaseException | None = None

    def save(futures) -> None:
        nonlocal error
        for fut in futures:
            if fut.cancelled():
                continue
            if fut.exception() is not None:
                error = error or fut.exception()
                continue
            for k, part in fut.result():
                _save_part(job, by_index[k], part)  # as each arrives: survives a crash
            next(bar, None)

    with ProcessPoolExecutor(max_workers=n, mp_context=_process_context(), initializer=_process_init,
                             initargs=(job.make_worker,)) as pool:
        pending = {pool.submit(_process_chunk, c) for c in todo}  # a shared queue: each takes the next chunk
        try:
            while pending and error is None:
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                save(finished)
        finally:
            if pending:  # a chunk failed (or Ctrl-C): start no other, keep what is still finishing
                for fut in pending:
                    fut.cancel()
                save(wait(pending).done)
    if error is not None:
        raise error


def _collect(job: ClipJob, chunks: list[Chunk]) -> list[Part]:
    parts = []
    for c in chunks:
        if not _finished(job, c):
            raise RuntimeError(f"{job.name}: chunk {c.index} has no part after the run ({job.part_path(c.index)})")
        parts.append(load_part(job.part_path(c.index)))
    return parts


# ----------------------------------------------------------------------------------------- Ray


def _clip_row(c: Clip) -> dict[str, Any]:
    return asdict(c)


def _clip_from_row(row: dict[str, Any]) -> Clip:
    return Clip(**row)


class _RayWork:
    """What a Ray worker runs for one batch of rows (one chunk per row): the job's ``work``."""

    def __init__(self, make_worker: Callable[[], Work], threads: int):
        _set_threads(threads)
        self.work = make_worker()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        chunks = [Chunk(int(k), tuple(_clip_from_row(r) for r in json.loads(str(rows))))
                  for k, rows in zip(batch["index"], batch["clips"])]
        out_index, out_part = [], []
        for k, part in self.work(chunks):
            out_index.append(k)
            out_part.append(encode_part(part))
        return {"index": np.asarray(out_index, dtype=np.int64), "part": np.asarray(out_part, dtype=object)}


def _ray_task(batch: dict[str, np.ndarray], make_worker: Callable[[], Work], threads: int) -> dict[str, np.ndarray]:
    return _RayWork(make_worker, threads)(batch)


def _set_threads(threads: int) -> None:
    import torch

    n = threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if n > 0:
        torch.set_num_threads(n)


def ensure_ray(address: str | None = None) -> Any:
    """Ray, initialised: joins ``address`` (``auto``, ``host:port``, ``ray://…``) or starts a local one."""
    try:
        import ray
    except ImportError as e:
        raise UserError("run.engine=ray needs Ray Data: `pip install vjepa-adapt[ray]`") from e
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"address": address} if address else {"include_dashboard": False}
        ray.init(**kwargs)
    return ray


def _run_ray(job: ClipJob, todo: list[Chunk], address: str | None, workers: int) -> None:
    ray = ensure_ray(address)
    import ray.data  # noqa: F811 - the submodule, on the package ensure_ray returned

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    use_gpu = job.uses_device and job.device != "cpu" and gpus > 0
    cpus = max(1, int(resources.get("CPU", 1)))
    per_worker_cpus = max(1, job.threads) if not use_gpu else 1
    limit = workers or (gpus if use_gpu else max(1, cpus // per_worker_cpus))
    limit = max(1, min(limit, len(todo)))
    rows = [{"index": c.index, "clips": json.dumps([_clip_row(x) for x in c.clips])} for c in todo]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    common = dict(batch_size=1, batch_format="numpy", num_cpus=per_worker_cpus)
    if job.uses_model:
        ds = ds.map_batches(_RayWork, fn_constructor_args=(job.make_worker, job.threads),
                            compute=ray.data.ActorPoolStrategy(size=limit), num_gpus=1 if use_gpu else 0, **common)
    else:
        ds = ds.map_batches(_ray_task, fn_kwargs={"make_worker": job.make_worker, "threads": job.threads},
                            compute=ray.data.TaskPoolStrategy(size=limit), **common)
    by_index = {c.index: c for c in todo}
    log.info("%s: %d chunks on Ray (%d %s at a time%s)", job.name, len(todo), limit,
             "actors" if job.uses_model else "tasks", ", 1 GPU each" if use_gpu else "")
    for batch in ds.iter_batches(batch_size=1, batch_format="numpy"):
        for k, data in zip(batch["index"], batch["part"]):
            _save_part(job, by_index[int(k)], decode_part(bytes(data)))  # as each arrives: survives a crash


def run_configured(job: ClipJob, run: Any) -> list[Part] | None:
    """:func:`run_job` with the ``run`` config section (engine, ray_address, ray_workers, cpu_workers, device,
    threads)."""
    job.device, job.threads = run.device, run.threads
    return run_job(job, engine=run.engine, ray_address=run.ray_address, workers=run.ray_workers,
                   cpu_workers=run.cpu_workers)
