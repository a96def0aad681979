"""The managed backend as a child process of Krita: started on loopback with a fresh token, followed
through its console log, restarted once if it dies, stopped without leaving an orphan.

Nothing here blocks: ``poll`` is called from the docker's timer and reads only what the server wrote
since. The server is started with ``--port 0`` (it picks a free port and says which) and
``--exit-with-stdin``: this process holds the other end of its stdin, so when Krita ends in any way,
a crash included, the server shuts down on its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import BinaryIO

LISTENING = "InstantStyle backend listening on "
READY = "InstantStyle backend ready on "
LOAD_FAILED = "error: the model could not be loaded: "


class ServerState(str, Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class ServerCommand:
    """How to start the backend: its Python, the ``serve`` arguments for the model, where its code is."""

    python: list[str]
    arguments: list[str] = field(default_factory=list)
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)


class ManagedServer:
    def __init__(
        self,
        command: ServerCommand,
        log_path: Path,
        state_path: Path,
        restarts: int = 1,
        spawn: Callable[..., subprocess.Popen] = subprocess.Popen,
    ) -> None:
        self.command = command
        self.log_path = log_path
        self.state_path = state_path
        self.restarts_allowed = restarts
        self._spawn = spawn
        self.process: subprocess.Popen | None = None
        self.state = ServerState.STOPPED
        self.url: str | None = None
        self.token: str | None = None
        self.message = ""
        """One line for the docker: what the server does now, or why it failed."""
        self.restarts = 0
        self._read = 0
        self._log: BinaryIO | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the server (a fresh token, a free port chosen by the server). Returns at once."""
        if self.process is not None and self.process.poll() is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._close_log()
        self._log = self.log_path.open("ab")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._log.write(f"\n--- started by the Krita plugin at {stamp}\n".encode())
        self._log.flush()
        self._read = self.log_path.stat().st_size
        self.token = secrets.token_urlsafe(24)
        self.url = None
        arguments = [*self.command.python, "-m", "backend", "serve", "--port", "0", "--exit-with-stdin"]
        # Krita's own Python settings (an AppImage's PYTHONHOME, say) must not reach the backend's.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env = {
            **inherited,
            **self.command.env,
            "INSTANTSTYLE_TOKEN": self.token,
            "PYTHONUNBUFFERED": "1",
            "PYTHONUTF8": "1",  # its log is read as UTF-8 here, whatever the locale (Windows: cp1252)
        }
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if sys.platform == "win32" else 0
        try:
            self.process = self._spawn(
                [*arguments, *self.command.arguments],
                stdin=subprocess.PIPE,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self.command.cwd,
                env=env,
                creationflags=flags,
            )
        except OSError as error:  # the backend's Python is missing or cannot run
            self.process = None
            self.state, self.message = ServerState.FAILED, f"could not start the backend: {error}"
            self._close_log()
            return
        self.state, self.message = ServerState.STARTING, "starting the backend"

    def poll(self) -> ServerState:
        """Follow the server: read its new console lines, notice when it died (restart it once)."""
        if self.process is None:
            return self.state
        for line in self._new_lines():
            self._note(line)
        code = self.process.poll()
        if code is not None and self.state is not ServerState.STOPPED:
            self._died(code)
        return self.state

    def stop(self, seconds: float = 5.0) -> None:
        """Stop the server: close its stdin (it shuts down as for SIGTERM), then terminate, then kill."""
        process, self.process = self.process, None
        self.state, self.message = ServerState.STOPPED, "stopped"
        if process is not None and process.stdin is not None:
            process.stdin.close()  # also a dead one's: the pipe is a handle of this process
        if process is not None and process.poll() is None:
            try:
                process.wait(seconds)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(seconds)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(seconds)
        self._close_log()
        self._forget()

    # ------------------------------------------------------------------ what the console says

    def last_lines(self, count: int = 5) -> list[str]:
        """The log's last lines (the *Show log* button shows all of it)."""
        try:
            text = self.log_path.read_bytes()[-16384:].decode("utf-8", "replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if line.strip()][-count:]

    def _new_lines(self) -> list[str]:
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._read)
                data = log.read()
        except OSError:
            return []
        complete = data.rfind(b"\n") + 1  # a line still being written is read next time
        self._read += complete
        return data[:complete].decode("utf-8", "replace").splitlines()

    def _note(self, line: str) -> None:
        if line.startswith(LISTENING):
            self.url = line[len(LISTENING) :].split(";")[0].strip()
            self.state, self.message = ServerState.LOADING, "loading the model"
            self._remember()
        elif line.startswith(READY):
            where = line[len(READY) :].split(" ", 1)[-1].strip("() ")  # "cuda, memory tier full"
            self.state, self.message = ServerState.READY, f"running ({where})"
        elif line.startswith(LOAD_FAILED):
            self.state = ServerState.FAILED
            self.message = (
                "the model could not be loaded: " + line[len(LOAD_FAILED) :].split(" (the server")[0]
            )

    def _died(self, code: int) -> None:
        self._forget()
        if self.process is not None and self.process.stdin is not None:
            self.process.stdin.close()
        if self.restarts < self.restarts_allowed:
            self.restarts += 1
            self.start()
            self.message = f"the backend stopped (exit code {code}); restarted it"
            return
        tail = " | ".join(self.last_lines(3))
        self.process = None
        self.state = ServerState.FAILED
        self.message = f"the backend stopped (exit code {code})" + (f": {tail}" if tail else "")
        self._close_log()

    # ------------------------------------------------------------------ a second Krita reuses it

    def _remember(self) -> None:
        assert self.process is not None
        state = {"pid": self.process.pid, "url": self.url, "token": self.token}
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.state_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(state), encoding="utf-8")
        if os.name == "posix":
            temporary.chmod(0o600)  # the token: this user's only
        temporary.replace(self.state_path)

    def _forget(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def running_server(state_path: Path, alive: Callable[[int], bool] | None = None) -> tuple[str, str] | None:
    """The address and token of a managed server another Krita started and still runs, if any."""
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        pid, url, token = int(state["pid"]), str(state["url"]), str(state["token"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (url, token) if (alive or process_alive)(pid) else None


def process_alive(pid: int) -> bool:
    if sys.platform == "win32":  # no signal 0 there: ask the process table
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        ctypes.windll.kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
