#!/usr/bin/env bash
# Build the PyInstaller onedir bundle (kala-studio + kala) into packaging/out/dist/kala-studio.
#
#   packaging/build_bundle.sh            # uses .venv/bin/python, flavour from the installed torch
#   PYTHON=python KALA_FLAVOUR=cuda packaging/build_bundle.sh
#
# Works on Linux, macOS and Windows (Git Bash). Prints the build time and the bundle size.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${KALA_PACKAGING_OUT:-$ROOT/packaging/out}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi

"$PYTHON" -c "import PyInstaller" 2>/dev/null || {
    echo "PyInstaller is not installed in $PYTHON; run: $PYTHON -m pip install -e '.[app,package]'" >&2
    exit 2
}

cd "$ROOT"
start=$(date +%s)
"$PYTHON" -m PyInstaller packaging/kala-studio.spec --noconfirm \
    --distpath "$OUT/dist" --workpath "$OUT/build" --log-level "${PYI_LOG_LEVEL:-WARN}"
end=$(date +%s)

echo "bundle: $OUT/dist/kala-studio"
echo "build time: $((end - start)) s"
if command -v du >/dev/null; then
    echo "bundle size: $(du -sh "$OUT/dist/kala-studio" | cut -f1)"
fi
