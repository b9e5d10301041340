"""The quickstart, clicked as a new user clicks it: generate -> train kala-tiny (for real, a tiny
run) -> a chat with the new model. Before the fix the worker cleared the training job's owner
after the data job's ``finished`` handler had started it: empty plots, dead Pause/Cancel,
"finished at step 1" and an "idle" status bar while the run went on out of sight."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt, QTimer

from kala_app.context import AppContext
from kala_app.main_window import MainWindow


@pytest.fixture
def window(qtbot, studio_home):
    ctx = AppContext.create()
    # a tiny real run: the chain is the one the button starts, only smaller
    ctx.settings.setValue("quickstart/count", 150)
    ctx.settings.setValue("quickstart/steps", 6)
    ctx.settings.setValue("quickstart/batch_size", 4)
    ctx.settings.setValue("quickstart/eval_every", 3)
    w = MainWindow(ctx, show_quickstart=True)
    qtbot.addWidget(w)
    w.show()
    yield w
    ctx.worker.shutdown(timeout_s=60)


def test_quickstart_button_trains_visibly_and_ends_in_a_chat_with_the_new_model(qtbot, window):
    w = window
    worker, train, chat = w.ctx.worker, w.pages["train"], w.pages["chat"]
    seen: dict = {"pause": [], "cancel": [], "start": [], "status": [], "paused": [], "owner": []}

    def on_step(ev):
        seen["pause"].append(train.pause_button.isEnabled() or worker.is_paused())
        seen["cancel"].append(train.cancel_button.isEnabled())
        seen["start"].append(train.start_button.isEnabled())
        seen["status"].append(w.job_label.text())
        seen["owner"].append(worker.owner is train)
        if ev.step == 2 and not seen["paused"]:  # Pause really pauses the job, Resume continues it
            qtbot.mouseClick(train.pause_button, Qt.MouseButton.LeftButton)
            seen["paused"].append(worker.is_paused() and train.resume_button.isEnabled())
            QTimer.singleShot(300, lambda: qtbot.mouseClick(train.resume_button, Qt.MouseButton.LeftButton))

    worker.step.connect(on_step)
    assert w.banner.isVisible()
    qtbot.mouseClick(w.banner.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.current_page_key() == "chat" or (not worker.is_busy() and train.run_dir is not None
                                                               and train._job_kind == ""), timeout=180_000)
    qtbot.waitUntil(lambda: not worker.is_busy(), timeout=10_000)

    run_dir = Path(train.run_dir)
    assert (run_dir / "final" / "config.json").is_file(), train.log_view.toPlainText()[-2000:]
    # every step reached the page while the run went on, with Pause and Cancel usable
    assert len(seen["pause"]) == 6
    assert all(seen["owner"]) and all(seen["pause"]) and all(seen["cancel"]) and not any(seen["start"])
    assert seen["paused"] == [True]
    assert all(s.startswith("running: training") for s in seen["status"]), seen["status"]
    # the plots received the points; the progress says where the run ended
    assert train.lm_plot.curve_points("lm") == 6
    assert train.ethics_plot.curve_points("ethics") == 6
    assert train.lr_plot.curve_points("lr") == 6
    assert train.lm_plot.curve_points("lm_val") >= 1
    assert train.progress.value() == train.progress.maximum() == 6
    assert "finished at step 6" in train.progress.text()
    # the chain ends on the Chat page, in a chat with the new model
    assert w.current_page_key() == "chat"
    assert chat.model_path() == str(run_dir / "final")
    assert chat.chat_id is not None and chat.store.get_chat(chat.chat_id).model == str(run_dir / "final")
    assert chat.send_button.isEnabled()
    assert w.job_label.text() == "idle"
    # the Runs page lists the run as finished, not "interrupted"
    runs = w.pages["runs"]
    runs.refresh()
    assert [(r.path, r.status) for r in runs.runs] == [(run_dir, "finished")]
