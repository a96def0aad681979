"""The asyncio WebSocket server (``websockets`` package) and ``python -m backend serve``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from http import HTTPStatus

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from backend import __version__
from protocol import ErrorCode, Limits, Mode, ModelInfo, ModelPhase, ModelStatus, WorkerInfo, encode_message
from protocol.schema import shown

from .config import ConfigError, ServerConfig
from .connection import Connection, ModelState, ServerContext
from .proxy import TrustedProxies, normalize_path, parse_networks, path_matches
from .worker import Engine, GpuWorker

log = logging.getLogger(__name__)
wire_log = logging.getLogger(__name__ + ".websockets")
"""websockets' own logger for this server, never at DEBUG: there it writes every frame, ``hello`` and
its token included (``serve -v`` sets the root logger to DEBUG)."""
wire_log.setLevel(logging.INFO)

StatusCallback = Callable[[ModelStatus], None]
LoadModel = Callable[[StatusCallback], Engine]
"""Loads the model (on a thread of its own), telling the callback about each phase."""
DOWNLOAD_REPORT_SECONDS = 0.5
"""Download progress reaches clients at most this often; phase changes at once."""


class InstantStyleServer:
    """Accepts clients, queues their jobs, runs them on one worker thread.

    Given no engine, it serves while the model loads (``load_model``): clients connect, see the
    loading phase, and their jobs wait in the queue until the model is ready.
    """

    def __init__(
        self,
        engine: Engine | None,
        model: ModelInfo,
        config: ServerConfig | None = None,
        modes: list[Mode] | None = None,
    ) -> None:
        self.config = config or ServerConfig()
        self.config.check()
        self.model = model
        self.worker = GpuWorker(engine, self.config.limits.max_queued_jobs, self.config.max_per_client_jobs)
        if modes is None:
            modes = list(getattr(engine, "modes", [m for m in Mode if m is not Mode.CONTROL]))
        loading = ModelStatus(ModelPhase.LOADING, f"Loading {model.label}")
        self.model_state = ModelState(
            ready_status(model, engine, self.worker.workers()) if engine is not None else loading
        )
        self.context = ServerContext(
            self.config, self.worker, model, __version__, tuple(modes), self.model_state
        )
        self.connections: set[Connection] = set()
        self._server: Server | None = None
        self.path = normalize_path(self.config.path)
        self.proxies = TrustedProxies(parse_networks(self.config.trusted_proxies))

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"{self.config.scheme}://{host}:{self.port}{self.path or ''}"

    @property
    def certificate_fingerprint(self) -> str | None:
        """The served certificate's SHA-256 fingerprint (what a client pins), or None without TLS."""
        from .certificates import certificate_fingerprint

        if not self.config.tls_cert:
            return None
        try:
            return certificate_fingerprint(self.config.tls_cert)
        except (OSError, ValueError) as error:
            raise ConfigError(f"cannot read the TLS certificate {self.config.tls_cert}: {error}") from None

    async def start(self) -> None:
        tls = self.config.ssl_context()  # before the worker: a bad certificate is one line, nothing started
        self.worker.start()
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            ssl=tls,
            process_request=self._admit,
            # Browsers always send Origin; native clients (Krita, scripts) do not. Accepting only
            # "no Origin" means no web page can drive this GPU server from a victim's browser.
            origins=[None],
            # Pixels do not compress well and deflate costs ~50x the send time on loopback.
            compression=None,
            # Until its hello is accepted a client may send only small messages; the connection then
            # raises this to the announced max_message_bytes.
            max_size=self.config.pre_auth_max_bytes,
            # Received messages buffered per connection before reading pauses: each may be a full
            # image, so few (the server handles a connection's messages one after the other).
            max_queue=2,
            write_limit=4 * 1024 * 1024,
            # Keep-alive: a proxy's idle timeout (nginx's proxy_read_timeout, 60 s by default) sees
            # traffic on an idle connection; a peer that stops answering is dropped after the timeout.
            ping_interval=self.config.ping_interval or None,
            ping_timeout=self.config.ping_timeout or None,
            logger=wire_log,
        )
        log.info("listening on %s (model: %s)", self.url, self.model.label)
        if self.config.plain_off_loopback:
            log.warning(
                "--insecure: plain ws:// on %s: tokens and canvases cross the network in clear text",
                self.config.host,
            )

    def publish(self, status: ModelStatus) -> None:
        """A new loading status (on the event loop): kept for clients yet to come, sent to connected ones."""
        self.model_state.status = status
        message = encode_message(status)
        for connection in list(self.connections):
            connection.outbox.put(message)

    async def load_model(self, load: LoadModel) -> bool:
        """Load the model on its own thread while serving; True when it is ready.

        A failure is kept (and announced): jobs are refused with its message from then on, and the
        server goes on serving so that clients can show it. The thread is a daemon: stopping the server
        during a long download or load does not wait for it.
        """
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[Engine] = loop.create_future()
        last_sent = 0.0

        def report(status: ModelStatus) -> None:  # on the loading thread
            nonlocal last_sent
            now = time.monotonic()
            complete = status.bytes_done == status.bytes_total
            if (
                status.phase is ModelPhase.DOWNLOADING
                and not complete
                and now - last_sent < DOWNLOAD_REPORT_SECONDS
            ):
                return
            last_sent = now
            with contextlib.suppress(RuntimeError):  # the loop is gone: the server stopped meanwhile
                loop.call_soon_threadsafe(self.publish, status)

        def run() -> None:
            engine, failure = None, None
            try:
                engine = load(report)
            except Exception as error:
                failure = error
            except BaseException as error:  # e.g. SystemExit from a library: still one clear line
                failure = RuntimeError(f"loading stopped ({type(error).__name__})")
            with contextlib.suppress(RuntimeError):  # the loop is gone: the server stopped meanwhile
                loop.call_soon_threadsafe(_settle, finished, engine, failure)

        threading.Thread(target=run, name="model-loader", daemon=True).start()
        try:
            engine = await finished
        except Exception as error:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            log.error("the model could not be loaded: %s", message)
            self.publish(ModelStatus(ModelPhase.FAILED, message[:1000]))
            self.worker.fail_waiting(
                ErrorCode.MODEL_FAILED, f"the backend could not load its model: {message}"
            )
            return False
        self.worker.attach(engine)
        self.publish(ready_status(self.model, engine, self.worker.workers()))
        return True

    async def close(self, reason: str = "the server is shutting down") -> None:
        """Stop accepting, stop the worker, then tell every client: done within about 3 s whatever the
        clients do (each close is bounded; a peer that does not read is cut off)."""
        self.model_state.stopping = True
        if self._server is not None:
            self._server.close(close_connections=False)  # no new connection from here on
        for connection in list(self.connections):
            connection.stop_reading()  # what clients still send is not worth the event loop's time
        await asyncio.to_thread(self.worker.stop, 1.0)  # the running job stops at its next step
        await asyncio.gather(*(c.shutdown(reason) for c in list(self.connections)), return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 0.5)
        self.context.decoder.shutdown(wait=False, cancel_futures=True)

    def client_address(self, connection: ServerConnection, request: Request) -> str:
        """The TCP peer, or the client a trusted proxy names (see ``proxy``)."""
        peer = connection.remote_address
        address = str(peer[0]) if peer else "?"
        if not self.proxies.networks:
            return address
        return self.proxies.client_address(address, request.headers.get_all("X-Forwarded-For"))

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse a connection to another path, over the cap or during shutdown, before any WebSocket
        state exists."""
        if not path_matches(self.path, request.path):
            log.debug("no WebSocket at %s", shown(request.path, 200))
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        if self.model_state.stopping:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "the server is shutting down\n")
        if len(self.connections) >= self.config.max_connections:
            log.warning(
                "refused a connection from %s: %d already open",
                self.client_address(connection, request),
                len(self.connections),
            )
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
        return None

    async def _handle(self, websocket: ServerConnection) -> None:
        address = self.client_address(websocket, websocket.request) if websocket.request else "?"
        connection = Connection(websocket, self.context, address)
        self.connections.add(connection)
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)


def ready_status(model: ModelInfo, engine: Engine, workers: list[WorkerInfo] | None = None) -> ModelStatus:
    """READY, with what the engine offers (an engine without ``features`` offers nothing extra) and the
    workers that run jobs."""
    features = getattr(engine, "features", None)
    if features is not None and workers:
        features = replace(features, workers=list(workers))
    problems = len(features.problems) if features is not None else 0
    note = f" ({problems} of the files asked for could not be loaded)" if problems else ""
    return ModelStatus(ModelPhase.READY, f"{model.label} is ready{note}", features=features)


def _settle(future: asyncio.Future, value: object, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    from .network_options import network_settings

    network = network_settings(args)
    side, canvas = args.max_side, max(args.max_side, args.max_canvas_side)
    limits = replace(
        Limits(),
        max_side=side,
        max_pixels=side * side,
        max_message_bytes=side * side * 4 + 64,
        max_canvas_side=canvas,
        max_canvas_pixels=canvas * canvas,
    )
    share = None if args.preview_budget is None else args.preview_budget / 100
    return ServerConfig(
        host=args.host,
        port=args.port,
        limits=limits,
        preview_share=share,
        **asdict(network),  # NetworkSettings' fields are ServerConfig's, by name
    )


def run_server(args: argparse.Namespace, plan: object, load: LoadModel) -> int:
    """``python -m backend serve``: listen at once, load the model meanwhile, run until SIGINT/SIGTERM,
    then shut down cleanly. ``plan`` (an engine ``LoadPlan``) says what is being loaded."""
    info = plan.info  # type: ignore[attr-defined]
    model = ModelInfo(info.label, info.is_test_model, info.device, info.dtype, info.memory_tier)
    server = InstantStyleServer(None, model, config_from_args(args), modes=plan.modes)  # type: ignore[attr-defined]

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        stop_now = _on_stop_signal(loop, stop)
        if getattr(args, "exit_with_stdin", False):
            _stop_when_stdin_closes(loop, stop_now)
        await server.start()
        print(f"InstantStyle backend listening on {server.url}; loading {info.label}", flush=True)
        if server.certificate_fingerprint:  # what the plugin shows the artist to confirm
            print(f"TLS certificate SHA-256 fingerprint: {server.certificate_fingerprint}", flush=True)
        loading = asyncio.create_task(server.load_model(load))
        loading.add_done_callback(lambda task: _announce(task, server, info))
        await stop.wait()
        loading.cancel()
        log.info("shutting down")
        stopping = time.monotonic()
        await server.close()
        log.info("stopped in %.2f s", time.monotonic() - stopping)

    asyncio.run(main())
    # Everything a client needs was sent. The interpreter's own teardown would wait for the decoder
    # threads and, on a CPU, for a job step still computing on the worker thread: seconds, for nothing.
    _exit_now("stopped" if not server.worker.busy else "stopped (a job step was still computing)")
    return 0


def _on_stop_signal(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> Callable[[], None]:
    """SIGINT/SIGTERM set ``stop`` and start the shutdown deadline (returned: for other reasons to stop).

    The graceful steps are each bounded; should the machine be too loaded to finish them in time, the
    process still ends, and nothing is lost that a client was not already told about. The deadline
    counts from the signal's arrival, noted by a Python-level handler that runs at once, even when the
    event loop is busy and takes the signal later. (asyncio's own handlers also wake an idle loop; a
    thread waiting in ``sigwait`` with the signals blocked elsewhere missed signals that a library's
    earlier thread took, and the idle loop never woke.)
    """
    arrived_at: list[float] = []

    def noted(signum: int, frame: object) -> None:
        # Only a list append: this runs between any two bytecodes of the main thread, where taking a
        # lock (starting a thread) could deadlock. asyncio's wakeup fd still wakes the loop.
        arrived_at.append(time.monotonic())

    def arrived() -> None:
        elapsed = time.monotonic() - arrived_at[0] if arrived_at else 0.0
        deadline = threading.Timer(
            max(0.0, SHUTDOWN_DEADLINE_SECONDS - elapsed), _exit_now, ("shutdown deadline reached",)
        )
        deadline.daemon = True
        deadline.start()
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        # On Windows there are no signal handlers: KeyboardInterrupt ends asyncio.run instead.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, arrived)
            signal.signal(signum, noted)  # in place of asyncio's no-op; its wakeup fd stays
    return arrived


def _stop_when_stdin_closes(loop: asyncio.AbstractEventLoop, stop_now: Callable[[], None]) -> None:
    """``serve --exit-with-stdin``: the process that started the server (the Krita plugin) holds the
    other end of its stdin; when that process ends in any way, a crash included, the pipe closes and
    the server shuts down as for SIGTERM: never an orphan holding the GPU. (Portable, where a parent
    PID to poll or Linux's parent-death signal are not.)"""

    def watch() -> None:
        stream = sys.stdin.buffer
        with contextlib.suppress(OSError, ValueError):
            while stream.read(4096):
                pass  # nothing is ever sent; read until the other end closes
        log.info("stdin closed: the process that started this server is gone")
        with contextlib.suppress(RuntimeError):  # the loop already closed: stopping anyway
            loop.call_soon_threadsafe(stop_now)

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


SHUTDOWN_DEADLINE_SECONDS = 2.5


def _exit_now(why: str) -> None:
    """End the process at once (after flushing what was logged): the interpreter's own teardown would
    wait for a running job step, seconds on a CPU."""
    log.info("exiting now: %s", why)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _announce(task: asyncio.Task, server: InstantStyleServer, info: object) -> None:
    """One line on the console when the model is ready (or could not be loaded)."""
    if task.cancelled():
        return
    if task.result():
        tier = info.memory_tier  # type: ignore[attr-defined]
        print(f"InstantStyle backend ready on {server.url} ({info.device}, memory tier {tier})", flush=True)  # type: ignore[attr-defined]
    else:
        status = server.model_state.status
        print(
            f"error: the model could not be loaded: {status.message} (the server keeps running to tell "
            "clients; stop it with Ctrl+C)",
            flush=True,
        )
