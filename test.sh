#!/usr/bin/env bash
# The whole test suite: set up, check the layer contract (the engine never imports Qt), lint
# for errors, then pytest (offscreen Qt, CPU only; GPU tests are skipped without CUDA).
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
export QT_QPA_PLATFORM=offscreen HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/lint-imports
.venv/bin/ruff check --select F,E9 kala_engine kala_app tests bench
.venv/bin/python -m pytest "$@"
