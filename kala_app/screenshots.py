"""Render every page of the main window at 1024x640 and 1440x900, headlessly (for the README).

``python scripts/screenshots.py --out docs/screenshots [--run RUN_DIR] [--size 1280x800 ...]`` (or
``kala-studio --screenshot-dir DIR``) writes ``<page>-<W>x<H>.png`` per page and size.
Everything happens in a throw-away data folder: a
generated data set is loaded on the Data page; the Train and Runs pages show a real run: the
finished run folder given with ``--run`` (linked into the throw-away runs folder, its recorded
curves loaded), else a short kala-tiny run trained by the engine here. When that cannot train,
a warning is printed and the Train and Runs pictures show no run: nothing here writes curves it
did not measure (the made-up run of the app tests is ``tests/app/synthetic_run.py``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from kala_engine.train.run_folder import RunFolder

WIDTH, HEIGHT = 1280, 800
#: The window sizes of ``kala-studio --screenshot-dir``: the smallest supported, and a laptop's.
SIZES = ((1024, 640), (1440, 900))
#: What the Chat picture asks the model (a benign question with alarming words).
CHAT_PROMPT = "How do I kill a stuck process on Linux?"
#: Reply length of the Evaluate picture's run (the page default is longer; this keeps it short).
EVAL_TOKENS = 12
EVAL_BUDGET_S = 300.0
#: The short training run shown on the Train page gets at most this long (s). On a quiet
#: 2-core machine it takes ~20 s; next to other CPU-heavy processes torch's threads can slow it
#: ten-fold, so it is stopped at this point and the pictures show the steps it made.
TRAIN_BUDGET_S = 120.0


def _say(text: str) -> None:
    """Progress on stderr, so that a long step does not look like a hang."""
    print(f"screenshots: {text}", file=sys.stderr, flush=True)


def _wait(app, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)


def _fill_settings(train, config: dict, steps: list[dict]) -> None:
    """Set the Train page's base, data and hyperparameters to those the run was trained with."""
    from PySide6.QtWidgets import QCheckBox

    if config.get("base"):
        train.select_base(str(config["base"]))
    if config.get("data") and Path(config["data"]).is_file():
        train.set_data_path(config["data"])
    if config.get("warmup_steps") is None and steps:  # "auto": where the learning rate peaked
        lrs = [(m.get("lr") or 0.0, m["step"]) for m in steps]
        config = {**config, "warmup_steps": max(lrs)[1]}
    for key, widget in train.hp.items():
        value = config.get(key)
        if value is None:
            continue
        if isinstance(widget, QCheckBox):
            widget.setChecked(bool(value))
        else:
            widget.setValue(type(widget.value())(value))


def _show_finished_run(train, run_dir: Path) -> None:
    """Show a finished run's recorded curves and last step on the Train page, as after training."""
    folder = RunFolder(run_dir)
    steps, _validation = folder.read_metrics()
    info = folder.read_info()
    _fill_settings(train, folder.config(), steps)
    train._job_kind = "train"
    train.run_dir = run_dir
    train._reset_live(keep_overlay=False)
    train._load_existing_curves(run_dir)
    train._latest = steps[-1] if steps else {}
    train._total_steps = int(info.get("total_steps") or folder.config().get("max_steps")
                             or (steps[-1]["step"] if steps else 0))
    train._job_kind = ""
    train._refresh_progress(force=True)
    train.progress.setFormat("finished at step %v")
    train.refresh_lists()


