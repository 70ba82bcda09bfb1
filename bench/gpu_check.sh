#!/usr/bin/env bash
# One prepared GPU check (issue #9), under 8 minutes on one H200: random-weight vitl-256 and vitg-384
# (no hub download) in bf16 with SDPA and activation checkpointing run a JEPA train step with a
# progressive stage change (train.stages), a head-only step, embed and probe on CUDA, and print one
# table: train step time and MFU (formula in bench/gpu_check.py), peak GPU memory, embed clips/s
# (goal for ViT-g/384 at 16 frames: >= 20 clips/s). Exits non-zero when a phase fails.
#
#   bench/gpu_check.sh                     # on the GPU machine
#   bench/gpu_check.sh --json out.json     # also write the rows as JSON
#   bench/gpu_check.sh --cpu-smoke         # the same code path on CPU at tiny sizes (tests/test_gpu_check.py)
#
# Downloads nothing: it uses a Python whose torch already sees CUDA (GPU_CHECK_PYTHON, else
# .venv-gpu, .venv, python3, python — the first that has one), and makes this package importable
# without the network: already installed, else `pip install --no-deps --no-build-isolation -e .` (into
# a .venv-gpu venv over the system site-packages when that Python is not a venv of ours), else
# PYTHONPATH=src. Other missing dependencies are named, not fetched.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export OMP_WAIT_POLICY=PASSIVE
SMOKE=0
for arg in "$@"; do [ "$arg" = "--cpu-smoke" ] && SMOKE=1; done

usable() {  # $1 python: has torch, and CUDA unless this is the CPU smoke run
  "$1" -c "import sys, torch; sys.exit(0 if ($SMOKE or torch.cuda.is_available()) else 1)" >/dev/null 2>&1
}

PY="${GPU_CHECK_PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in "$ROOT/.venv-gpu/bin/python" "$ROOT/.venv/bin/python" python3 python; do
    if command -v "$cand" >/dev/null 2>&1 && usable "$cand"; then PY="$cand"; break; fi
  done
fi
if [ -z "$PY" ] || ! usable "$PY"; then
  echo "gpu_check: no Python with a CUDA-enabled torch found (tried GPU_CHECK_PYTHON, .venv-gpu, .venv, python3," \
       "python); install torch for this machine or set GPU_CHECK_PYTHON" >&2
  exit 2
fi

if ! "$PY" -c "import vjepa_adapt" >/dev/null 2>&1; then
  case "$PY" in
    "$ROOT"/.venv*/bin/python) ;;
    *) if "$PY" -m venv --system-site-packages "$ROOT/.venv-gpu" >/dev/null 2>&1; then PY="$ROOT/.venv-gpu/bin/python"; fi ;;
  esac
  if ! "$PY" -m pip install -q --no-deps --no-build-isolation -e "$ROOT" >/dev/null 2>&1; then
    echo "gpu_check: pip install -e . without downloads failed; using PYTHONPATH=src" >&2
    export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi

missing="$("$PY" - <<'EOF'
import importlib.util
need = {"transformers": "transformers", "safetensors": "safetensors", "av": "av", "cv2": "opencv-python-headless",
        "numpy": "numpy", "yaml": "PyYAML", "pydantic": "pydantic", "tqdm": "tqdm", "huggingface_hub": "huggingface_hub"}
print(" ".join(pip for mod, pip in need.items() if importlib.util.find_spec(mod) is None))
EOF
)"
if [ -n "$missing" ]; then
  echo "gpu_check: missing Python packages: $missing (pip install $missing; this script downloads nothing)" >&2
  exit 2
fi

"$PY" -c "import torch; print(f'python: $PY  torch {torch.__version__}  cuda available: {torch.cuda.is_available()}')"
exec "$PY" "$ROOT/bench/gpu_check.py" "$@"
