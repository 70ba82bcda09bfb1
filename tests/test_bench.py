"""`make bench` (bench/bench_all.py): one run prints the table and writes every section to JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_all_quick_writes_every_section(tmp_path):
    out = tmp_path / "results.json"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "VJEPA_ADAPT_QUIET": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_all.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    sections = {r["section"] for r in res["rows"]}
    assert sections >= {"peak", "jepa", "data", "embed", "stages", "engines", "ranks"}
    peak = {r["figure"].split()[2]: r["value"] for r in res["rows"] if r["section"] == "peak"}
    assert peak["fp32"] > 0 and peak["bf16"] > 0
    step = next(r for r in res["rows"] if r["figure"].startswith("train step 64px fp32"))
    assert step["ratio_to"] == "fp32 peak" and abs(step["ratio"] - step["value"] / peak["fp32"]) < 1e-9
    same = [r["value"] for r in res["rows"] if r["unit"] == "bool"]
    assert same and all(v == 1.0 for v in same)  # Ray and 2-rank outputs equal the in-process ones
    train2 = next(r for r in res["rows"] if r["figure"].startswith("train tiny preset 64px, 2 gloo ranks"))
    assert train2["value"] > 0 and train2["ratio_to"] == "1 rank" and train2["ratio"] > 0
    apart = next(r for r in res["rows"] if r["figure"].startswith("train 2-rank vs 1-rank weights"))
    assert apart["value"] < 1e-4  # the same global batch trains the same weights on 2 ranks and on 1
    assert "| section | figure |" in proc.stdout and res["machine"]["cpus"] == os.cpu_count()
