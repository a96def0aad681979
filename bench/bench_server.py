"""Streaming overhead of the WebSocket server, and loopback throughput of result frames.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_server.py [--size 256] [--steps 30] [--repeats 5]

1. The same job through the server (client on 127.0.0.1, previews streamed every
   step) against ``engine.generate`` directly, alternately, in one process:
   a ratio from one run.
2. 1024x1024 RGBA result frames (4 MiB) over loopback with the server's
   settings (no compression), the same over TLS (``wss://``, a self-signed
   certificate pinned as the plugin pins it) and, for comparison, websockets'
   default deflate.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from backend.client import InstantStyleClient
from backend.engine.engine import InstantStyleEngine
from backend.engine.request import GenerationRequest, StyleReference
from backend.server.app import InstantStyleServer
from backend.server.certificates import ensure_self_signed
from backend.server.config import ServerConfig
from backend.server.worker import Job, JobFinished
from backend.tiny.layouts import ensure_tiny_model
from protocol import FrameKind, Generate, ModelInfo, PixelFormat, StyleImage, encode_frame_header
from protocol.tls import ServerTrust


async def streaming(args: argparse.Namespace) -> None:
    engine = InstantStyleEngine.load(ensure_tiny_model().spec(), device="cpu")
    style = Image.open(Path(__file__).resolve().parents[1] / "examples" / "style.png").convert("RGB")
    request = GenerationRequest(
        prompt="a lighthouse",
        style_images=[StyleReference(style)],
        seed=1,
        width=args.size,
        height=args.size,
        steps=args.steps,
    )
    server = InstantStyleServer(engine, ModelInfo("tiny", True), ServerConfig(port=0))
    await server.start()
    direct, through, previews = [], [], 0
    async with InstantStyleClient.connect(server.url) as client:
        for job_id in range(0, args.repeats + 1):
            # "Directly": the same engine call on the server's own worker thread, with no socket.
            # (On the CPU, torch slows down ~2.4x when two threads take turns at inference, so the
            # comparison must use the thread the server uses.)
            done = threading.Event()
            start = time.perf_counter()
            server.worker.submit(
                Job(0, request, emit=lambda e, done=done: isinstance(e, JobFinished) and done.set())
            )
            await asyncio.to_thread(done.wait)
            direct_time = time.perf_counter() - start
            start = time.perf_counter()
            message = Generate(
                job_id=job_id + 1,
                prompt="a lighthouse",
                style_images=[StyleImage(0)],
                seed=1,
                width=args.size,
                height=args.size,
                steps=args.steps,
            )
            await client.submit(message, {0: style})
            outcome = await client.follow(job_id + 1)
            through_time = time.perf_counter() - start
            if job_id:  # the first round is a warm-up
                direct.append(direct_time)
                through.append(through_time)
                previews += len(outcome.previews)
    await server.close()
    d, t = statistics.median(direct), statistics.median(through)
    print(f"tiny model, {args.size}x{args.size}, {args.steps} steps, CPU, median of {args.repeats}")
    print(f"engine on the worker thread  : {d * 1000:8.1f} ms")
    print(
        f"through the server (loopback): {t * 1000:8.1f} ms, {previews / args.repeats:.0f} previews per job"
    )
    print(f"streaming overhead           : {(t / d - 1) * 100:+8.2f} %")


async def throughput(compression: str | None, frames: int = 20, tls: bool = False) -> float:
    payload = encode_frame_header(FrameKind.RESULT, 1, 0, 1024, 1024, PixelFormat.RGBA8) + bytes(
        Image.effect_noise((1024, 1024), 40).convert("RGBA").tobytes()
    )
    server_tls, client_tls = None, None
    if tls:
        made = ensure_self_signed(Path(tempfile.mkdtemp()), ("127.0.0.1",))
        server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_tls.load_cert_chain(made.cert, made.key)
        client_tls = ServerTrust(pinned=made.fingerprint).context()

    async def handler(ws):
        for _ in range(frames):
            await ws.send(payload)

    async with serve(
        handler, "127.0.0.1", 0, compression=compression, max_size=None, ssl=server_tls
    ) as server:
        port = server.sockets[0].getsockname()[1]
        scheme = "wss" if tls else "ws"
        async with connect(
            f"{scheme}://127.0.0.1:{port}", compression=compression, max_size=None, proxy=None, ssl=client_tls
        ) as ws:
            start = time.perf_counter()
            for _ in range(frames):
                await ws.recv()
            return (time.perf_counter() - start) / frames


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(streaming(args))
    raw = asyncio.run(throughput(None))
    encrypted = asyncio.run(throughput(None, tls=True))
    deflate = asyncio.run(throughput("deflate", frames=5))
    size_mb = (1024 * 1024 * 4) / 1e6
    print(f"1024x1024 RGBA frame, no compression : {raw * 1000:7.2f} ms ({size_mb / raw:7.0f} MB/s)")
    print(
        f"1024x1024 RGBA frame, TLS (wss://)   : {encrypted * 1000:7.2f} ms ({size_mb / encrypted:7.0f} MB/s)"
    )
    print(f"1024x1024 RGBA frame, deflate        : {deflate * 1000:7.2f} ms ({size_mb / deflate:7.0f} MB/s)")


if __name__ == "__main__":
    main()
