"""Light checks of the installer sources in packaging/ (the real builds take minutes and run
through packaging/linux/roundtrip.sh and the release workflow, not here).

What a user would notice if these broke: a spec PyInstaller cannot read, a launcher that
starts the app when they typed ``kala``, a .deb without the /usr/bin commands or the menu
entry, a release workflow GitHub rejects, an installer pointing at a missing icon.
"""

from __future__ import annotations

import ast
import configparser
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "packaging"
SCRIPTS = [
    PKG / "build_bundle.sh",
    PKG / "linux" / "build_deb.sh",
    PKG / "linux" / "roundtrip.sh",
    PKG / "macos" / "build_dmg.sh",
]


def _load_launcher():
    spec = importlib.util.spec_from_file_location("kala_launcher", PKG / "entry" / "launcher.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # the __main__ block does not run on import
    return mod


def test_spec_is_valid_python_and_bundles_both_commands():
    src = (PKG / "kala-studio.spec").read_text(encoding="utf-8")
    tree = ast.parse(src)  # a SyntaxError here is what PyInstaller would report
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert {"Analysis", "PYZ", "EXE", "COLLECT", "BUNDLE"} <= calls
    assert '"resources"' in src and "launcher.py" in src
    assert '"kala"' in src and "APP_NAME = \"kala-studio\"" in src


@pytest.mark.parametrize(
    ("argv0", "command"),
    [
        ("kala", "kala"),
        ("/usr/bin/kala", "kala"),
        ("/opt/kala-studio/kala", "kala"),
        (r"C:\Program Files\KALA Studio\KALA.EXE", "kala"),
        ("kala-studio", "kala-studio"),
        ("/opt/kala-studio/kala-studio", "kala-studio"),
        ("kala-studio.exe", "kala-studio"),
        ("/Applications/KALA Studio.app/Contents/MacOS/kala-studio", "kala-studio"),
    ],
)
def test_launcher_picks_the_command_by_executable_name(argv0, command):
    launcher = _load_launcher()
    name = argv0.replace("\\", "/") if os.sep == "/" else argv0
    assert launcher.command_name(name) == command


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_parse_and_are_executable(script):
    assert script.stat().st_mode & stat.S_IXUSR, f"{script} is not executable"
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_maintainer_scripts_are_posix_sh():
    for name in ("postinst", "postrm"):
        script = PKG / "linux" / name
        assert script.read_text().startswith("#!/bin/sh")
        assert script.stat().st_mode & stat.S_IXUSR
        r = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def test_release_workflow_builds_each_os_and_runs_the_roundtrip():
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())
    triggers = wf[True]  # YAML 1.1 reads the key `on` as True
    assert "tags" in triggers["push"]
    jobs = wf["jobs"]
    assert jobs["linux"]["runs-on"].startswith("ubuntu")
    assert jobs["windows"]["runs-on"].startswith("windows")
    assert jobs["macos"]["runs-on"].startswith("macos")
    assert set(jobs["release"]["needs"]) == {"linux", "windows", "macos"}
    linux_runs = "\n".join(s.get("run", "") for s in jobs["linux"]["steps"])
    assert "packaging/linux/roundtrip.sh" in linux_runs and "build_deb.sh" in linux_runs
    assert "kala-studio.iss" in "\n".join(s.get("run", "") for s in jobs["windows"]["steps"])
    assert "build_dmg.sh" in "\n".join(s.get("run", "") for s in jobs["macos"]["steps"])
    for job in jobs.values():
        for step in job["steps"]:
            assert "uses" in step or "run" in step, step


def test_desktop_entry_is_valid():
    path = PKG / "linux" / "kala-studio.desktop"
    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str
    cp.read(path, encoding="utf-8")
    entry = cp["Desktop Entry"]
    assert entry["Type"] == "Application"
    assert entry["Exec"].split()[0] == "kala-studio"  # the /usr/bin launcher
    assert entry["Icon"] == "kala-studio" and (PKG / "icons" / "kala-studio.svg").is_file()
    assert entry["Categories"].endswith(";")
    if shutil.which("desktop-file-validate"):
        r = subprocess.run(["desktop-file-validate", str(path)], capture_output=True, text=True)
        assert r.returncode == 0 and "error" not in r.stdout.lower(), r.stdout + r.stderr


def test_icons_are_what_each_installer_expects():
    icons = PKG / "icons"
    ET.parse(icons / "kala-studio.svg")  # well-formed SVG
    for name, size in (("kala-studio.png", 256), ("kala-studio-48.png", 48)):
        head = (icons / name).read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        assert int.from_bytes(head[16:20], "big") == size and int.from_bytes(head[20:24], "big") == size
    assert (icons / "kala-studio.ico").read_bytes()[:4] == b"\x00\x00\x01\x00"
    assert (icons / "kala-studio.icns").read_bytes()[:4] == b"icns"


