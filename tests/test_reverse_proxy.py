"""The server behind a real nginx (Debian's ``nginx-light``), as a studio runs it: a path prefix, the
client's address from ``X-Forwarded-For`` (the proxy trusted, nothing else), and keep-alive pings that
outlast the proxy's idle timeout, with the control that shows the timeout is real.

nginx runs in the foreground with everything (config, pid, logs, temp files) in the test's folder,
listening on a free loopback port; started as root, its master serves nothing and its worker runs as
``nobody`` (measured: it needs no file of the test's 0700 folder, since an upgraded connection is
never buffered to a temp file), started as a user it runs as that user. The client connects from
127.0.0.2 (Linux routes all of 127/8 to loopback), so the address nginx forwards differs from nginx's
own 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from websockets.asyncio.client import connect

from protocol import Hello, Ping, Pong, ServerHello, decode_server_message, encode_message
from tests.attack_probes import a_normal_job
from tests.server_helpers import run, running_server

PREFIX = "/instantstyle"
TOKEN = "tok-behind-the-proxy-51"
IDLE_TIMEOUT = 2
"""nginx's ``proxy_read_timeout`` here, in seconds (60 by default in real deployments)."""
CLIENT_ADDRESS = "127.0.0.2"

CONFIG = """
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/temp/body;
    proxy_temp_path {root}/temp/proxy;
    fastcgi_temp_path {root}/temp/fastcgi;
    uwsgi_temp_path {root}/temp/uwsgi;
    scgi_temp_path {root}/temp/scgi;
    server {{
        listen 127.0.0.1:{port};
        location {prefix} {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout {idle}s;
            proxy_send_timeout {idle}s;
        }}
    }}
}}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    assert found, "nginx is missing: apt-get install nginx-light (.ci/run installs it)"
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def nginx(folder: Path, upstream: int) -> Iterator[int]:
    """A foreground nginx proxying ``PREFIX/`` to ``upstream``; yields its port."""
    port = free_port()
    (folder / "temp").mkdir(parents=True, exist_ok=True)
    config = folder / "nginx.conf"
    config.write_text(
        CONFIG.format(root=folder, port=port, prefix=PREFIX, upstream=upstream, idle=IDLE_TIMEOUT)
    )
    process = subprocess.Popen(
        [nginx_binary(), "-p", str(folder), "-c", str(config), "-g", "daemon off;"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                log = (folder / "error.log").read_text() if (folder / "error.log").exists() else ""
                raise AssertionError(f"nginx did not start: {process.stdout.read()} {log[-2000:]}")
            time.sleep(0.05)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)  # fast shutdown of the one process this test started
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


async def open_through(port: int, path: str = PREFIX + "/", **options):
    return await connect(
        f"ws://127.0.0.1:{port}{path}",
        proxy=None,
        compression=None,
        ping_interval=None,  # only the server's pings keep the connection alive here
        local_addr=(CLIENT_ADDRESS, 0),
        open_timeout=10,
        **options,
    )


async def say_hello(ws) -> None:
    await ws.send(encode_message(Hello(client="behind-nginx", token=TOKEN)))
    assert isinstance(decode_server_message(await ws.recv()), ServerHello)


def test_a_job_through_nginx_at_the_path_prefix_with_the_forwarded_address(engine, tmp_path, caplog):
    caplog.set_level(logging.INFO)

    async def scenario():
        async with running_server(engine, path=PREFIX, trusted_proxies=("127.0.0.1",), token=TOKEN) as server:
            with nginx(tmp_path, server.port) as port:
                through = f"ws://127.0.0.1:{port}{PREFIX}"  # no trailing slash, as the docs' example
                assert await a_normal_job(through, TOKEN), "a job through nginx failed"
                ws = await open_through(port)
                await say_hello(ws)
                addresses = {connection.address for connection in server.connections}
                await ws.close()
                # nginx passes every path under the prefix on; the server answers 404 to all but its own.
                with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
                    await open_through(port, PREFIX + "/elsewhere")
                assert refused.value.response.status_code == 404
                return addresses

    addresses = run(scenario(), timeout=120)
    assert addresses == {CLIENT_ADDRESS}, addresses
    assert f"connected from {CLIENT_ADDRESS}" in caplog.text


async def idle_through_nginx(engine, folder: Path, ping_interval: float, idle: float) -> tuple[bool, float]:
    """Connect through nginx, say hello, stay idle for ``idle`` seconds: (still open and answering,
    seconds until it closed or ``idle``)."""
    async with running_server(
        engine, path=PREFIX, ping_interval=ping_interval, ping_timeout=5, token=TOKEN
    ) as server:
        with nginx(folder, server.port) as port:
            ws = await open_through(port)
            await say_hello(ws)
            started = time.monotonic()
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(ws.wait_closed(), idle)
            lasted = time.monotonic() - started
            try:
                await ws.send(encode_message(Ping(3)))
                alive = decode_server_message(await asyncio.wait_for(ws.recv(), 5)) == Pong(3)
            except websockets.exceptions.ConnectionClosed:
                alive = False
            await ws.close()
            return alive, lasted


def test_server_pings_keep_an_idle_connection_through_nginx_and_without_them_nginx_cuts_it(engine, tmp_path):
    alive, lasted = run(idle_through_nginx(engine, tmp_path / "pings", ping_interval=1, idle=5), timeout=60)
    assert alive and lasted >= 5, f"with pings every 1 s the connection ended after {lasted:.1f} s"
    cut, after = run(idle_through_nginx(engine, tmp_path / "no-pings", ping_interval=0, idle=5), timeout=60)
    assert not cut, "without pings nginx did not close the idle connection: the test proves nothing"
    assert IDLE_TIMEOUT - 0.5 <= after <= IDLE_TIMEOUT + 2, f"nginx closed it after {after:.1f} s"
    print(
        f"idle through nginx (proxy_read_timeout {IDLE_TIMEOUT}s): pings every 1 s: alive after "
        f"{lasted:.1f} s; no pings: closed after {after:.1f} s"
    )
