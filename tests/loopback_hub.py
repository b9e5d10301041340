"""A loopback stand-in for the Hugging Face hub, for tests that must never reach the internet.

It answers the endpoints huggingface_hub 2.4 calls for a model download, the way the hub does:

* ``GET /api/models/{repo}/revision/{rev}[?blobs=true]`` -> ``{"id", "sha", "siblings": [...]}``
  (``HfApi.model_info`` / ``repo_info``);
* ``GET /api/models/{repo}/tree/{rev}?recursive=...`` -> ``[{"type": "file", "path", "size", "oid",
  "lfs"?}]`` (``list_repo_tree``, one page, no ``Link`` header);
* ``HEAD|GET /{repo}/resolve/{rev}/{file}`` with ``X-Repo-Commit``, ``ETag`` (sha256 for "LFS"
  files - anything ending in .safetensors/.bin/.parquet/.gz - a sha1 otherwise), ``Content-Length``,
  ``Accept-Ranges`` and ``Range: bytes=N-`` answered with 206;
* 404 with ``X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound`` like the hub.

Test hooks: ``drop_once`` (file names whose first GET sends half the bytes, then closes the
socket), ``pause_at`` (file -> (byte offset, callback): called once when that many bytes were sent,
then the server waits ``pause_s`` before sending the rest) and ``requests`` (every request seen,
with its Range header). Datasets are served the same way under ``/api/datasets`` and ``/datasets/``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_LFS = (".safetensors", ".bin", ".parquet", ".gz", ".pt")


class LoopbackHub:
    def __init__(self) -> None:
        # (kind, repo_id) -> {revision: (commit, {path: bytes})}
        self.repos: dict[tuple[str, str], dict[str, tuple[str, dict[str, bytes]]]] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.drop_once: set[str] = set()
        self.pause_at: dict[str, tuple[int, object]] = {}
        self.pause_s = 0.5
        self.chunk = 4096
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ content
    def add_repo(self, repo_id: str, files: dict[str, bytes], revision: str = "main", kind: str = "models") -> str:
        h = hashlib.sha1(f"{kind}/{repo_id}@{revision}".encode())
        for name in sorted(files):
            h.update(name.encode() + b"\0" + files[name])
        commit = h.hexdigest()
        self.repos.setdefault((kind, repo_id), {})[revision] = (commit, dict(files))
        return commit

    @staticmethod
    def etag(path: str, data: bytes) -> str:
        return hashlib.sha256(data).hexdigest() if path.endswith(_LFS) else hashlib.sha1(data).hexdigest()

    def _lookup(self, kind: str, repo_id: str, rev: str):
        revs = self.repos.get((kind, repo_id))
        if revs is None:
            return None, "RepoNotFound"
        if rev in revs:
            return revs[rev], None
        for commit, files in revs.values():  # a commit hash works as a revision
            if commit == rev:
                return (commit, files), None
        return None, "RevisionNotFound"

    # ------------------------------------------------------------------ server
    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LoopbackHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._handle(self, head=True)

            def do_GET(self):
                hub._handle(self, head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ------------------------------------------------------------------ handlers
    def _json(self, h, obj, status=200, head=False):
        body = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _error(self, h, code: str, head: bool):
        body = json.dumps({"error": code}).encode()
        h.send_response(404)
        h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(0 if head else len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _handle(self, h, head: bool) -> None:
        parts = urlsplit(h.path)
        path = unquote(parts.path)
        self.requests.append((h.command, path, h.headers.get("Range")))
        segs = [s for s in parts.path.split("/") if s]
        segs = [unquote(s) for s in segs]
        if len(segs) == 4 and segs[0] == "api" and segs[1] in ("models", "datasets"):
            segs = [*segs, "revision", "main"]  # /api/models/{repo}: the default branch
        if len(segs) >= 6 and segs[0] == "api" and segs[1] in ("models", "datasets"):
            kind, repo_id, what, rev = segs[1], f"{segs[2]}/{segs[3]}", segs[4], segs[5]
            found, err = self._lookup(kind, repo_id, rev)
            if err:
                return self._error(h, err, head)
            commit, files = found
            if what == "revision":
                siblings = [{"rfilename": p, "size": len(d)} for p, d in sorted(files.items())]
                return self._json(h, {"id": repo_id, "sha": commit, "siblings": siblings, "private": False}, head=head)
            if what == "tree":
                entries = []
                for p, d in sorted(files.items()):
                    e = {"type": "file", "path": p, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                    if p.endswith(_LFS):
                        e["lfs"] = {"oid": hashlib.sha256(d).hexdigest(), "size": len(d), "pointerSize": 134}
                    entries.append(e)
                return self._json(h, entries, head=head)
            return self._error(h, "EntryNotFound", head)
        kind = "models"
        if segs and segs[0] == "datasets":
            kind, segs = "datasets", segs[1:]
        if len(segs) >= 5 and segs[2] == "resolve":
            repo_id, rev, fname = f"{segs[0]}/{segs[1]}", segs[3], "/".join(segs[4:])
            found, err = self._lookup(kind, repo_id, rev)
            if err:
                return self._error(h, err, head)
            commit, files = found
            if fname not in files:
                return self._error(h, "EntryNotFound", head)
            return self._file(h, fname, files[fname], commit, head)
        return self._error(h, "RepoNotFound", head)

    def _file(self, h, fname: str, data: bytes, commit: str, head: bool) -> None:
        start = 0
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0] or 0)
        body = data[start:]
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", commit)
        h.send_header("ETag", f'"{self.etag(fname, data)}"')
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(body)))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Content-Type", "application/octet-stream")
        h.end_headers()
        if head:
            return
        if fname in self.drop_once and not start:
            self.drop_once.discard(fname)
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            import socket

            h.connection.shutdown(socket.SHUT_RDWR)
            return
        pause = self.pause_at.get(fname)
        sent = start
        for i in range(0, len(body), self.chunk):
            piece = body[i: i + self.chunk]
            try:
                h.wfile.write(piece)
                h.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return
            sent += len(piece)
            if pause is not None and sent >= pause[0]:
                self.pause_at.pop(fname, None)
                pause[1]()
                pause = None
                time.sleep(self.pause_s)


def tiny_neox_files(vocab_size: int = 320, hidden_size: int = 64, model_type: str = "gpt_neox",
                    weights: str = "safetensors", model_vocab: int | None = None) -> dict[str, bytes]:
    """Files of a tiny GPT-NeoX checkpoint and its BPE tokenizer, built here (never downloaded).

    ``weights="bin"`` writes only ``pytorch_model.bin`` (a pickle-only repo); ``model_type`` other
    than gpt_neox rewrites config.json (a repo KALA must refuse); ``model_vocab`` pads the embeddings
    (a bigger file, e.g. more than huggingface_hub's 10 MB write chunk).
    """
    import tempfile
    from pathlib import Path

    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from kala_engine.data.generate import generate_dataset
    from kala_engine.data.tokenizer import record_texts, train_tokenizer

    tok = train_tokenizer(record_texts(generate_dataset(200, 0)), vocab_size=vocab_size)
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=max(len(tok), model_vocab or 0), hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=2 * hidden_size, rotary_pct=0.25, max_position_embeddings=512,
                        use_parallel_residual=True, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id)
    model = GPTNeoXForCausalLM(cfg)
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        tok.save_pretrained(d)
        if weights == "bin":
            from safetensors.torch import load_file

            torch.save(load_file(str(Path(d) / "model.safetensors")), Path(d) / "pytorch_model.bin")
            (Path(d) / "model.safetensors").unlink()
        if model_type != "gpt_neox":
            c = json.loads((Path(d) / "config.json").read_text())
            c["model_type"] = model_type
            (Path(d) / "config.json").write_text(json.dumps(c))
        files = {p.name: p.read_bytes() for p in Path(d).iterdir() if p.is_file()}
    files["README.md"] = b"# tiny test model\n"
    return files


def point_huggingface_hub_at(monkeypatch, url: str, home) -> None:
    """Point this process's huggingface_hub at ``url`` with an empty cache under ``home`` (read at import,
    so the constants are patched; subprocesses get HF_ENDPOINT / HF_HOME instead)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(home / ".agent_harnesses.json"))
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16384)  # resume granularity (10 MB by default)
