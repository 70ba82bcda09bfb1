"""bench/gpu_check: the GPU check's code path on CPU (--cpu-smoke) and its FLOP formula by hand."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_flop_formula_by_hand():
    g = _gpu_check()
    # one block, width 2, MLP 8, 3 tokens: 2*3*(4*4 + 2*2*8) + 4*9*2 = 2*3*48 + 72 = 360; patch embed 2*3*5*2 = 60
    assert g.vit_flops(3, depth=1, dim=2, mlp=8, patch_tokens_in=5) == 420
    cfg = SimpleNamespace(hidden_size=2, num_hidden_layers=1, mlp_ratio=4.0, pred_hidden_size=1,
                          pred_num_hidden_layers=1, pred_mlp_ratio=2.0, patch_size=1, tubelet_size=1)
    fl = g.model_flops(cfg, n_all=4, gens=[(1, 3)])
    enc = lambda n: 2 * n * 48 + 4 * n * n * 2 + 2 * n * 3 * 2  # noqa: E731  (patch in = 3 * 1 * 1)
    pred = 2 * 4 * (4 + 2 * 2) + 4 * 16 * 1 + 2 * 1 * 2 * 1 + 2 * 3 * 1 * 2  # m = 4 tokens, Dp = 1, Fp = 2
    assert fl["forward"] == enc(4)
    assert fl["jepa"] == enc(4) + 3 * (enc(1) + pred)


def test_step_times_skip_missing_rows_and_subtract_nothing_else():
    g = _gpu_check()
    stamps = [(1, 10.0, 0.0), (2, 11.0, 0.1), (3, 13.0, 0.3), (4, 16.0, 0.6)]
    assert g.step_times(stamps, 3, 4) == pytest.approx((2.5, 0.25))
    with pytest.raises(RuntimeError, match="no timed steps"):
        g.step_times(stamps, 6, 7)


def test_cpu_smoke_runs_every_phase(tmp_path, capsys):
    g = _gpu_check()
    out = tmp_path / "rows.json"
    assert g.main(["--cpu-smoke", "--json", str(out), "--workdir", str(tmp_path / "work")]) == 0
    rows = json.loads(out.read_text())
    assert [(r["phase"], r["ok"]) for r in rows] == [("jepa+stages", True), ("head-only", True), ("embed", True),
                                                     ("encoder fwd", True), ("probe", True)]
    jepa = rows[0]["values"]
    assert jepa["step_s"] > 0 and jepa["tflop_step"] > 0 and 0 <= jepa["mfu"] < 1
    assert rows[2]["values"]["clips_per_s"] > 0 and rows[4]["values"]["n_test"] > 0
    table = capsys.readouterr().out
    assert "MFU" in table and "clips/s" in table and "FAIL" not in table


@pytest.mark.slow
def test_the_shell_script_finds_python_and_runs_the_smoke(tmp_path):
    env = {**os.environ, "GPU_CHECK_PYTHON": sys.executable}
    res = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--cpu-smoke", "--json", str(tmp_path / "r.json")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert all(r["ok"] for r in json.loads((tmp_path / "r.json").read_text()))
    # without CUDA, GPU mode says so and fails
    res = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 2 and "CUDA" in res.stderr
