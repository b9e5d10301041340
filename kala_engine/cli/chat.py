"""``kala chat``: talk to a KALA model and see how every token scores against the Five Laws.

    kala chat --model DIR [--prompt TEXT] [--threshold T] [--max-new-tokens N] [--temperature X]
              [--top-k K] [--top-p P] [--repetition-penalty R] [--seed S] [--system TEXT]
              [--layer-scores] [--device D] [--json]

With ``--prompt`` one reply is generated; without it, every line read from stdin is the next
user message of one conversation (``/reset`` starts over, ``/quit`` or end of input stops).

``--json`` prints one JSON object per line: ``{"event": "token", ...}`` for every token (its
text and five law scores), then ``{"event": "prompt_assessment", ...}`` (the scores at the
prompt's last token, the flagged laws and their decision path) and ``{"event": "stop", ...}``
(why the reply ended, the whole text and, for an ethics stop, the explanation). Without
``--json`` the reply streams as text between a prompt-assessment line and a stop line.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "chat",
        help="chat with a KALA model, with per-token law scores and ethics stops",
        description=(
            "Generate replies from a saved KALA model folder. Every token carries its five law "
            "scores; the reply stops when a law falls under its threshold, naming the law."
        ),
    )
    p.add_argument("--model", required=True, metavar="DIR", help="a saved KALA model folder (weights + tokenizer)")
    p.add_argument("--prompt", default=None, metavar="TEXT", help="one message to answer (default: read stdin lines)")
    p.add_argument("--threshold", default=None, metavar="T",
                   help="stop threshold in [0, 1] for every law, or five comma-separated values (Law 0 first); "
                        "default: the constitution's. 0 never stops, 1 stops at once")
    p.add_argument("--max-new-tokens", type=int, default=128, metavar="N", help="reply length limit (default 128)")
    p.add_argument("--temperature", type=float, default=0.0, metavar="X", help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, metavar="K", help="sample from the K likeliest tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass (1 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R", help="> 1 discourages repeats")
    p.add_argument("--seed", type=int, default=None, metavar="S", help="sampling seed (same seed, same reply)")
    p.add_argument("--system", default=None, metavar="TEXT", help="a system message opening the conversation")
    p.add_argument("--layer-scores", action="store_true", help="with --json: per-layer monitor scores per token")
    p.add_argument("--device", default="auto",
                   help="torch device (default auto: the GPU when this PyTorch has kernels for it, else cpu)")
    p.add_argument("--json", action="store_true", help="one JSON object per token, then the assessment and stop")
    p.set_defaults(func=run)


def parse_threshold(text: str | None) -> float | list[float] | None:
    """``"0.5"`` or ``"0.5,0.5,0.4,0.3,0.3"`` -> thresholds; ValueError for anything else."""
    from kala_engine.constitution import resolve_thresholds

    if text is None:
        return None
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        raise ValueError(f"--threshold must be a number in [0, 1] or five of them separated by commas, got {text!r}") from None
    try:
        resolve_thresholds(values)
    except ValueError as e:
        raise ValueError(f"--threshold: {e}") from None
    return values[0] if len(values) == 1 else values


def _r(x: float) -> float:
    return round(float(x), 4)


def _rounded(obj: Any) -> Any:
    """Floats to 4 decimals, all the way down (law scores need no more on a terminal)."""
    if isinstance(obj, float):
        return _r(obj)
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v) for v in obj]
    return obj


def _dump(obj: dict[str, Any]) -> None:
    print(json.dumps(_rounded(obj), ensure_ascii=False), flush=True)


def _token_json(ev, with_layers: bool) -> dict[str, Any]:
    d: dict[str, Any] = {"event": "token", "index": ev.index, "token_id": ev.token_id, "text": ev.text,
                         "law_scores": [_r(s) for s in ev.law_scores]}
    if with_layers and ev.layer_scores is not None:
        d["layer_scores"] = [[_r(s) for s in row] for row in ev.layer_scores]
    return d


def _assessment_json(a) -> dict[str, Any]:
    from kala_engine.generate.explain import law_titles

    return {
        "event": "prompt_assessment",
        "laws": list(law_titles()),
        "law_scores": [_r(s) for s in a.law_scores],
        "layer_scores": [[_r(s) for s in row] for row in a.layer_scores],
        "thresholds": [_r(t) for t in a.thresholds],
        "flagged": [{"law": k, "title": law_titles()[k], "score": _r(a.law_scores[k])} for k in a.flagged],
        "explanation": a.explanation.to_dict() if a.explanation else None,
    }


def _stop_json(result) -> dict[str, Any]:
    d: dict[str, Any] = {"event": "stop", **result.stop.to_dict()}
    if d.get("score") is not None:
        d["score"] = _r(d["score"])
    d.update(
        text=result.text,
        tokens=len(result.token_ids),
        prompt_tokens=result.prompt_tokens,
        dropped_turns=result.dropped_turns,
        min_scores=[_r(s) for s in result.min_scores] if result.min_scores else None,
        explanation=result.explanation.to_dict() if result.stop.kind == "ethics" and result.explanation else None,
        seed=result.seed,
    )
    return d


def _scores_line(scores, flagged=()) -> str:
    from kala_engine.generate.explain import law_titles

    parts = []
    for k, (title, s) in enumerate(zip(law_titles(), scores, strict=True)):
        parts.append(f"{title} {s:.2f}" + (" !" if k in flagged else ""))
    return " | ".join(parts)


def _reply(session, text: str, args, out_json: bool) -> None:
    """Generate one reply in ``session`` and print it as JSON lines or as text."""
    from kala_engine.jobs import TokenEvent

    result = None
    started = False
    for item in session.stream(text):
        if isinstance(item, TokenEvent):
            if out_json:
                _dump(_token_json(item, args.layer_scores))
            else:
                if not started:
                    print("kala> ", end="", flush=True)
                    started = True
                print(item.text, end="", flush=True)
        else:
            result = item
    if out_json:
        _dump(_assessment_json(result.prompt_assessment))
        _dump(_stop_json(result))
        return
    if started:
        print()
    a = result.prompt_assessment
    flagged = ", ".join(a.flagged_titles) or "none"
    print(f"[prompt] {_scores_line(a.law_scores, a.flagged)}  (flagged: {flagged})")
    if result.dropped_turns:
        print(f"[context] full: dropped the {result.dropped_turns} oldest messages")
    lowest = ""
    if result.min_scores:
        lowest = f"  lowest over the reply: {_scores_line(result.min_scores)}"
    n = len(result.token_ids)
    print(f"[stop] {result.stop.message} after {n} token{'' if n == 1 else 's'}.{lowest}")
    if result.stop.kind == "ethics" and result.explanation is not None:
        print("[why] " + "\n      ".join(result.explanation.lines()))


def _read_line() -> tuple[str, bool] | None:
    """The next stdin line as (text, was valid UTF-8); None at end of input. Undecodable bytes
    become U+FFFD instead of ending the chat."""
    from kala_engine.cli.checks import decode_line

    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # a text stream (tests, embedding): already decoded
        line = sys.stdin.readline()
        return None if not line else (line, True)
    raw = buffer.readline()
    return None if not raw else decode_line(raw)


def run(args: argparse.Namespace) -> int:
    from kala_engine.cli.checks import check_device, check_model_folder, check_text

    thresholds = parse_threshold(args.threshold)
    check_text(args.prompt, "--prompt")
    check_text(args.system, "--system")
    if args.device != "auto":
        check_device(args.device)
    if args.prompt is not None and not args.prompt.strip():
        raise ValueError("--prompt is empty: give the message to answer, or leave --prompt out to chat interactively")
    from kala_engine.generate.generation import GenerationSettings
    from kala_engine.generate.session import ChatSession, chat_device, load_chat_model

    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens, thresholds=thresholds, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
        output_layer_scores=args.layer_scores,
    )
    settings.check()  # bad settings fail before the model is loaded
    check_model_folder(args.model, "--model", tokenizer=True)
    model, tokenizer = load_chat_model(args.model, device=chat_device(args.device))
    session = ChatSession(model, tokenizer, system=args.system, settings=settings)

    if args.prompt is not None:
        _reply(session, args.prompt, args, args.json)
        return 0

    interactive = sys.stdin.isatty()
    if interactive:
        print("KALA chat: type a message; /reset starts over, /quit (or Ctrl-D) leaves.", file=sys.stderr)
    while True:
        if interactive:
            print("you> ", end="", file=sys.stderr, flush=True)
        got = _read_line()
        if got is None:
            break
        line, valid = got
        if not valid:
            print("kala chat: warning: that line was not valid UTF-8; the bad bytes were replaced by U+FFFD",
                  file=sys.stderr, flush=True)
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        if text == "/reset":
            session.reset()
            print("(conversation cleared)", file=sys.stderr)
            continue
        try:
            _reply(session, text, args, args.json)
        except ValueError as e:  # e.g. a message longer than the context: say so, keep chatting
            print(f"kala chat: error: {e}", file=sys.stderr)
    return 0
