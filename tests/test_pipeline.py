"""The stage graph: skip unchanged stages, re-run dependents of a changed setting, atomic writes."""

import os
import subprocess
import sys
import textwrap

from vjepa_adapt import storage
from vjepa_adapt.config import load_config
from vjepa_adapt.pipeline import StageGraph, StageSpec, read_stage_record
from vjepa_adapt.stage_result import StageResult


def _graph(calls):
    def make(name):
        def run(ctx):
            calls.append(name)
            storage.write_text(ctx.out_dir / "out.txt", name)
            return StageResult(done=1)

        return run

    return StageGraph(
        [
            StageSpec("motion", make("motion"), reads=["motion"]),
            StageSpec("embed", make("embed"), reads=["model", "embed"]),
            StageSpec("probe", make("probe"), needs=["motion", "embed"], reads=["probe"]),
            StageSpec("plots", make("plots"), needs=["probe"]),
        ]
    )


def test_skips_unchanged_and_reruns_exact_dependents(tmp_path):
    calls = []
    g = _graph(calls)
    cfg = load_config("demo")
    assert set(g.run(cfg, tmp_path).values()) == {"ran"}
    assert calls == ["motion", "embed", "probe", "plots"]
    calls.clear()
    assert set(g.run(cfg, tmp_path).values()) == {"cached"}
    assert calls == []
    # a motion setting: motion and everything downstream of it, not embed
    g.run(load_config("demo", ["motion.num_classes=6"]), tmp_path)
    assert calls == ["motion", "probe", "plots"]
    calls.clear()
    # a probe setting: only probe and plots
    g.run(load_config("demo", ["motion.num_classes=6", "probe.lr=0.001"]), tmp_path)
    assert calls == ["probe", "plots"]
    rec = read_stage_record(tmp_path / "probe")
    assert rec["status"] == "complete" and rec["done"] == 1 and rec["skipped"] == []
    assert rec["config"]["probe"]["lr"] == 0.001 and "torch" in rec["versions"]
    assert (tmp_path / "config.yaml").exists()


def test_targets_run_only_what_they_need(tmp_path):
    calls = []
    _graph(calls).run(load_config("demo"), tmp_path, targets=["embed"])
    assert calls == ["embed"]


def test_interrupted_stage_runs_again(tmp_path):
    calls = []
    g = _graph(calls)
    cfg = load_config("demo")
    g.run(cfg, tmp_path)
    (tmp_path / "probe" / "stage.json").unlink()  # as if killed before finishing
    calls.clear()
    g.run(cfg, tmp_path)
    assert calls == ["probe"]  # plots' hash did not change, probe re-ran
    # a failing stage leaves no complete record
    def boom(ctx):
        raise RuntimeError("x")

    g2 = StageGraph([StageSpec("motion", boom, reads=["motion"])])
    try:
        g2.run(load_config("demo", ["motion.num_pairs=3"]), tmp_path)
    except RuntimeError:
        pass
    assert read_stage_record(tmp_path / "motion") is None


def test_killed_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "big.bin"
    storage.write_bytes(target, b"old")
    script = textwrap.dedent(
        f"""
        import os, signal
        from vjepa_adapt import storage
        with storage.atomic_open({str(target)!r}, "wb") as fh:
            fh.write(b"x" * 1_000_000)
            fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -9
    assert target.read_bytes() == b"old"  # the destination was never half-written
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith(storage.TMP_PREFIX)]
    assert leftovers  # the temp file is there...
    assert storage.remove_stale_temps(tmp_path) == len(leftovers)  # ...and the next run cleans it
    assert os.listdir(tmp_path) == ["big.bin"]


def test_failed_write_keeps_previous_file(tmp_path):
    target = tmp_path / "m.json"
    storage.write_json(target, {"a": 1})

    class Boom(Exception):
        pass

    try:
        with storage.atomic_open(target, "w") as fh:
            fh.write('{"a": 2')
            raise Boom
    except Boom:
        pass
    assert storage.read_json(target) == {"a": 1}
    assert os.listdir(tmp_path) == ["m.json"]


def test_hash_ignores_settings_left_at_their_default(tmp_path):
    calls = []
    g = _graph(calls)
    g.run(load_config("demo"), tmp_path)
    calls.clear()
    # spelling out a default (or a schema gaining a new field with a default) changes nothing
    g.run(load_config("demo", ["probe.weight_decay=0.05", "motion.backend=farneback"]), tmp_path)
    assert calls == []
    g.run(load_config("demo", ["probe.weight_decay=0.1"]), tmp_path)
    assert calls == ["probe", "plots"]


def test_changed_setting_clears_old_outputs_but_interrupted_run_keeps_them(tmp_path):
    seen = []

    def run(ctx):
        seen.append(sorted(p.name for p in ctx.out_dir.iterdir()))
        storage.write_text(ctx.out_dir / "partial.txt", "x")
        return StageResult(done=1)

    g = StageGraph([StageSpec("probe", run, reads=["probe"])])
    g.run(load_config("demo"), tmp_path)
    (tmp_path / "probe" / "stage.json").unlink()  # interrupted: same hash, partial work kept
    g.run(load_config("demo"), tmp_path)
    assert "partial.txt" in seen[-1]
    g.run(load_config("demo", ["probe.lr=0.001"]), tmp_path)  # another setting: a clean folder
    assert seen[-1] == ["stage.started.json"]
