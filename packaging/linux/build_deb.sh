#!/usr/bin/env bash
# Build the Linux installers from the PyInstaller bundle:
#   packaging/out/kala-studio_<version>_<arch>.deb          (CPU flavour)
#   packaging/out/kala-studio-cuda_<version>_<arch>.deb     (CUDA flavour)
#   packaging/out/kala-studio-<version>-linux-<arch>-<flavour>.tar.gz
#
#   packaging/linux/build_deb.sh               # builds the bundle first (packaging/build_bundle.sh)
#   packaging/linux/build_deb.sh --no-bundle   # reuse packaging/out/dist/kala-studio
#   DEB_COMPRESS=xz packaging/linux/build_deb.sh     # smallest and readable by every dpkg, but slow
#
# The default .deb compression is zstd -9 (224 MiB in ~20 s here; xz -6 gives 240 MiB in ~11 min on
# two cores). zstd .debs install with dpkg >= 1.21.18: Debian 12+, Ubuntu 21.10+. For older
# systems build with DEB_COMPRESS=xz (the release workflow does).
#
# The .deb installs the bundle to /opt/kala-studio, launchers to /usr/bin/{kala,kala-studio},
# a desktop entry and icons under /usr/share. Nothing else: the app writes only to the user's
# platformdirs folders.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="${KALA_PACKAGING_OUT:-$ROOT/packaging/out}"
PREFIX=/opt/kala-studio
BUNDLE="$OUT/dist/kala-studio"

build_bundle=1
for arg in "$@"; do
    case "$arg" in
        --no-bundle) build_bundle=0 ;;
        -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "unknown option: $arg (see --help)" >&2; exit 2 ;;
    esac
done

command -v dpkg-deb >/dev/null || { echo "dpkg-deb is needed (apt-get install dpkg)" >&2; exit 2; }

t0=$(date +%s)
if [[ $build_bundle == 1 ]]; then
    "$ROOT/packaging/build_bundle.sh"
fi
[[ -x "$BUNDLE/kala-studio" && -x "$BUNDLE/kala" ]] || {
    echo "no bundle in $BUNDLE; run packaging/build_bundle.sh first" >&2
    exit 2
}
t1=$(date +%s)

# Version and flavour come from the bundle itself (written by the spec).
read -r VERSION FLAVOUR < <(python3 - "$BUNDLE/_internal/kala_build.json" <<'PY'
import json, sys
info = json.load(open(sys.argv[1]))
print(info["version"], info["flavour"])
PY
)
ARCH="$(dpkg --print-architecture)"
# A PyInstaller bundle runs on the glibc it was built against or newer: the highest GLIBC_x.y
# symbol version any bundled ELF file asks for becomes the libc6 dependency.
GLIBC_MIN="$(python3 - "$BUNDLE" <<'PY'
import pathlib, re, sys
need = (2, 17)
for p in pathlib.Path(sys.argv[1]).rglob("*"):
    if p.is_symlink() or not p.is_file():
        continue
    with open(p, "rb") as f:
        if f.read(4) != b"\x7fELF":
            continue
        data = f.read()
    for m in re.finditer(rb"GLIBC_2\.(\d+)", data):
        need = max(need, (2, int(m.group(1))))
print(f"{need[0]}.{need[1]}")
PY
)"
# The desktop libraries Qt's X11 plugin loads (one list, kala_app/system_libs.py; a stock
# Debian desktop lacks libxcb-cursor0 and libxcb-icccm4, and without them no window opens).
QT_DEPENDS="$(cd "$ROOT" && python3 -c 'import runpy, sys; sys.argv = ["x", "--deb-depends"]; runpy.run_path("kala_app/system_libs.py", run_name="__main__")')"
if [[ $FLAVOUR == cpu ]]; then PKG=kala-studio; OTHER=kala-studio-cuda; else PKG=kala-studio-cuda; OTHER=kala-studio; fi

# ---------------------------------------------------------------- .deb staging tree
STAGE="$OUT/deb/${PKG}_${VERSION}_${ARCH}"
rm -rf "$STAGE"
mkdir -p "$STAGE/DEBIAN" "$STAGE$PREFIX" "$STAGE/usr/bin" \
    "$STAGE/usr/share/applications" "$STAGE/usr/share/doc/$PKG" \
    "$STAGE/usr/share/icons/hicolor/256x256/apps" "$STAGE/usr/share/icons/hicolor/48x48/apps" \
    "$STAGE/usr/share/icons/hicolor/scalable/apps"
# Hard links: the staging copy costs no time or disk (falls back to a copy across filesystems).
cp -al "$BUNDLE/." "$STAGE$PREFIX/" 2>/dev/null || cp -a "$BUNDLE/." "$STAGE$PREFIX/"

