#!/usr/bin/env bash
# Sets up (or refreshes) the project's virtual environment in .venv. Idempotent: a second run
# only re-installs when pyproject.toml changed. Used by ./run.sh and ./test.sh.
#
# PyTorch is installed explicitly first, so that the project's "torch>=2.6" requirement never
# pulls a multi-GB CUDA build onto a machine without a GPU:
#   - no NVIDIA GPU: the CPU build of torch 2.13.0 (a local wheel if pip's find-links has one,
#     else the PyTorch CPU index);
#   - an NVIDIA GPU: torch 2.7.1 built for CUDA 12.6, whose kernels still include sm_60 (Tesla
#     P100) as well as sm_70..sm_90. Override with KALA_TORCH_SPEC / KALA_TORCH_INDEX.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.kala-installed

# Qt's X11 plugin needs desktop libraries the PySide6 wheel does not bundle (libxcb-cursor0,
# libxcb-icccm4, ...): name the missing ones and the apt-get line. Never fails: CI runs
# headless (QT_QPA_PLATFORM=offscreen) and does not need them.
check_qt_system_libs() {
  if [ "$(uname -s)" = Linux ]; then
    "$VENV/bin/python" -m kala_app.system_libs --quiet | sed 's/^/[setup] /' || true
  fi
}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"

if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && "$VENV/bin/python" -c "import torch, transformers, PySide6" 2>/dev/null; then
  check_qt_system_libs
  exit 0
fi

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    spec=${KALA_TORCH_SPEC:-torch==2.7.1}
    index=${KALA_TORCH_INDEX:-https://download.pytorch.org/whl/cu126}
    echo "[setup] NVIDIA GPU found: installing $spec from $index (CUDA 12.6 build, includes sm_60)"
    $PIP install "$spec" --index-url "$index"
  else
    spec=${KALA_TORCH_SPEC:-torch==2.13.0}
    echo "[setup] no NVIDIA GPU: installing the CPU build of $spec"
    # the "+cpu" build: from a local wheel when pip's find-links has one (its dependencies from
    # PyPI); else from the PyTorch CPU index
    $PIP install "$spec+cpu" 2>/dev/null \
      || $PIP install "$spec+cpu" --index-url "${KALA_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" \
           --extra-index-url https://pypi.org/simple
  fi
fi

echo "[setup] installing KALA Studio (editable) with the app, dev and package extras"
$PIP install -q -e ".[app,dev,package]"
touch "$STAMP"
echo "[setup] done: $("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")')"
check_qt_system_libs
