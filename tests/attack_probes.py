"""What hostile or careless clients do to a server, as async probes against its URL (loopback only).

Shared by ``tests/test_server_under_attack.py`` (short, in CI) and ``bench/bench_server_attacks.py``
(longer, with figures): each probe runs for ``seconds`` and cleans up after itself.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlparse

from PIL import Image
from websockets.asyncio.client import connect

from backend.client import InstantStyleClient, input_frame
from protocol import (
    FrameKind,
    Hello,
    Mode,
    Ping,
    PixelFormat,
    StyleImage,
    encode_frame_header,
    encode_message,
)
from tests.conftest import noise_image
from tests.server_helpers import generate_message

REPO = Path(__file__).resolve().parents[1]
STYLE = noise_image(3)
MiB = 1 << 20


class ServerProcess:
    """``python -m backend serve`` on the tiny model, with its resident memory sampled as it runs."""

    def __init__(self, *arguments: str, log: Path, env: dict[str, str] | None = None) -> None:
        """``env``: variables added to this process's environment (which the server inherits)."""
        self.log = log
        command = [sys.executable, "-m", "backend", "serve", "--port", "0", "--no-warm-up", *arguments]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **(env or {})}
        self.process = subprocess.Popen(
            command, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO, env=env
        )
        self.url = self._wait_for("InstantStyle backend ready on ").split(" on ")[1].split(" ")[0]
        self.peak_kib = 0

    def _wait_for(self, start: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            for line in self.log.read_text().splitlines():
                if line.startswith(start):
                    return line
            time.sleep(0.1)
        raise RuntimeError(f"the server did not say {start!r}: {self.log.read_text()[-2000:]}")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    @contextlib.contextmanager
    def sampling(self, every: float = 0.05):
        """Track the peak resident memory while the block runs."""
        self.peak_kib = self.rss_kib()
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError, ValueError):
                    self.peak_kib = max(self.peak_kib, self.rss_kib())
                stop.wait(every)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()

    def stop(self) -> float:
        """SIGTERM; seconds until the process exited (killed after 10)."""
        started = time.monotonic()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return time.monotonic() - started


async def a_normal_job(url: str, token: str | None = None) -> bool:
    async with InstantStyleClient.connect(url, token, client="after-the-probe") as client:
        await client.submit(generate_message(99, steps=2), {0: STYLE})
        outcome = await client.follow(99)
    return outcome.error is None and len(outcome.images) == 1


async def a_largest_job(url: str, side: int) -> bool:
    """One job of the largest size the server accepts, with canvas-size previews: what the working
    memory of a running job is, outside any client's budget."""
    async with InstantStyleClient.connect(url, client="largest") as client:
        await client.submit(generate_message(98, steps=2, width=side, height=side), {0: STYLE})
        outcome = await client.follow(98)
    return outcome.error is None and len(outcome.images) == 1


async def many_connections(url: str, seconds: float, count: int = 200) -> None:
    """``count`` connections at once (the server refuses those over its cap), held open."""
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(count):
            with contextlib.suppress(Exception):  # refused over the cap (HTTP 503)
                await stack.enter_async_context(connect(url, open_timeout=5))
        await asyncio.sleep(seconds)


async def pre_auth_half_frames(url: str, seconds: float, count: int = 20, announced: int = 15 * MiB) -> None:
    """``count`` connections that, before any hello, start a binary frame of ``announced`` bytes and
    send the first MiB of it, then stall."""
    address = urlparse(url)
    writers = []
    for _ in range(count):
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection(address.hostname, address.port)
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                f"GET / HTTP/1.1\r\nHost: {address.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            await reader.readuntil(b"\r\n\r\n")
            header = struct.pack("!BBQ", 0x82, 0x80 | 127, announced) + os.urandom(4)  # binary, masked
            writer.write(header + bytes(MiB))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.drain(), 2)
            writers.append(writer)
    await asyncio.sleep(seconds)
    for writer in writers:
        writer.close()


async def non_reading_clients(url: str, seconds: float, count: int = 3, pings: int = 20000) -> None:
    """Clients that ask for results, send ``pings`` pings as fast as they can, and never read (the
    replies over 1 MiB are dropped; cutting such a client off is tested in-process, with a small
    budget)."""

    async def one(index: int) -> None:
        with contextlib.suppress(Exception):  # the server may cut them off: that is the point
            async with connect(url, max_size=None, max_queue=1, compression=None) as ws:
                await ws.send(encode_message(Hello(client=f"silent-{index}")))
                for job_id in (1, 2):
                    await ws.send(input_frame(job_id, 0, STYLE))
                    await ws.send(encode_message(generate_message(job_id, steps=1, batch=2)))
                for nonce in range(pings):
                    await ws.send(encode_message(Ping(nonce % 1000)))
                await asyncio.sleep(seconds)

    await asyncio.gather(*(one(i) for i in range(count)))


async def input_floods(url: str, seconds: float, count: int = 3, per_client: int = 256 * MiB) -> None:
    """Clients that send ``per_client`` bytes of INPUT frames that no generate ever uses."""
    side = 1024
    payload = bytes(side * side * 4)

    async def one(index: int) -> None:
        async with InstantStyleClient.connect(url, client=f"flood-{index}") as client:
            sent = 0
            job_id = 1
            while sent < per_client:
                for frame_index in range(64):
                    header = encode_frame_header(
                        FrameKind.INPUT, job_id, frame_index, side, side, PixelFormat.RGBA8
                    )
                    await client.connection.send(header + payload)
                    sent += len(payload)
                    if sent >= per_client:
                        break
                job_id += 1
            await asyncio.sleep(seconds)

    await asyncio.gather(*(one(i) for i in range(count)))


def big_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (30, 90, 200)).save(buffer, "PNG")
    return buffer.getvalue()


async def full_queue_of_png_jobs(url: str, seconds: float, count: int = 3, side: int = 1024) -> None:
    """Clients filling their share of the queue with jobs of six small PNGs that decode to ``side``²."""
    png = big_png(side)

    async def one(index: int) -> None:
        async with InstantStyleClient.connect(url, client=f"queue-{index}") as client:
            for job_id in range(1, 9):
                for frame_index in range(6):
                    header = encode_frame_header(
                        FrameKind.INPUT, job_id, frame_index, side, side, PixelFormat.PNG
                    )
                    await client.connection.send(header + png)
                message = generate_message(
                    job_id,
                    steps=150,
                    width=side,
                    height=side,
                    style_images=[StyleImage(i) for i in range(4)],
                    mode=Mode.INPAINT,
                    init_image=4,
                    mask=5,
                )
                await client.connection.send(encode_message(message))
            await asyncio.sleep(seconds)

    await asyncio.gather(*(one(i) for i in range(count)))


PROBES: dict[str, Callable[[str, float], Awaitable[None]]] = {
    "200 connections": many_connections,
    "20 pre-auth half frames": pre_auth_half_frames,
    "3 non-reading clients": non_reading_clients,
    "3 clients flooding inputs": input_floods,
    "a full queue of maximum-size PNG jobs": full_queue_of_png_jobs,
}
