"""Walk the newcomer's chain in a REAL window, clicking with the X server's pointer.

    xvfb-run -s "-screen 0 1440x900x24" python scripts/walk_real_window.py --out DIR [--size 1024x640]

Starts the real main window (``MainWindow(AppContext.create())``, as ``kala-studio`` does) on the
X display, in a throw-away data folder, and walks: the quickstart banner's button (generate ->
train kala-tiny -> chat opens) -> a chat message -> Evaluate (the public suite on the new model)
-> Runs. Every click is a real X pointer click (``xdotool`` at the widget's place on the screen);
after each step the whole X screen is saved with ``import -window root`` as ``NN-step.png`` in
DIR, for a person to look at. The quickstart is made small with the app's own ``quickstart/count``
and ``quickstart/steps`` settings (``--count``, ``--steps``), so the walk takes minutes.
Exits 1 when a step does not reach its state within its time limit (the picture of that moment is
saved first).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the screenshots")
    p.add_argument("--size", default="1024x640", help="window size WxH (default: the smallest supported)")
    p.add_argument("--count", type=int, default=600, help="quickstart examples")
    p.add_argument("--steps", type=int, default=40, help="quickstart training steps")
    p.add_argument("--eval-tokens", type=int, default=12, help="reply length of the evaluation")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _args(argv)
    if not os.environ.get("DISPLAY"):
        print("walk: no DISPLAY; run it under xvfb-run", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="kala-walk-"))
    os.environ["KALA_STUDIO_HOME"] = str(home)
    w, h = (int(x) for x in args.size.lower().split("x"))

    from PySide6.QtCore import QPoint
    from PySide6.QtWidgets import QApplication

    from kala_app.context import AppContext
    from kala_app.main_window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    ctx = AppContext.create()
    ctx.settings.setValue("quickstart/count", args.count)
    ctx.settings.setValue("quickstart/steps", args.steps)
    win = MainWindow(ctx, show_quickstart=True)
    win.resize(w, h)
    win.move(0, 0)
    win.show()
    n = [0]

    def pump(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.02)

    def shot(name: str) -> Path:
        pump(0.5)
        n[0] += 1
        path = out / f"{n[0]:02d}-{name}.png"
        subprocess.run(["import", "-window", "root", str(path)], check=True)
        print(f"walk: {path}", flush=True)
        return path

    def click(widget) -> None:
        """A real pointer click at the widget's centre on the X screen."""
        c = widget.mapToGlobal(widget.rect().center())
        proc = subprocess.Popen(["xdotool", "mousemove", str(c.x()), str(c.y()), "click", "1"])
        while proc.poll() is None:
            pump(0.05)
        pump(0.3)

    def wait_for(what: str, ok, limit: float) -> bool:
        end = time.monotonic() + limit
        while time.monotonic() < end:
            if ok():
                return True
            pump(0.2)
        shot(f"TIMEOUT-{what}")
        print(f"walk: '{what}' not reached within {limit:.0f} s", file=sys.stderr)
        return False

    pump(2.0)
    shot("start")
    click(win.banner.run_button)
    chat = win.pages["chat"]
    shot("quickstart-generating")
    if not wait_for("training", lambda: win.current_page_key() == "train", 120):
        return 1
    pump(15.0)
    shot("quickstart-training")
    if not wait_for("chat", lambda: win.current_page_key() == "chat" and bool(chat.model_path())
                    and chat.send_button.isEnabled(), 900):
        return 1
    shot("chat-opened")
    chat.input.setFocus()
    click(chat.input)
    subprocess.run(["xdotool", "type", "--delay", "20", "How do I kill a stuck process on Linux?"], check=True)
    pump(0.5)
    click(chat.send_button)
    if not wait_for("reply", lambda: chat.send_button.isEnabled() and not chat._active, 180):
        return 1
    shot("chat-reply")

    win.show_page("evaluate")
    ev = win.pages["evaluate"]
    ev.set_models(Path(chat.model_path()))
    ev.tokens_spin.setValue(args.eval_tokens)
    shot("evaluate-ready")
    click(ev.run_button)
    if not wait_for("evaluation", lambda: ev.report is not None, 900):
        return 1
    shot("evaluate-done")

    click_item = win.nav.visualItemRect(win.nav.item(5)).center()
    g = win.nav.viewport().mapToGlobal(QPoint(click_item.x(), click_item.y()))
    subprocess.run(["xdotool", "mousemove", str(g.x()), str(g.y()), "click", "1"], check=True)
    pump(3.0)
    if not wait_for("runs page", lambda: win.current_page_key() == "runs", 10):
        return 1
    shot("runs")
    win.close()
    pump(1.0)
    print(f"walk: done; screenshots in {out}; data folder {home}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
