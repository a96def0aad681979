"""The asyncio WebSocket server (``websockets`` package) and ``python -m backend serve``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import replace

from websockets.asyncio.server import Server, ServerConnection, serve

from backend import __version__
from protocol import Limits, Mode, ModelInfo

from .config import ServerConfig
from .connection import Connection, ServerContext
from .worker import Engine, GpuWorker

log = logging.getLogger(__name__)


class InstantStyleServer:
    """Accepts clients, queues their jobs, runs them on one worker thread."""

    def __init__(self, engine: Engine, model: ModelInfo, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.config.check()
        self.model = model
        self.worker = GpuWorker(engine, self.config.limits.max_queued_jobs)
        modes = tuple(getattr(engine, "modes", [m for m in Mode if m is not Mode.CONTROL]))
        self.context = ServerContext(self.config, self.worker, model, __version__, modes)
        self.connections: set[Connection] = set()
        self._server: Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"ws://{host}:{self.port}"

    async def start(self) -> None:
        limits = self.config.limits
        self.worker.start()
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            # Browsers always send Origin; native clients (Krita, scripts) do not. Accepting only
            # "no Origin" means no web page can drive this GPU server from a victim's browser.
            origins=[None],
            # Pixels do not compress well and deflate costs ~50x the send time on loopback.
            compression=None,
            max_size=limits.max_message_bytes,
            max_queue=64,
            write_limit=4 * 1024 * 1024,
        )
        log.info("listening on %s (model: %s)", self.url, self.model.label)

    async def close(self, reason: str = "the server is shutting down") -> None:
        """Tell every client, stop the worker (the running job stops at its next step), close."""
        await asyncio.gather(*(c.shutdown(reason) for c in list(self.connections)), return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await asyncio.to_thread(self.worker.stop)

    async def _handle(self, websocket: ServerConnection) -> None:
        connection = Connection(websocket, self.context)
        self.connections.add(connection)
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    token = args.token or os.environ.get("INSTANTSTYLE_TOKEN") or None
    side = args.max_side
    limits = replace(Limits(), max_side=side, max_pixels=side * side, max_message_bytes=side * side * 4 + 64)
    return ServerConfig(host=args.host, port=args.port, token=token, limits=limits)


def run_server(args: argparse.Namespace, engine: object) -> int:
    """``python -m backend serve``: run until SIGINT/SIGTERM, then shut down cleanly."""
    info = engine.info  # type: ignore[attr-defined]
    model = ModelInfo(info.label, info.is_test_model, info.device, info.dtype, info.memory_tier)
    server = InstantStyleServer(engine, model, config_from_args(args))  # type: ignore[arg-type]

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            # On Windows there are no signal handlers: KeyboardInterrupt ends asyncio.run instead.
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, stop.set)
        await server.start()
        print(
            f"InstantStyle backend ready on {server.url} ({info.device}, memory tier {info.memory_tier})",
            flush=True,
        )
        await stop.wait()
        log.info("shutting down")
        await server.close()

    asyncio.run(main())
    return 0
