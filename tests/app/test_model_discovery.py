"""Every model under the data folder is found and named by its run, whatever layout the engine
wrote - ``kala demo``'s ``runs/demo-…/run/final`` included - on the Runs, Chat and Evaluate pages,
and in evaluation reports (which record the model's path and run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from kala_engine.train import runs as engine_runs

DEMO = "demo-20261129-234242"


def lay_out_run(run_dir: Path, steps: int = 30, final: bool = True) -> Path:
    """The files kala_engine.train.trainer writes into a run folder (model weights left out)."""
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"config": {"base": "kala-tiny", "data": str(run_dir / "d.jsonl"),
                                                             "max_steps": steps}, "status": "finished"}))
    with (run_dir / "metrics.jsonl").open("w") as f:
        for s in range(1, steps + 1):
            f.write(json.dumps({"step": s, "lm_loss": 3.0 - s / 100, "ethics_loss": 0.2}) + "\n")
    (run_dir / "tokenizer").mkdir()
    ck = run_dir / "checkpoints" / f"step-{steps}"
    ck.mkdir(parents=True)
    (ck / "meta.json").write_text(json.dumps({"step": steps}))  # a resume checkpoint: not a chat model
    if final:
        (run_dir / "final").mkdir()
        (run_dir / "final" / "config.json").write_text(json.dumps({"model_type": "kala"}))
    return run_dir


def lay_out_demo(runs_dir: Path, name: str = DEMO) -> Path:
    """``kala demo``'s layout (kala_engine.cli.train.cmd_demo): <runs>/demo-<time>/{data.jsonl, run/}."""
    root = runs_dir / name
    lay_out_run(root / "run")
    (root / "data.jsonl").write_text("{}\n")
    return root / "run" / "final"


def test_demo_layout_is_listed_by_name_on_chat_evaluate_and_runs(qtbot, ctx):
    from kala_app.pages.chat import ChatPage
    from kala_app.pages.evaluate import EvaluatePage
    from kala_app.pages.runs import RunsPage

    final = lay_out_demo(ctx.runs_dir)
    lay_out_run(ctx.runs_dir / "20261130-010000-kala-tiny")
    label = f"{DEMO} · final"

    chat = ChatPage(ctx)
    qtbot.addWidget(chat)
    chat.show()
    items = {chat.model_combo.itemText(i): chat.model_combo.itemData(i) for i in range(chat.model_combo.count())}
    assert items[label] == str(final)
    assert items["20261130-010000-kala-tiny · final"] == str(ctx.runs_dir / "20261130-010000-kala-tiny" / "final")
    assert len(items) == 2  # resume checkpoints without a config.json are not chat models
    i = chat.model_combo.findText(label)
    assert chat.model_combo.itemData(i, Qt.ItemDataRole.ToolTipRole) == str(final)

    ev = EvaluatePage(ctx)
    qtbot.addWidget(ev)
    ev.show()
    i = ev.model_a.findText(label)
    assert i >= 0 and ev.model_a.itemData(i) == str(final)
    assert ev.model_a.itemData(i, Qt.ItemDataRole.ToolTipRole) == str(final)

    ctx.pages["chat"] = chat
    runs = RunsPage(ctx)
    qtbot.addWidget(runs)
    runs.show()
    names = {runs.table.item(r, 0).text(): runs.table.item(r, 1).text() for r in range(runs.table.rowCount())}
    assert names == {DEMO: "finished", "20261130-010000-kala-tiny": "finished"}
    assert runs.select_run(DEMO)
    row = next(r for r in range(runs.table.rowCount()) if runs.table.item(r, 0).text() == DEMO)
    assert runs.table.item(row, 0).toolTip() == str(final.parent)
    assert runs.load_selected_curves() == 30
    runs.chat_selected()  # "Chat with it"
    assert chat.model_path() == str(final)
    assert chat.model_combo.currentText() == label


