"""Helpers for tests that run a real server on 127.0.0.1 with the tiny model."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

from backend.engine.request import GenerationRequest, JobCancelled
from backend.server.app import InstantStyleServer
from backend.server.config import ServerConfig
from protocol import Generate, Mode, ModelInfo, StyleImage


@dataclass
class JobRecord:
    prompt: str
    steps_run: int = 0
    total: int = 0
    outcome: str = "running"


@dataclass
class SpyEngine:
    """Forwards to the real engine and records what each job did; can fail on request."""

    engine: object
    jobs: list[JobRecord] = field(default_factory=list)
    fail_with: Callable[[GenerationRequest], Exception | None] = lambda _request: None
    releases: int = 0

    def release_memory(self) -> None:
        self.releases += 1
        self.engine.release_memory()

    def generate(self, request, on_step=None, cancel=None):
        record = JobRecord(request.prompt)
        self.jobs.append(record)
        failure = self.fail_with(request)
        if failure is not None:
            record.outcome = "failed"
            raise failure

        def spy(preview):
            record.steps_run, record.total = preview.step, preview.total
            if on_step is not None:
                on_step(preview)

        try:
            result = self.engine.generate(request, on_step=spy, cancel=cancel)
        except JobCancelled:
            record.outcome = "cancelled"
            raise
        record.outcome = "finished"
        return result


@contextlib.asynccontextmanager
async def running_server(engine, load=None, **config) -> AsyncIterator[InstantStyleServer]:
    """A started server; with ``load`` (and no engine) it serves while ``load`` makes the engine."""
    model = ModelInfo("tiny random-weight SDXL (TEST/DEMO model)", True, "cpu", "float32")
    modes = None if load is None else [mode for mode in Mode if mode is not Mode.CONTROL]
    server = InstantStyleServer(engine, model, replace(ServerConfig(port=0), **config), modes=modes)
    await server.start()
    loading = asyncio.create_task(server.load_model(load)) if load is not None else None
    try:
        yield server
    finally:
        if loading is not None:
            loading.cancel()
        await server.close()


def generate_message(job_id: int, **overrides) -> Generate:
    fields = {
        "job_id": job_id,
        "prompt": "a lighthouse",
        "style_images": [StyleImage(0)],
        "width": 64,
        "height": 64,
        "steps": 3,
        "seed": 5,
    }
    fields.update(overrides)
    return Generate(**fields)


def run(coroutine, timeout: float = 120.0):
    """Run an async scenario with a hard time limit, so a hang fails instead of blocking CI."""

    async def bounded():
        return await asyncio.wait_for(coroutine, timeout)

    return asyncio.run(bounded())


class ServerThread:
    """A real server with its own event loop on a background thread, for blocking (threaded) clients."""

    def __init__(self, engine, load=None, **config) -> None:
        self.engine = engine
        self.load = load
        self.config = config
        self.server: InstantStyleServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("server did not start")
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def stop(self) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with running_server(self.engine, self.load, **self.config) as server:
                self.server = server
                self._ready.set()
                await self._stop.wait()

        asyncio.run(main())
