"""Screenshots of a real distillation run (issue 18): its curves on the Train page (Distillation
tab) and the student's layer x law heatmap on the Runs page.

    QT_QPA_PLATFORM=offscreen .venv/bin/python bench/distill_screenshots.py RUN_DIR [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="a finished `kala distill` run folder")
    ap.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    ap.add_argument("--heatmap-run", type=Path, default=None,
                    help="the run whose final model the Runs page shows (default: RUN_DIR)")
    args = ap.parse_args(argv)

    import kala_app  # noqa: F401 - the PySide6 guard
    from kala_app.offscreen import use_offscreen

    use_offscreen(1920, 1080)
    from PySide6.QtWidgets import QApplication

    from kala_app.context import AppContext
    from kala_app.main_window import MainWindow
    from kala_app.screenshots import _show_finished_run, _wait

    app = QApplication.instance() or QApplication(["kala-studio"])
    home = Path(tempfile.mkdtemp(prefix="kala-distill-screens-"))
    ctx = AppContext.create(data_dir=home / "data", config_dir=home / "config")
    run = ctx.runs_dir / args.run.name
    shutil.copytree(args.run, run, ignore=shutil.ignore_patterns("checkpoints", ".lock"))
    shown = run
    if args.heatmap_run is not None:
        shown = ctx.runs_dir / args.heatmap_run.name
        shutil.copytree(args.heatmap_run, shown, ignore=shutil.ignore_patterns("checkpoints", ".lock"))
    win = MainWindow(ctx, show_quickstart=False)
    win.resize(1440, 900)
    win.show()
    _wait(app, 1.0)
    args.out.mkdir(parents=True, exist_ok=True)

    train = win.pages["train"]
    win.show_page("train")
    _show_finished_run(train, run)
    train.aux_tabs.setCurrentWidget(train.ethics_box.distill_plot)
    train.aux_tabs.setMaximumHeight(320)
    train.aux_tabs.parent().setSizes([240, 240, 320])
    _wait(app, 0.8)
    for p in train.plots:
        p.redraw()
    _wait(app, 0.3)
    train.grab().save(str(args.out / "distill-train.png"))

    runs = win.pages["runs"]
    win.show_page("runs")
    runs.refresh()
    runs.select_run(shown.name)
    runs.load_selected_curves()
    _wait(app, 0.8)
    runs.grab().save(str(args.out / "runs-layer-heatmap.png"))
    print("\n".join(str(args.out / n) for n in ("distill-train.png", "runs-layer-heatmap.png")))
    ctx.worker.shutdown(timeout_s=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