def _train_page(app, win, data_path: Path | None, run: Path | None, also_runs, train_steps: int,
                train_budget_s: float) -> bool:
    """Show a run on the Train page: the given finished one (its curves), else a short real run
    trained here. Returns whether a run with progress is shown."""
    from . import engine_api

    ctx, train = win.ctx, win.pages["train"]
    trained = False
    if run is not None:
        run = Path(run).resolve()
        if not RunFolder(run).metrics_file.is_file():
            raise FileNotFoundError(f"{run} has no recorded metrics; give a run folder made by kala train or kala demo")
        # "demo3-run" reads better than a bare "run" in the runs table
        linked = ctx.runs_dir / (run.name if run.name != "run" else f"{run.parent.name}-{run.name}")
        linked.symlink_to(run, target_is_directory=True)
        _show_finished_run(train, linked)
        trained = True
        for other in also_runs:  # more runs: the Runs picture compares them side by side
            other = Path(other).resolve()
            name = other.name if other.name != "run" else f"{other.parent.name}-{other.name}"
            (ctx.runs_dir / name).symlink_to(other, target_is_directory=True)
    elif data_path is not None:
        try:
            engine_api.make_train_config  # noqa: B018 - resolved lazily below
            train.refresh_lists()
            train.set_data_path(data_path)
            train.hp["max_steps"].setValue(train_steps)
            train.hp["eval_every"].setValue(max(1, train_steps // 4))
            train.hp["save_every"].setValue(train_steps)
            win.show_page("train")
            if train.start_training():
                _say(f"training a {train_steps}-step kala-tiny run (at most {train_budget_s:.0f} s)")
                t0 = time.monotonic()
                if not ctx.worker.wait_idle(train_budget_s):
                    _say(f"the run did not finish in {train_budget_s:.0f} s (a busy CPU?); stopping it: "
                         "the Train and Runs pictures show the steps it made")
                    ctx.worker.cancel()
                    ctx.worker.wait_idle(120)
                else:
                    _say(f"trained in {time.monotonic() - t0:.0f} s")
                trained = train.run_dir is not None and RunFolder(train.run_dir).has_progress()
            for dlg in win.findChildren(__import__("kala_app.error_dialog", fromlist=["ErrorDialog"]).ErrorDialog):
                dlg.close()
        except Exception as e:  # noqa: BLE001 - the pictures are still made, without a run
            print(f"warning: training failed ({e})", file=sys.stderr)
    return trained


def _grab_pages(app, win, out_dir: Path, sizes, compare_runs: bool) -> list[Path]:
    """Every page at every size, as ``<page>-<W>x<H>.png``."""
    from .main_window import PAGES

    paths = []
    for width, height in sizes:
        win.resize(width, height)
        _wait(app, 0.3)
        for key, _title, _cls in PAGES:
            win.show_page(key)
            page = win.pages[key]
            if key == "models" and hasattr(page, "rows"):  # its table is read on a thread when first shown
                deadline = time.monotonic() + 60
                while not page.rows and time.monotonic() < deadline:
                    _wait(app, 0.1)
            if key == "runs" and hasattr(page, "refresh"):
                page.refresh()
                if compare_runs and hasattr(page, "select_runs"):
                    page.select_runs([r.name for r in page.runs])
            _wait(app, 0.4)
            for plot in page.findChildren(__import__("kala_app.widgets.live_plot", fromlist=["LivePlot"]).LivePlot):
                plot.redraw()
            _wait(app, 0.2)
            pix = win.grab()
            p = out_dir / f"{key}-{width}x{height}.png"
            pix.save(str(p), "PNG")
            paths.append(p)
    return paths


def render_all(out_dir: Path, train_steps: int = 60, run: Path | None = None,
               train_budget_s: float = TRAIN_BUDGET_S, sizes=SIZES, chat_and_eval: bool = True,
               also_runs: list[Path] = ()) -> list[Path]:
    """Render every page at every size of ``sizes`` into ``out_dir``; returns the PNG paths.

    ``run``: a finished run folder (``kala train`` / ``kala demo``) to show on the Train and Runs
    pages instead of training a short run here; else a ``train_steps`` run is trained, stopped
    after ``train_budget_s`` seconds if it has not finished by then.
    """
    from PySide6.QtWidgets import QApplication

    from .context import AppContext
    from .main_window import MainWindow

    app = QApplication.instance() or QApplication(["kala-studio"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="kala-screens-"))
    ctx = AppContext.create(data_dir=home / "data", config_dir=home / "config")
    win = MainWindow(ctx, show_quickstart=False)
    win.resize(WIDTH, HEIGHT)
    win.show()
    deadline = time.monotonic() + 90  # the status bar's device probe imports torch
    while "probing" in win.device_label.text() and time.monotonic() < deadline:
        _wait(app, 0.1)

    # Data page: a generated data set
    data_page = win.pages["data"]
    done: list[str] = []
    data_page.dataset_ready.connect(done.append)
    data_page.generate(count=3000, seed=0)
    _say("generating a 3000-example data set")
    ctx.worker.wait_idle(120)
    _wait(app, 0.3)
    data_path = Path(done[0]) if done else None

    train = win.pages["train"]
    trained = _train_page(app, win, data_path, run, also_runs, train_steps, train_budget_s)
    if not trained:
        print("warning: no run could be trained here; the Train and Runs screenshots show no run "
              "(give a finished run with --run)", file=sys.stderr)

    # the doctor panel
    _say("running the doctor")
    train.run_doctor()
    ctx.worker.wait_idle(120)

    final = train.run_dir / "final" if train.run_dir is not None else None
    if chat_and_eval and final is not None and (final / "config.json").is_file():
        _chat_and_evaluate(app, win, final)

    paths = _grab_pages(app, win, out_dir, sizes, bool(also_runs))
    win.ctx.worker.shutdown(30)
    win.close()
    return paths


def _chat_and_evaluate(app, win, final: Path) -> None:
    """One real exchange on the Chat page and a short evaluation of ``final`` on the Evaluate page."""
    ctx = win.ctx
    chat = win.show_page("chat")
    if hasattr(chat, "refresh_models"):
        chat.refresh_models()
    try:
        chat.set_model(str(final))
        chat.new_chat()
        chat.input.setPlainText(CHAT_PROMPT)
        _say("one chat exchange")
        chat.send()
        deadline = time.monotonic() + 120
        while chat.is_generating() and time.monotonic() < deadline:
            _wait(app, 0.05)
    except Exception as e:  # noqa: BLE001 - the picture is a bonus; the page still renders
        print(f"warning: the chat exchange failed ({e})", file=sys.stderr)
    evaluate = win.show_page("evaluate")
    try:
        evaluate.refresh_models()
        evaluate.set_models(final)
        evaluate.tokens_spin.setValue(EVAL_TOKENS)
        _say(f"evaluating on the public suite ({EVAL_TOKENS}-token replies, at most {EVAL_BUDGET_S:.0f} s)")
        if evaluate.run():
            deadline = time.monotonic() + EVAL_BUDGET_S
            while evaluate.is_running() and time.monotonic() < deadline:
                _wait(app, 0.1)
            if evaluate.is_running():
                _say("the evaluation did not finish in time; cancelling it")
                evaluate.cancel()
                ctx.worker.wait_idle(60)
                _wait(app, 0.3)
    except Exception as e:  # noqa: BLE001
        print(f"warning: the evaluation failed ({e})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Render KALA Studio's pages to PNG files (offscreen).")
    ap.add_argument("--out", default="docs/screenshots", help="output folder (default docs/screenshots)")
    ap.add_argument("--train-steps", type=int, default=60, help="steps of the short kala-tiny run shown")
    ap.add_argument("--train-budget", type=float, default=TRAIN_BUDGET_S,
                    help="stop the short run after this many seconds (default %(default)s)")
    ap.add_argument("--run", type=Path, default=None,
                    help="a finished run folder to show on the Train and Runs pages (no training here)")
    ap.add_argument("--size", action="append", default=None, metavar="WxH",
                    help="a window size (repeatable; default %s)" % " and ".join(f"{w}x{h}" for w, h in SIZES))
    ap.add_argument("--no-chat", action="store_true", help="skip the chat exchange and the evaluation")
    ap.add_argument("--also-run", type=Path, action="append", default=[],
                    help="another finished run (repeatable): the Runs page compares them all")
    args = ap.parse_args(argv)
    sizes = tuple(tuple(int(v) for v in s.lower().split("x")) for s in args.size) if args.size else SIZES
    import kala_app  # noqa: F401 - refcount guard before any Qt call

    from .offscreen import use_offscreen

    if os.environ.get("QT_QPA_PLATFORM", "offscreen").startswith("offscreen"):
        use_offscreen(1920, 1080)
    for p in render_all(Path(args.out), args.train_steps, args.run, args.train_budget, sizes,
                        chat_and_eval=not args.no_chat, also_runs=args.also_run):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
