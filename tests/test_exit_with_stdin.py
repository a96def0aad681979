"""``serve --exit-with-stdin``: a launcher that dies in any way, SIGKILL included (Krita crashing),
leaves no server behind: the server's stdin pipe closes and it shuts down as for SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO

LAUNCHER = """
import subprocess, sys, time
log = open(sys.argv[1], "w")
command = [sys.executable, "-m", "backend", "serve", "--model", "tiny", "--device", "cpu", "--port", "0",
           "--no-warm-up", "--exit-with-stdin"]
server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)
print(server.pid, flush=True)
time.sleep(600)
"""


def ended(pid: int) -> bool:
    """The process is gone, or a zombie nobody reaped (it has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_a_killed_launcher_leaves_no_server_behind(tmp_path):
    log = tmp_path / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(log)], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    )
    server_pid = int(launcher.stdout.readline())
    try:
        assert wait_for(lambda: "ready on ws://" in log.read_text(), 120), log.read_text()[-2000:]
        assert not ended(server_pid)
        launcher.send_signal(signal.SIGKILL)  # as a crash: no cleanup of any kind
        launcher.wait(10)
        assert wait_for(lambda: ended(server_pid), 15), "the server outlived its launcher"
        text = log.read_text()
        assert "stdin closed: the process that started this server is gone" in text
        assert "exiting now: stopped" in text and "Traceback" not in text
    finally:
        if launcher.poll() is None:
            launcher.kill()
        if not ended(server_pid):
            os.kill(server_pid, signal.SIGKILL)
