#!/usr/bin/env bash
# Build "KALA Studio.app" (the spec's BUNDLE step) and wrap it into a drag-to-install .dmg:
#   packaging/out/kala-studio-<version>-macos-<arch>-cpu.dmg
#
#   packaging/macos/build_dmg.sh               # builds the bundle first
#   packaging/macos/build_dmg.sh --no-bundle   # reuse packaging/out/dist/KALA Studio.app
#   CODESIGN_IDENTITY="Developer ID Application: ..." packaging/macos/build_dmg.sh
#
# Without CODESIGN_IDENTITY the app keeps PyInstaller's ad-hoc signature: it runs on the
# machine that built it, and elsewhere after right-click > Open (Gatekeeper). Notarization
# (xcrun notarytool) needs a Developer ID and is left to the release manager (README).
# macOS wheels of torch have no CUDA: the .app is always the CPU flavour (MPS is used by torch
# where the engine asks for it).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="${KALA_PACKAGING_OUT:-$ROOT/packaging/out}"
APP="$OUT/dist/KALA Studio.app"

build_bundle=1
for arg in "$@"; do
    case "$arg" in
        --no-bundle) build_bundle=0 ;;
        -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "unknown option: $arg (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$(uname -s)" == Darwin ]] || { echo "build_dmg.sh runs on macOS (hdiutil)" >&2; exit 2; }

if [[ $build_bundle == 1 ]]; then
    "$ROOT/packaging/build_bundle.sh"
fi
[[ -d "$APP" ]] || { echo "no app bundle at $APP; run packaging/build_bundle.sh on macOS" >&2; exit 2; }

VERSION="$(/usr/bin/plutil -extract CFBundleShortVersionString raw "$APP/Contents/Info.plist")"
ARCH="$(uname -m)"

if [[ -n "${CODESIGN_IDENTITY:-}" ]]; then
    codesign --force --deep --options runtime --timestamp --sign "$CODESIGN_IDENTITY" "$APP"
fi
codesign --verify --deep --strict "$APP"

# The .dmg shows the app next to a link to /Applications: drag to install, drag to the bin
# to uninstall (user data stays in ~/Library/Application Support/KALA Studio).
STAGE="$OUT/dmg-stage"
rm -rf "$STAGE"
mkdir -p "$STAGE"
cp -R "$APP" "$STAGE/"
ln -s /Applications "$STAGE/Applications"
DMG="$OUT/kala-studio-$VERSION-macos-$ARCH-cpu.dmg"
rm -f "$DMG"
hdiutil create -volname "KALA Studio $VERSION" -srcfolder "$STAGE" -fs HFS+ -format UDZO -ov "$DMG"
rm -rf "$STAGE"
hdiutil verify "$DMG"

# Smoke test of the bundled CLI.
"$APP/Contents/MacOS/kala" --version
echo "app: $(du -sh "$APP" | cut -f1)  dmg: $(du -h "$DMG" | cut -f1) ($DMG)"