def test_a_demo_run_reached_by_browse_is_named_by_its_run(qtbot, ctx, tmp_path):
    from kala_app.pages.chat import ChatPage

    elsewhere = lay_out_demo(tmp_path / "elsewhere")  # not under the data folder's runs
    chat = ChatPage(ctx)
    qtbot.addWidget(chat)
    chat.set_model(elsewhere)
    assert chat.model_combo.currentText() == f"{DEMO} · final"  # was "run · final"
    assert chat.model_combo.itemData(chat.model_combo.currentIndex(), Qt.ItemDataRole.ToolTipRole) == str(elsewhere)


def test_engine_discovery_names_every_layout(tmp_path):
    root = tmp_path / "runs"
    lay_out_demo(root)
    lay_out_run(root / "sweeps" / "lr-1e-3")
    lay_out_run(root / "broken", final=False)
    (root / "demo-x.tmp").mkdir(parents=True)  # an unfinished rename is not a run
    named = sorted(engine_runs.run_name(d, root) for d in engine_runs.find_run_dirs(root))
    assert named == ["broken", DEMO, "sweeps/lr-1e-3"]
    labels = sorted(m.label for m in engine_runs.find_models(root))
    assert labels == [f"{DEMO} · final", "sweeps/lr-1e-3 · final"]
    ck = root / "broken" / "checkpoints" / "step-30"
    (ck / "config.json").write_text("{}")  # a loadable checkpoint is a model too
    assert engine_runs.describe_model(ck, root).label == "broken · step-30"
    assert engine_runs.describe_model(tmp_path / "my-model", root).label == "my-model"


@pytest.mark.parametrize("via", ["page", "cli"])
def test_reports_record_the_model_path_and_its_run(qtbot, ctx, tmp_path, via, monkeypatch, capsys):
    from kala_engine.evaluate.backend import KALABackend

    final = lay_out_demo(ctx.runs_dir)
    if via == "page":
        from kala_app.pages.evaluate import EvaluatePage
        from tests.app.test_evaluate_page import FakeBackend

        def backend(path):
            b = FakeBackend("x", 1.0)
            b.model_dir = Path(path)  # what KALABackend keeps
            return b

        page = EvaluatePage(ctx, backend_factory=backend)
        qtbot.addWidget(page)
        page.show()
        page.set_models(final)
        with qtbot.waitSignal(page.evaluation_finished, timeout=60000):
            assert page.run()
        out = page.save_report(tmp_path / "report")
    else:
        from kala_engine.cli import eval as cli_eval
        from kala_engine.cli import main as cli
        from tests.app.test_evaluate_page import FakeBackend

        def make(model_dir, device):
            b = FakeBackend("x", 1.0)
            b.model_dir = Path(model_dir)
            return b

        monkeypatch.setattr(cli_eval, "make_backend", make)
        out = tmp_path / "report"
        assert cli.main(["eval", "--model", str(final), "--out", str(out)]) == 0
        assert f"{DEMO} · final" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    m = report["models"][0]
    assert (m["model"], m["path"], m["run"]) == (f"{DEMO} · final", str(final), DEMO)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert f"model {DEMO} · final: run {DEMO}, {final}" in md
    first = json.loads((out / "results.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert first["model_path"] == str(final)
    # the real backend names a model folder by its run too (it loads the weights only when used)
    assert KALABackend(final).name == f"{DEMO} · final"


def test_deleting_a_demo_run_removes_its_demo_folder_only(tmp_path):
    from kala_app.runs import delete_run, list_runs

    root = tmp_path / "runs"
    lay_out_demo(root)
    lay_out_run(root / "sweeps" / "run")  # a generic leaf beside another run: only itself goes
    lay_out_run(root / "sweeps" / "lr-1e-3")
    by_name = {r.name: r for r in list_runs(root)}
    assert set(by_name) == {DEMO, "sweeps", "sweeps/lr-1e-3"}
    delete_run(by_name[DEMO], root)
    assert not (root / DEMO).exists()  # its data.jsonl went with it
    delete_run(by_name["sweeps"], root)
    assert not (root / "sweeps" / "run").exists() and (root / "sweeps" / "lr-1e-3").is_dir()
    with pytest.raises(ValueError, match="not inside the runs folder"):
        delete_run(tmp_path / "elsewhere", root)