for name in kala kala-studio; do
    sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@NAME@|$name|g" "$HERE/launcher.sh.in" >"$STAGE/usr/bin/$name"
    chmod 0755 "$STAGE/usr/bin/$name"
done
install -m 0644 "$HERE/kala-studio.desktop" "$STAGE/usr/share/applications/kala-studio.desktop"
install -m 0644 "$ROOT/packaging/icons/kala-studio.png" "$STAGE/usr/share/icons/hicolor/256x256/apps/kala-studio.png"
install -m 0644 "$ROOT/packaging/icons/kala-studio-48.png" "$STAGE/usr/share/icons/hicolor/48x48/apps/kala-studio.png"
install -m 0644 "$ROOT/packaging/icons/kala-studio.svg" "$STAGE/usr/share/icons/hicolor/scalable/apps/kala-studio.svg"
cat >"$STAGE/usr/share/doc/$PKG/copyright" <<EOF
KALA Studio $VERSION ($FLAVOUR flavour)
License: Apache-2.0
The bundle in $PREFIX includes Python, PyTorch, Qt (PySide6, LGPLv3) and their
dependencies under their own licenses; see the *.dist-info folders in $PREFIX/_internal.
EOF
install -m 0755 "$HERE/postinst" "$STAGE/DEBIAN/postinst"
install -m 0755 "$HERE/postrm" "$STAGE/DEBIAN/postrm"

INSTALLED_KB=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
cat >"$STAGE/DEBIAN/control" <<EOF
Package: $PKG
Version: $VERSION
Architecture: $ARCH
Maintainer: KALA Studio developers <maintainers@kala-studio.invalid>
Installed-Size: $INSTALLED_KB
Section: science
Priority: optional
Depends: libc6 (>= $GLIBC_MIN), $QT_DEPENDS
Conflicts: $OTHER
Replaces: $OTHER
Description: train, chat with and evaluate constitutional (Five Laws) language models
 KALA Studio generates constitutional training data, trains KALA models
 derived from Pythia with ethics value heads, and chats with them while a
 gauge shows every token's scores against the Five Laws. Self-contained
 ($FLAVOUR flavour): Python, PyTorch and Qt are bundled in $PREFIX; no
 network access is needed. Commands: kala-studio (desktop app), kala (CLI).
EOF

DEB="$OUT/${PKG}_${VERSION}_${ARCH}.deb"
COMPRESS="${DEB_COMPRESS:-zstd}"
case "$COMPRESS" in
    zstd) LEVEL="${DEB_LEVEL:-9}" ;;
    xz | gzip) LEVEL="${DEB_LEVEL:-6}" ;;
    *) echo "DEB_COMPRESS must be zstd, xz or gzip" >&2; exit 2 ;;
esac
dpkg-deb --root-owner-group -Z"$COMPRESS" -z"$LEVEL" --build "$STAGE" "$DEB" >/dev/null
t2=$(date +%s)

# ---------------------------------------------------------------- .tar.gz
# The same bundle, with the desktop entry and icon beside it for a manual install.
TARNAME="kala-studio-$VERSION-linux-$ARCH-$FLAVOUR"
TSTAGE="$OUT/tar/$TARNAME"
rm -rf "$OUT/tar"
mkdir -p "$TSTAGE"
cp -al "$BUNDLE/." "$TSTAGE/" 2>/dev/null || cp -a "$BUNDLE/." "$TSTAGE/"
install -m 0644 "$HERE/kala-studio.desktop" "$ROOT/packaging/icons/kala-studio.png" "$TSTAGE/"
TARBALL="$OUT/$TARNAME.tar.gz"
if command -v pigz >/dev/null; then
    tar -C "$OUT/tar" --owner=0 --group=0 -cf - "$TARNAME" | pigz -6 >"$TARBALL"
else
    tar -C "$OUT/tar" --owner=0 --group=0 -czf "$TARBALL" "$TARNAME"
fi
rm -rf "$OUT/tar" "$OUT/deb"
t3=$(date +%s)

echo "flavour:      $FLAVOUR"
echo "bundle:       $(du -sh "$BUNDLE" | cut -f1) ($BUNDLE)"
echo "deb:          $(du -h "$DEB" | cut -f1) ($DEB, $COMPRESS -$LEVEL), installed size $((INSTALLED_KB / 1024)) MiB"
echo "tar.gz:       $(du -h "$TARBALL" | cut -f1) ($TARBALL)"
echo "time:         bundle $((t1 - t0)) s, deb $((t2 - t1)) s, tar.gz $((t3 - t2)) s"
