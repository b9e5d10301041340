"""``kala-studio`` without the app extra, and the Qt system libraries (README, setup.sh, .deb)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kala_app import system_libs

ROOT = Path(__file__).resolve().parents[2]

LDD_OUTPUT = """\
\tlinux-vdso.so.1 (0x00007ffd)
\tlibxcb-cursor.so.0 => not found
\tlibxcb-icccm.so.4 => not found
\tlibxcb.so.1 => /lib/x86_64-linux-gnu/libxcb.so.1 (0x00007f)
\tlibxcb-icccm.so.4 => not found
"""


def _run_without(module: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``kala_app.main.main(args)`` in a fresh interpreter where ``module`` cannot be imported."""
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "from kala_app.main import main\n"
            f"sys.exit(main({list(args)!r}))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QT_QPA_PLATFORM": "offscreen"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("module", ["PySide6", "pyqtgraph"])
def test_kala_studio_without_the_app_extra_says_which_extra_in_one_line(module):
    r = _run_without(module)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [x for x in (r.stdout + r.stderr).splitlines() if x.strip()]
    assert len(lines) == 1, lines  # no traceback
    assert "pip install 'kala-studio[app]'" in lines[0] and module in lines[0]
    assert "Traceback" not in r.stderr


def test_self_test_without_pyside6_also_says_which_extra():
    r = _run_without("PySide6", "--self-test")
    assert r.returncode == 2 and "kala-studio[app]" in r.stderr


def test_ldd_output_gives_the_missing_libraries_and_the_apt_line():
    missing = system_libs.missing_from_ldd(LDD_OUTPUT)
    assert missing == ["libxcb-cursor.so.0", "libxcb-icccm.so.4"]
    assert system_libs.install_line(missing) == "sudo apt-get install libxcb-cursor0 libxcb-icccm4"


def test_missing_libraries_runs_ldd_on_the_plugin(tmp_path, monkeypatch):
    if not sys.platform.startswith("linux"):
        pytest.skip("ldd is Linux-only")
    fake = tmp_path / "bin"
    fake.mkdir()
    ldd = fake / "ldd"
    ldd.write_text(f"#!/bin/sh\ncat <<'X'\n{LDD_OUTPUT}X\n")
    ldd.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    plugin = tmp_path / "libqxcb.so"
    plugin.write_bytes(b"")
    assert system_libs.missing_libraries(plugin) == ["libxcb-cursor.so.0", "libxcb-icccm.so.4"]


def test_the_list_covers_every_system_library_of_this_pyside6_xcb_plugin():
    """Each library libqxcb.so loads from outside the wheel has its Debian package in the list."""
    plugin = system_libs.xcb_plugin()
    if plugin is None or not sys.platform.startswith("linux"):
        pytest.skip("no PySide6 xcb plugin here")
    r = subprocess.run(["ldd", str(plugin)], capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
    wheel = str(Path(plugin).parents[3])
    direct = subprocess.run(["objdump", "-p", str(plugin)], capture_output=True, text=True).stdout \
        if __import__("shutil").which("objdump") else ""
    needed = [line.split()[-1] for line in direct.splitlines() if line.strip().startswith("NEEDED")]
    if not needed:  # no objdump: every library ldd names outside the wheel and libc's own
        needed = [line.split()[0] for line in r.stdout.splitlines() if "=>" in line and wheel not in line]
    own = ("libc.so", "libm.so", "libstdc++", "libgcc_s", "libpthread", "libdl.so", "librt.so", "ld-linux")
    unknown = [n for n in needed if not n.startswith(("libQt6", *own)) and n not in system_libs.QT_XCB_LIBRARIES]
    assert not unknown, f"add these to system_libs.QT_XCB_LIBRARIES: {unknown}"


def test_readme_and_setup_and_deb_name_the_libraries():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for pkg in ("libxcb-cursor0", "libxcb-icccm4"):
        assert pkg in readme
    setup = (ROOT / "setup.sh").read_text(encoding="utf-8")
    assert "kala_app.system_libs" in setup and "|| true" in setup  # checked, never fatal (headless CI)
    deb = (ROOT / "packaging" / "linux" / "build_deb.sh").read_text(encoding="utf-8")
    assert "--deb-depends" in deb and "Depends: libc6 (>= $GLIBC_MIN), $QT_DEPENDS" in deb


def test_module_cli_prints_the_apt_line_and_exits_0(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(system_libs, "missing_libraries", lambda plugin=None: ["libxcb-cursor.so.0"])
    assert system_libs.main([]) == 0
    out = capsys.readouterr().out
    assert "sudo apt-get install libxcb-cursor0" in out
    assert system_libs.main(["--strict"]) == 1
    monkeypatch.setattr(system_libs, "missing_libraries", lambda plugin=None: [])
    capsys.readouterr()
    assert system_libs.main(["--quiet"]) == 0 and capsys.readouterr().out == ""
    assert system_libs.main(["--deb-depends"]) == 0
    assert "libxcb-cursor0, libxcb-icccm4" in capsys.readouterr().out
