"""``kala-studio``: the desktop app's entry point.

* ``kala-studio`` opens the main window.
* ``kala-studio --self-test`` runs offscreen: opens the user's real stores (folders, settings, chat
  history, runs list - repairing them as the app would at start), builds a tiny model, runs one
  training step through the engine worker and generates one token, prints what it did and exits 0
  (1 on failure). The installer uses it to check an installation.
* ``kala-studio --screenshot-dir DIR`` renders every page at 1024x640 and 1440x900 offscreen into DIR
  and exits.

Installed without the ``app`` extra (no PySide6/pyqtgraph), ``kala-studio`` says in one line which
extra to install and exits 2. On Linux it warns (with the ``apt-get`` line) when Qt's X11 plugin
lacks system libraries, before Qt aborts with a less helpful message.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kala-studio", description="KALA Studio, the desktop app.")
    p.add_argument("--self-test", action="store_true", help="check the installation offscreen and exit")
    p.add_argument("--screenshot-dir", metavar="DIR", help="render one PNG per page into DIR and exit")
    p.add_argument("--data-dir", metavar="DIR", help="use DIR instead of the per-user data folder")
    return p.parse_args(argv)


def check_stores(say) -> bool:
    """Open the user's real stores as the app does at start (folders, settings, chats, runs).

    Whatever start-up would repair is repaired here too (a damaged file is moved aside, never
    deleted) and said. False when a store cannot be used: the folders cannot be made, the
    settings cannot be saved, or the chat history can only be kept in memory.
    """
    from PySide6.QtCore import QSettings

    from .chat_store import ChatStore
    from .context import default_dirs
    from .runs import list_runs
    from .startup import AppSettings, check_settings_file, ensure_folder

    data, conf = default_dirs()
    ok = True
    try:
        for p in (data, data / "runs", data / "datasets", data / "chats", conf):
            if notice := ensure_folder(p):
                say(f"  repaired: {notice}")
    except OSError as e:
        say(f"FAILED: the data folders under {data} cannot be made ({e})")
        return False
    try:
        if notice := check_settings_file(conf / "settings.ini"):
            say(f"  repaired: {notice}")
    except OSError as e:
        say(f"FAILED: settings: {e}")
        return False
    settings = AppSettings(str(conf / "settings.ini"), QSettings.Format.IniFormat)
    settings.sync()
    if settings.status() != QSettings.Status.NoError or not settings.isWritable():
        say(f"FAILED: settings {settings.fileName()} cannot be saved ({settings.status().name})")
        ok = False
    else:
        say(f"settings: {settings.fileName()} ({len(settings.allKeys())} keys)")
    try:
        store = ChatStore.in_folder(data / "chats")
    except Exception as e:  # noqa: BLE001 - the store promises never to raise; a self-test checks that
        say(f"FAILED: chat history: {type(e).__name__}: {e}")
        return False
    try:
        n = len(store.list_chats())  # reads every chat row: damaged ones are noted too
        for notice in store.notices:
            say(f"  note: {notice}")
        if store.in_memory:
            say(f"FAILED: chat history {store.path} cannot be opened; chats would not be saved")
            ok = False
        else:
            mode = "read-only (written by a newer version)" if store.read_only else "read-write"
            say(f"chat history: {store.path} ({n} chats, {mode}, integrity {'ok' if store.integrity_ok() else 'NOT ok'})")
    finally:
        store.close()
    try:
        runs = list_runs(data / "runs")
        say(f"runs: {data / 'runs'} ({len(runs)} runs)")
    except Exception as e:  # noqa: BLE001
        say(f"FAILED: runs list: {type(e).__name__}: {e}")
        ok = False
    return ok


def self_test(out=sys.stdout) -> int:
    """Offscreen end-to-end check: the real stores, tiny model, one training step through the worker, one token."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    from . import engine_api
    from .worker import EngineWorker

    app = QApplication.instance() or QApplication(["kala-studio"])
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[self-test {time.perf_counter() - t0:6.1f}s] {msg}", file=out, flush=True)

    if not check_stores(say):
        return 1
    worker = EngineWorker()
    try:
        with tempfile.TemporaryDirectory(prefix="kala-self-test-") as tmp:
            say(f"device: {engine_api.device_summary()}")
            job, describe = engine_api.self_test_job(Path(tmp))
            say(f"job: {describe}")
            seen: dict = {"steps": [], "tokens": [], "failed": None, "finished": None}
            worker.step.connect(lambda ev: seen["steps"].append(ev))
            worker.token.connect(lambda ev: seen["tokens"].append(ev))
            worker.log.connect(lambda m: say(f"  {m}"))
            worker.failed.connect(lambda m, tb: seen.__setitem__("failed", (m, tb)))
            worker.finished.connect(lambda ev: seen.__setitem__("finished", ev))
            worker.start(job, "self-test")
            if not worker.wait_idle(timeout_s=300):
                say("FAILED: the job did not finish within 300 s")
                return 1
            app.processEvents()
            if seen["failed"]:
                msg, tb = seen["failed"]
                say(f"FAILED: {msg}")
                if tb:
                    print(tb, file=out)
                return 1
            for ev in seen["steps"]:
                m = ev.metrics
                say(
                    f"training step {ev.step}/{ev.total_steps}: lm_loss={m.get('lm_loss', float('nan')):.4f} "
                    f"ethics_loss={m.get('ethics_loss', float('nan')):.4f}"
                )
            for ev in seen["tokens"]:
                scores = ", ".join(f"{s:.2f}" for s in ev.law_scores)
                say(f"generated token {ev.index}: id={ev.token_id} text={ev.text!r} law scores=[{scores}]")
            if not seen["steps"] or not seen["tokens"]:
                say(f"FAILED: expected at least one training step and one token, got "
                    f"{len(seen['steps'])} steps and {len(seen['tokens'])} tokens")
                return 1
            say("OK")
            return 0
    except Exception as e:  # noqa: BLE001 - a self-test reports every failure
        say(f"FAILED: {type(e).__name__}: {e}")
        traceback.print_exc(file=out)
        return 1
    finally:
        worker.shutdown(timeout_s=30)


