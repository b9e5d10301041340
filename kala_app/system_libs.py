"""The system libraries Qt's X11 platform plugin (``libqxcb.so``) needs on Linux, and which are missing.

PySide6 wheels bundle Qt itself but not the X11/xcb, GL and font libraries of the desktop. On a
stock Debian/Ubuntu desktop some of them (``libxcb-cursor0``, ``libxcb-icccm4``, ...) are not
installed, and the window then never opens: Qt only prints "Could not load the Qt platform
plugin xcb". This module lists them in one place - ``./setup.sh`` prints the ``apt-get install``
line for the missing ones, ``packaging/linux/build_deb.sh`` declares them as ``Depends`` of the
.deb, ``kala-studio`` says so before Qt aborts - and finds the missing ones with ``ldd``.

No Qt import here: it must work when Qt cannot load.

``python -m kala_app.system_libs`` prints the missing packages and the line to run (exit 0 either
way; ``--strict`` exits 1 when some are missing); ``--deb-depends`` prints the Depends list.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

#: Shared library (soname) needed by libqxcb.so of PySide6 6.x -> Debian/Ubuntu package. From
#: ``ldd libqxcb.so`` of PySide6 6.12 (the libraries outside the wheel) on Debian 12.
QT_XCB_LIBRARIES: dict[str, str] = {
    "libGL.so.1": "libgl1",
    "libEGL.so.1": "libegl1",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libdbus-1.so.3": "libdbus-1-3",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libX11.so.6": "libx11-6",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libxcb.so.1": "libxcb1",
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
}

_NOT_FOUND = re.compile(r"^\s*(\S+)\s*=>\s*not found", re.MULTILINE)


def deb_packages() -> list[str]:
    """Every Debian package of :data:`QT_XCB_LIBRARIES`, sorted (the .deb's Depends)."""
    return sorted(set(QT_XCB_LIBRARIES.values()))


def xcb_plugin() -> Path | None:
    """``libqxcb.so`` of the installed PySide6, or None (no PySide6, or not on Linux)."""
    spec = importlib.util.find_spec("PySide6")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        p = Path(root) / "Qt" / "plugins" / "platforms" / "libqxcb.so"
        if p.is_file():
            return p
    return None


def missing_from_ldd(ldd_output: str) -> list[str]:
    """The sonames ``ldd`` reported as "not found", each once, in order."""
    out: list[str] = []
    for name in _NOT_FOUND.findall(ldd_output):
        if name not in out:
            out.append(name)
    return out


def missing_libraries(plugin: Path | None = None) -> list[str] | None:
    """Sonames the xcb plugin needs that the system lacks; None when this cannot be checked."""
    if not sys.platform.startswith("linux"):
        return None
    plugin = plugin or xcb_plugin()
    ldd = shutil.which("ldd")
    if plugin is None or ldd is None:
        return None
    try:
        r = subprocess.run([ldd, str(plugin)], capture_output=True, text=True, timeout=30,
                           env={**os.environ, "LC_ALL": "C"})
    except (OSError, subprocess.SubprocessError):
        return None
    return missing_from_ldd(r.stdout + r.stderr)


def packages_for(sonames: list[str]) -> list[str]:
    """Debian packages that provide ``sonames`` (an unknown soname is named as is)."""
    out: list[str] = []
    for s in sonames:
        pkg = QT_XCB_LIBRARIES.get(s, s)
        if pkg not in out:
            out.append(pkg)
    return out


def install_line(sonames: list[str]) -> str:
    return "sudo apt-get install " + " ".join(packages_for(sonames))


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m kala_app.system_libs", description=__doc__.splitlines()[0])
    ap.add_argument("--deb-depends", action="store_true", help="print the .deb Depends list and exit")
    ap.add_argument("--strict", action="store_true", help="exit 1 when libraries are missing")
    ap.add_argument("--quiet", action="store_true", help="print only when libraries are missing")
    args = ap.parse_args(argv)
    if args.deb_depends:
        print(", ".join(deb_packages()))
        return 0
    missing = missing_libraries()
    if missing is None:
        if not args.quiet:
            print("Qt system libraries: not checked (not Linux, no ldd, or PySide6 is not installed)")
        return 0
    if not missing:
        if not args.quiet:
            print("Qt system libraries: all present")
        return 0
    print(f"Qt system libraries missing: {', '.join(missing)}. The window cannot open without them; run:\n"
          f"  {install_line(missing)}")
    return 1 if args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
