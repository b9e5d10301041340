#!/usr/bin/env bash
# Install round trip of the Linux package, as root, on this machine:
#   1. build the .deb (packaging/linux/build_deb.sh; --no-build reuses packaging/out/*.deb,
#      --no-bundle rebuilds the .deb from the existing bundle)
#   2. dpkg -i it
#   3. run the installed /usr/bin/kala-studio --self-test (offscreen), /usr/bin/kala doctor,
#      /usr/bin/kala models list (offline, empty cache) and
#      the main window for 20 s (offscreen) as an unprivileged user with an empty home, from
#      an empty folder, with a clean environment (nothing from a checkout or a virtualenv
#      can help)
#   4. check the programs wrote nothing beside themselves (only under the user's home)
#   5. dpkg --purge it and check nothing the package brought is left under /usr or /opt
# Exit 0 when every step passed; prints each step's time.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="${KALA_PACKAGING_OUT:-$ROOT/packaging/out}"
PREFIX=/opt/kala-studio

build=1
deb_args=()
for arg in "$@"; do
    case "$arg" in
        --no-build) build=0 ;;
        --no-bundle) deb_args+=(--no-bundle) ;;
        -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown option: $arg (see --help)" >&2; exit 2 ;;
    esac
done
[[ $(id -u) == 0 ]] || { echo "roundtrip.sh installs a package: run it as root" >&2; exit 2; }

step_start=$(date +%s)
step() { # step NAME: print the time the previous step took, then the new step's name
    local now; now=$(date +%s)
    [[ -n "${STEP:-}" ]] && echo "== $STEP: done in $((now - step_start)) s"
    STEP="$1"; step_start=$now
    echo "== $STEP"
}
fail() { printf 'ROUNDTRIP FAILED: %b\n' "$*" >&2; exit 1; }

WORK="$(mktemp -d /tmp/kala-roundtrip.XXXXXX)"
PKG=""
cleanup() {
    # Never leave the package installed when a step failed half-way.
    if [[ -n "$PKG" ]] && dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null | grep -q installed; then
        echo "cleanup: purging $PKG" >&2
        dpkg --purge "$PKG" >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

snapshot() { # every path under /usr and /opt (names only), sorted
    find /usr /opt -xdev 2>/dev/null | LC_ALL=C sort
}

# ------------------------------------------------------------------------------------------
if [[ $build == 1 ]]; then
    step "build .deb"
    "$HERE/build_deb.sh" "${deb_args[@]}"
fi
DEB="$(ls -t "$OUT"/kala-studio*_*.deb 2>/dev/null | head -n1 || true)"
[[ -n "$DEB" ]] || fail "no .deb in $OUT (run without --no-build)"
PKG="$(dpkg-deb -f "$DEB" Package)"
echo "package: $DEB ($(du -h "$DEB" | cut -f1))"
if dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null | grep -q installed; then
    fail "$PKG is already installed; remove it first (dpkg --purge $PKG)"
fi

step "snapshot /usr and /opt"
snapshot >"$WORK/before.txt"

step "dpkg -i"
dpkg -i "$DEB"
[[ -x /usr/bin/kala && -x /usr/bin/kala-studio ]] || fail "launchers missing in /usr/bin"
[[ -f /usr/share/applications/kala-studio.desktop ]] || fail "desktop entry missing"
touch "$WORK/installed.marker"
sleep 1 # so that a file written by the programs is strictly newer than the marker

# An unprivileged user with an empty home, a clean environment and an empty working folder.
USER_HOME="$WORK/home"
mkdir -p "$USER_HOME" "$WORK/cwd"
RUN_AS=()
RUN_USER=root
if id nobody >/dev/null 2>&1 && command -v setpriv >/dev/null; then
    chown -R nobody: "$USER_HOME" "$WORK/cwd"
    chmod 0755 "$WORK"
    RUN_AS=(setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups)
    RUN_USER=nobody
fi
run_installed() {
    (cd "$WORK/cwd" && env -i PATH=/usr/bin:/bin HOME="$USER_HOME" LANG=C.UTF-8 \
        QT_QPA_PLATFORM=offscreen "${RUN_AS[@]}" "$@")
}

step "kala --version (installed)"
run_installed /usr/bin/kala --version

step "kala-studio --self-test (installed, offscreen, user $RUN_USER)"
set +e
run_installed /usr/bin/kala-studio --self-test 2>&1 | tee "$WORK/self-test.txt"
rc=${PIPESTATUS[0]}
set -e
[[ $rc == 0 ]] || fail "kala-studio --self-test exited $rc"

step "kala doctor (installed)"
set +e
run_installed /usr/bin/kala doctor 2>&1 | tee "$WORK/doctor.txt"
rc=${PIPESTATUS[0]}
set -e
[[ $rc == 0 ]] || fail "kala doctor exited $rc"

step "kala models list (installed, offline: HF_HUB_OFFLINE=1, empty cache)"
set +e
run_installed env HF_HUB_OFFLINE=1 /usr/bin/kala models list 2>&1 | tee "$WORK/models.txt"
rc=${PIPESTATUS[0]}
set -e
[[ $rc == 0 ]] || fail "kala models list exited $rc"
grep -q "pythia-6.9b" "$WORK/models.txt" || fail "kala models list did not list pythia-6.9b"

step "kala-studio main window (installed, offscreen, 20 s)"
# The app must still be running when timeout stops it (exit 124): a crash while building the
# pages (a module PyInstaller missed) ends it early with a traceback.
set +e
run_installed timeout 20 /usr/bin/kala-studio >"$WORK/window.txt" 2>&1
rc=$?
set -e
cat "$WORK/window.txt"
[[ $rc == 124 ]] || fail "kala-studio exited $rc within 20 s (expected it to keep running)"
! grep -q "Traceback" "$WORK/window.txt" || fail "kala-studio printed a traceback"

step "nothing written beside the program"
newer="$(find "$PREFIX" /usr -xdev -newer "$WORK/installed.marker" 2>/dev/null || true)"
[[ -z "$newer" ]] || fail "the installed programs wrote outside the user's folders:\n$newer"
echo "files the programs wrote (all under the user's home, i.e. its platformdirs folders):"
(cd "$USER_HOME" && find . -type f | sed 's|^\./|  ~/|' | head -n 20)

step "dpkg --purge"
dpkg --purge "$PKG"
PKG_REMOVED="$PKG"; PKG=""

step "nothing left under /usr and /opt"
snapshot >"$WORK/after.txt"
if ! diff -u "$WORK/before.txt" "$WORK/after.txt" >"$WORK/diff.txt"; then
    cat "$WORK/diff.txt" >&2
    fail "removing $PKG_REMOVED changed /usr or /opt (diff above)"
fi
[[ ! -e $PREFIX && ! -e /usr/bin/kala && ! -e /usr/bin/kala-studio ]] || fail "files left after purge"
step "summary"
echo "ROUNDTRIP OK: $DEB installed, self-tested, doctor ran, purged cleanly"
