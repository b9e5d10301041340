#!/usr/bin/env bash
# The main job: set up, run the headless end-to-end demo on the embedded kala-tiny model
# (generate data -> train -> chat), then open KALA Studio when a display is available.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
.venv/bin/kala demo "$@"
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] || [ "$(uname)" = "Darwin" ]; then
  exec .venv/bin/kala-studio
else
  echo "No display found: skipping the desktop app. Start it later with .venv/bin/kala-studio"
fi
