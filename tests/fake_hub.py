"""A Hugging Face hub on loopback, serving local folders as repos: real downloads in tests, no network.

``huggingface_hub`` (and through it diffusers and transformers) talks to it when ``HF_ENDPOINT``
points here. It answers what downloading needs: a repo's file list with sizes
(``/api/models/...``), and each file by ``HEAD``/``GET`` on ``/{repo}/resolve/{revision}/{path}``
with the commit and ETag headers the client expects. Files can be made to fail, to test what a
broken download does; every request is logged for assertions.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "f" * 40


class FakeHub:
    def __init__(self, repos: dict[str, Path]) -> None:
        self.repos = repos
        self.failing: set[tuple[str, str]] = set()
        """(repo_id, path) pairs answered with 500, as a network failure mid-download would be."""
        self.held: set[tuple[str, str]] = set()
        """(repo_id, path) pairs whose body is sent only once ``release`` is set: a slow download."""
        self.release = threading.Event()
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def files(self, repo_id: str) -> dict[str, Path]:
        root = self.repos[repo_id]
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}

    def downloaded(self) -> list[tuple[str, str]]:
        """(repo_id, path) of every file body sent, in order."""
        return [
            (repo, path)
            for method, target in self.requests
            if method == "GET"
            for repo, path in [_split(target)]
            if path
        ]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                hub.requests.append((self.command, self.path))
                path = unquote(urlparse(self.path).path)
                if path.startswith("/api/models/"):
                    return self._info(path.removeprefix("/api/models/"))
                repo_id, file = _split(path)
                files = hub.files(repo_id) if repo_id in hub.repos else {}
                if file not in files:
                    return self._send(404, b'{"error": "Entry not found"}', {"X-Error-Code": "EntryNotFound"})
                if (repo_id, file) in hub.failing:
                    return self._send(500, b'{"error": "simulated failure"}', {})
                if body and (repo_id, file) in hub.held:
                    hub.release.wait(60)
                data = files[file].read_bytes()
                headers = {
                    "X-Repo-Commit": COMMIT,
                    "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                    "Content-Type": "application/octet-stream",
                }
                self._send(200, data if body else b"", headers, length=len(data))

            def _info(self, rest: str) -> None:
                parts = rest.split("/")
                repo_id = "/".join(parts[:2])
                if repo_id not in hub.repos:
                    return self._send(
                        404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}
                    )
                if len(parts) > 3 and parts[2] == "tree":  # tree/{revision}/{folder}: one folder's files
                    return self._tree(repo_id, "/".join(parts[4:]))
                siblings = [
                    {"rfilename": name, "size": path.stat().st_size}
                    for name, path in hub.files(repo_id).items()
                ]
                info = {
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": COMMIT,
                    "siblings": siblings,
                    "private": False,
                }
                self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"})

            def _tree(self, repo_id: str, folder: str) -> None:
                """A folder's listing (transformers lists ``additional_chat_templates`` when it loads a
                tokenizer); a folder the repo lacks is the hub's 404."""
                prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
                entries = [
                    {"type": "file", "path": name, "size": path.stat().st_size, "oid": COMMIT}
                    for name, path in hub.files(repo_id).items()
                    if name.startswith(prefix) and "/" not in name[len(prefix) :]
                ]
                if prefix and not entries:
                    return self._send(404, b'{"error": "Entry not found"}', {"X-Error-Code": "EntryNotFound"})
                self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"})

            def _send(
                self, status: int, data: bytes, headers: dict[str, str], length: int | None = None
            ) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data) if length is None else length))
                self.end_headers()
                if data and self.command != "HEAD":
                    self.wfile.write(data)

        return Handler


def _split(path: str) -> tuple[str, str]:
    """``/owner/name/resolve/rev/some/file`` as (``owner/name``, ``some/file``); ("", "") otherwise."""
    parts = unquote(urlparse(path).path).strip("/").split("/")
    if len(parts) < 5 or parts[2] != "resolve":
        return "", ""
    return "/".join(parts[:2]), "/".join(parts[4:])