def test_inno_setup_script_points_at_existing_files():
    iss = (PKG / "windows" / "kala-studio.iss").read_text(encoding="utf-8")
    assert "[Setup]" in iss and "[Files]" in iss and "[Icons]" in iss
    for line in iss.splitlines():
        if line.startswith("SetupIconFile="):
            rel = line.split("=", 1)[1].replace("\\", "/")
            assert (PKG / "windows" / rel).resolve().is_file(), line
    # the bundle folder the installer packs is the one build_bundle.sh writes
    assert '#define BundleDir "..\\out\\dist\\kala-studio"' in iss
    assert 'OUT/dist' in (PKG / "build_bundle.sh").read_text()
    # PATH entries are removed on uninstall, not the whole PATH value
    assert "RemoveFromPath" in iss and "uninsdeletevalue" not in iss.lower()


@pytest.fixture()
def fake_bundle(tmp_path):
    """A stand-in for packaging/out/dist/kala-studio: two tiny 'executables' and the build info."""
    out = tmp_path / "out"
    bundle = out / "dist" / "kala-studio"
    (bundle / "_internal" / "resources").mkdir(parents=True)
    exe = bundle / "kala-studio"
    true = shutil.which("true")
    if true and Path(true).read_bytes()[:4] == b"\x7fELF":
        shutil.copy(true, exe)  # a real ELF file: build_deb.sh reads its glibc needs
    else:
        exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    (bundle / "kala").symlink_to("kala-studio")
    (bundle / "_internal" / "resources" / "constitution.toml").write_text("# fake\n")
    info = {"version": "9.8.7", "flavour": "cpu", "torch": "x", "torch_cuda": None}
    (bundle / "_internal" / "kala_build.json").write_text(json.dumps(info))
    return out


@pytest.mark.skipif(not shutil.which("dpkg-deb"), reason="needs dpkg-deb (Debian/Ubuntu)")
def test_build_deb_lays_out_the_package(fake_bundle):
    env = {**os.environ, "KALA_PACKAGING_OUT": str(fake_bundle), "DEB_COMPRESS": "gzip", "DEB_LEVEL": "1"}
    r = subprocess.run(
        ["bash", str(PKG / "linux" / "build_deb.sh"), "--no-bundle"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    deb = fake_bundle / f"kala-studio_9.8.7_{arch}.deb"
    assert deb.is_file(), sorted(p.name for p in fake_bundle.iterdir())

    fields = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True).stdout
    assert "Package: kala-studio\n" in fields and "Version: 9.8.7\n" in fields
    assert "Conflicts: kala-studio-cuda" in fields
    libc = re.search(r"Depends: libc6 \(>= 2\.(\d+)\)", fields)
    depends = next(x for x in fields.splitlines() if x.startswith("Depends:"))
    for pkg in ("libxcb-cursor0", "libxcb-icccm4", "libxkbcommon-x11-0", "libgl1"):  # Qt xcb needs these
        assert pkg in depends, depends
    assert libc and int(libc.group(1)) >= 17, fields

    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True).stdout
    for path in (
        "./usr/bin/kala", "./usr/bin/kala-studio", "./opt/kala-studio/kala-studio",
        "./opt/kala-studio/kala -> kala-studio",
        "./opt/kala-studio/_internal/resources/constitution.toml",
        "./usr/share/applications/kala-studio.desktop",
        "./usr/share/icons/hicolor/256x256/apps/kala-studio.png",
        "./usr/share/icons/hicolor/scalable/apps/kala-studio.svg",
    ):
        assert path in listing, path
    assert "root/root" in listing and " ./home" not in listing  # root-owned, nothing outside /opt,/usr

    extracted = fake_bundle / "x"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(extracted)], check=True)
    launcher = (extracted / "usr" / "bin" / "kala").read_text()
    assert "exec /opt/kala-studio/kala " in launcher
    run = subprocess.run([str(extracted / "usr" / "bin" / "kala-studio")], capture_output=True, text=True)
    assert run.returncode != 0  # points at /opt/kala-studio, which the test did not install

    tar = fake_bundle / f"kala-studio-9.8.7-linux-{arch}-cpu.tar.gz"
    with tarfile.open(tar) as t:
        names = t.getnames()
    assert "kala-studio-9.8.7-linux-" + arch + "-cpu/kala-studio" in names
    assert any(n.endswith("/kala-studio.desktop") for n in names)


def test_roundtrip_refuses_to_run_without_root():
    if os.geteuid() == 0:
        pytest.skip("running as root: the refusal path is only reachable as a normal user")
    r = subprocess.run(["bash", str(PKG / "linux" / "roundtrip.sh"), "--no-build"], capture_output=True, text=True)
    assert r.returncode == 2 and "root" in r.stderr


def test_pyinstaller_is_in_the_package_extra():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.lower().startswith("pyinstaller") for req in extras["package"])


def test_roundtrip_lists_models_offline_with_the_installed_kala():
    """The installed bundle must carry what `kala models` needs (huggingface_hub) and list offline."""
    text = (PKG / "linux" / "roundtrip.sh").read_text()
    assert "HF_HUB_OFFLINE=1 /usr/bin/kala models list" in text
    spec = (PKG / "kala-studio.spec").read_text()
    assert '"huggingface_hub"' not in spec.split("excludes = [", 1)[1].split("]", 1)[0]
