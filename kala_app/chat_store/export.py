"""A chat exported as JSON (every token's five law scores, per-layer scores when recorded) or as a
readable Markdown transcript with a table of each reply's token scores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kala_engine.constitution import load_constitution

from .schema import COMPLETE


def export_json(store: Any, chat_id: int) -> dict:
    """The whole chat with every token's five law scores (and per-layer scores when recorded)."""
    chat = store.get_chat(chat_id)
    laws = [{"index": law.index, "key": law.key, "title": law.title} for law in load_constitution()]
    msgs = []
    for m in store.messages(chat_id):
        d: dict[str, Any] = {"role": m.role, "content": m.content, "status": m.status, "created": m.created}
        if m.model:
            d["model"] = m.model
        if m.assessment is not None:
            d["assessment"] = m.assessment
        if m.stop is not None:
            d["stop"] = m.stop
        if m.explanation is not None:
            d["explanation"] = m.explanation
        if m.thresholds is not None:
            d["thresholds"] = m.thresholds
        if m.role == "assistant":
            d["tokens"] = [
                {"index": t.index, "token_id": t.token_id, "text": t.text, "law_scores": list(t.law_scores),
                 **({"layer_scores": [list(r) for r in t.layer_scores]} if t.layer_scores else {})}
                for t in m.tokens
            ]
        msgs.append(d)
    return {"format": "kala-chat", "version": 1, "title": chat.title, "model": chat.model,
            "settings": chat.settings, "created": chat.created, "laws": laws, "messages": msgs}

def export_markdown(store: Any, chat_id: int) -> str:
    """A readable transcript; each reply is followed by a table of its tokens' law scores."""
    chat = store.get_chat(chat_id)
    con = load_constitution()
    lines = [f"# {chat.title}", ""]
    if chat.model:
        lines.append(f"- Model: `{chat.model}`")
    s = chat.settings
    lines.append("- Settings: " + ", ".join(f"{k} = {v}" for k, v in s.items()))
    lines += ["- Laws: " + "; ".join(f"L{law.index} = {law.title}" for law in con), ""]
    for m in store.messages(chat_id):
        who = {"user": "User", "assistant": "KALA", "system": "System"}.get(m.role, m.role)
        lines += [f"## {who}", "", m.content or "_(empty)_", ""]
        if m.assessment and m.assessment.get("law_scores"):
            sc = m.assessment["law_scores"]
            lines += ["Prompt assessment: " + ", ".join(f"L{i} {v:.2f}" for i, v in enumerate(sc)), ""]
        if m.role == "assistant":
            if m.status != COMPLETE:
                lines += [f"_Status: {m.status}_", ""]
            if m.stop and m.stop.get("message"):
                lines += [f"> **Stopped:** {m.stop['message']}", ""]
            if m.tokens:
                lines += ["<details><summary>Token law scores</summary>", "",
                          "| # | token | " + " | ".join(f"L{law.index}" for law in con) + " | min |",
                          "|---:|---|" + "---:|" * (len(con) + 1)]
                for t in m.tokens:
                    tok = t.text.replace("|", "\\|").replace("\n", "\\n").replace("`", "'")
                    lines.append(f"| {t.index} | `{tok}` | " + " | ".join(f"{v:.3f}" for v in t.law_scores)
                                 + f" | {t.min_score:.3f} |")
                lines += ["", "</details>", ""]
    return "\n".join(lines).rstrip() + "\n"

def save_export(store: Any, chat_id: int, path: str | Path) -> Path:
    """Write the chat as Markdown (``.md``) or JSON (``.json``), chosen by the file suffix."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        text = json.dumps(export_json(store, chat_id), ensure_ascii=False, indent=1)
    elif path.suffix.lower() in (".md", ".markdown"):
        text = export_markdown(store, chat_id)
    else:
        raise ValueError(f"{path}: export as .md (Markdown) or .json (with every token's scores)")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


__all__ = ["export_json", "export_markdown", "save_export"]
