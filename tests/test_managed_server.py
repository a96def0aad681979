"""The managed backend's process, as the docker drives it (Qt-free): a real ``python -m backend serve``
on the tiny model, started with a fresh token on a free port, restarted once when it dies, then
reported failed with its log's last lines, and stopped without an orphan."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from backend.client import InstantStyleClient, ServerError
from krita_plugin.instantstyle.managed.server_process import (
    ManagedServer,
    ServerCommand,
    ServerState,
    running_server,
)
from tests.conftest import REPO, noise_image
from tests.server_helpers import generate_message, run

COMMAND = ServerCommand(
    [sys.executable],
    ["--model", "tiny", "--device", "cpu", "--no-warm-up"],
    cwd=str(REPO),
    env={"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)},
)


def poll_until(server: ManagedServer, wanted: set[ServerState], seconds: float = 120) -> ServerState:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = server.poll()
        if state in wanted:
            return state
        time.sleep(0.1)
    raise AssertionError(f"still {server.state}: {server.message}; log: {server.last_lines(10)}")


async def one_job(url: str, token: str | None) -> int:
    async with InstantStyleClient.connect(url, token=token) as client:
        await client.submit(generate_message(1, steps=1), {0: noise_image(3)})
        return len((await client.follow(1)).images)


def test_start_use_restart_once_then_fail_with_the_logs_last_lines(tmp_path):
    server = ManagedServer(COMMAND, tmp_path / "logs" / "server.log", tmp_path / "server.json")
    server.start()
    try:
        assert poll_until(server, {ServerState.READY}) is ServerState.READY
        assert server.message == "running (cpu, memory tier full)" and server.url.startswith(
            "ws://127.0.0.1:"
        )
        assert running_server(tmp_path / "server.json") == (server.url, server.token)  # a second Krita
        assert oct((tmp_path / "server.json").stat().st_mode & 0o777) == "0o600"
        assert run(one_job(server.url, server.token), timeout=120) == 1
        with pytest.raises(ServerError):  # the token is required: another local user cannot use it
            run(one_job(server.url, None), timeout=60)

        first_url, first_token = server.url, server.token
        os.kill(server.process.pid, signal.SIGKILL)
        poll_until(server, {ServerState.STARTING, ServerState.LOADING}, 30)  # noticed, and restarted
        assert server.restarts == 1 and server.message == "the backend stopped (exit code -9); restarted it"
        assert poll_until(server, {ServerState.READY}) is ServerState.READY
        assert (server.url, server.token) != (first_url, first_token)
        assert run(one_job(server.url, server.token), timeout=120) == 1

        os.kill(server.process.pid, signal.SIGKILL)
        assert poll_until(server, {ServerState.FAILED}, 30) is ServerState.FAILED
        assert server.message.startswith("the backend stopped (exit code -9): ")
        assert " INFO backend." in server.message  # the log's last lines, as they were
        assert running_server(tmp_path / "server.json") is None
    finally:
        server.stop()


def test_stop_closes_its_stdin_and_the_server_exits_at_once(tmp_path):
    server = ManagedServer(COMMAND, tmp_path / "server.log", tmp_path / "server.json")
    server.start()
    process = server.process
    try:
        poll_until(server, {ServerState.LOADING, ServerState.READY})
    finally:
        started = time.monotonic()
        server.stop()
    assert process.poll() is not None and time.monotonic() - started < 5
    assert server.state is ServerState.STOPPED and not (tmp_path / "server.json").exists()
    log = (tmp_path / "server.log").read_text()
    assert "stdin closed: the process that started this server is gone" in log and "Traceback" not in log


def test_a_stale_state_file_is_not_a_running_server(tmp_path):
    state = tmp_path / "server.json"
    state.write_text('{"pid": 12345, "url": "ws://127.0.0.1:1", "token": "t"}')
    assert running_server(state, alive=lambda pid: False) is None
    assert running_server(state, alive=lambda pid: pid == 12345) == ("ws://127.0.0.1:1", "t")
    state.write_text("{not json")
    assert running_server(state) is None