#: What ``kala-studio`` prints when the desktop extra is not installed.
MISSING_QT = ("kala-studio: the desktop app needs the 'app' extra ({name} is not installed): "
              "pip install 'kala-studio[app]'")


def missing_gui_module() -> str | None:
    """The name of the missing GUI package (PySide6, pyqtgraph), or None when both import."""
    import importlib

    for name in ("PySide6.QtWidgets", "pyqtgraph"):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            return (e.name or name).split(".")[0]
        except ImportError:
            continue  # present but broken (e.g. a system library missing): Qt says why itself
    return None


def _warn_missing_system_libs(err=sys.stderr) -> None:
    """On Linux with X11, name the xcb libraries Qt will fail to load (see kala_app.system_libs)."""
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    if platform and not platform.startswith("xcb"):
        return
    if not platform and os.environ.get("WAYLAND_DISPLAY"):
        return
    from . import system_libs

    missing = system_libs.missing_libraries()
    if missing:
        print(f"kala-studio: Qt's X11 plugin needs {', '.join(missing)}, missing on this system; "
              f"the window may not open. Install them with: {system_libs.install_line(missing)}",
              file=err, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if (missing := missing_gui_module()) is not None:
        print(MISSING_QT.format(name=missing), file=sys.stderr)
        return 2
    if args.self_test:
        return self_test()
    if args.screenshot_dir and not os.environ.get("QT_QPA_PLATFORM", "offscreen").startswith("offscreen:"):
        from .offscreen import use_offscreen

        if os.environ.get("QT_QPA_PLATFORM", "offscreen") == "offscreen":
            use_offscreen(1920, 1080)  # a screen bigger than the largest picture (1440x900)
    if args.data_dir:
        os.environ["KALA_STUDIO_HOME"] = str(Path(args.data_dir).resolve())

    if not args.screenshot_dir:
        _warn_missing_system_libs()
    from PySide6.QtWidgets import QApplication

    from .context import AppContext
    from .main_window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("KALA Studio")
    app.setOrganizationName("KALA")
    if args.screenshot_dir:
        from .screenshots import render_all

        paths = render_all(Path(args.screenshot_dir))
        for p in paths:
            print(p)
        return 0
    win = MainWindow(AppContext.create())
    win.show()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
