"""One client's session: handshake, requests in, events out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from backend.engine.auto_search import SearchContext, with_plan
from backend.engine.request import GenerationRequest, RequestError
from protocol import (
    Cancel,
    Cancelled,
    Error,
    ErrorCode,
    FrameKind,
    Generate,
    Hello,
    Mode,
    ModelInfo,
    ModelPhase,
    ModelStatus,
    Ping,
    PixelFrame,
    Pong,
    ProtocolError,
    Queued,
    Sampler,
    ServerHello,
    decode_client_message,
    decode_frame,
    encode_message,
)
from protocol.limits import MAX_INPUT_INDEX
from protocol.schema import shown

from .budgets import ByteBudget, OverBudget, decoded_bytes
from .config import ServerConfig
from .hello_guard import HelloGuard
from .inputs import build_request, check_inputs_arrived, input_images
from .job_events import encode_event
from .outbox import Outbox, OutboxItem, OutboxPool, StepUpdate
from .worker import (
    GpuWorker,
    Job,
    JobCancelledEvent,
    JobEvent,
    JobFailed,
    JobFinished,
    QueueFull,
)

log = logging.getLogger(__name__)

CLOSE_POLICY = 1008
CLOSE_GOING_AWAY = 1001


@dataclass
class ModelState:
    """What the server last announced (changed on the event loop only)."""

    status: ModelStatus
    stopping: bool = False
    """Shutting down: no new client or job is accepted."""


def _decoder_pool() -> Executor:
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode")


@dataclass(frozen=True)
class ServerContext:
    config: ServerConfig
    worker: GpuWorker
    model: ModelInfo
    version: str
    modes: tuple[Mode, ...] = tuple(Mode)
    """What the engine can run (``control`` only with a ControlNet loaded)."""
    model_state: ModelState = field(default_factory=lambda: ModelState(ModelStatus(ModelPhase.READY)))
    input_budget: ByteBudget | None = None
    """INPUT frames waiting for their ``generate``, for the whole server (made from ``config``)."""
    image_budget: ByteBudget | None = None
    """Decoded images of queued and running jobs."""
    decoder: Executor = field(default_factory=_decoder_pool)
    """Where PNGs are decoded and requests built: never on the event loop."""
    outbox_pool: OutboxPool | None = None
    """Every client's unsent bytes, within ``config.outbox_bytes_total`` (made from ``config``)."""
    hello_guard: HelloGuard | None = None
    """Hellos per client address: too many are answered late (made from ``config``)."""

    def __post_init__(self) -> None:
        config = self.config
        budgets = {
            "input_budget": (
                "input bytes waiting for their generate",
                config.input_bytes_total,
                config.input_budget_per_client,
            ),
            "image_budget": (
                "image bytes in queued jobs",
                config.queued_image_bytes_total,
                config.queued_image_bytes_per_client,
            ),
        }
        for name, (what, total, per_client) in budgets.items():
            if getattr(self, name) is None:  # frozen: set once, here
                object.__setattr__(self, name, ByteBudget(what, total, per_client))
        if self.outbox_pool is None:
            object.__setattr__(self, "outbox_pool", OutboxPool(config.outbox_bytes_total))
        if self.hello_guard is None:
            object.__setattr__(self, "hello_guard", HelloGuard(config.hello_policy))


class Connection:
    def __init__(self, websocket: object, context: ServerContext, address: str = "?") -> None:
        self.ws = websocket
        self.address = address
        """The client's address (the TCP peer, or what a trusted proxy says): logs and hello limits."""
        self.context = context
        self.loop = asyncio.get_running_loop()
        config = context.config
        self.outbox = Outbox(config.max_pending_previews, config.outbox_budget, context.outbox_pool)
        self.jobs: dict[int, Job] = {}
        self.preparing: set[int] = set()
        """Jobs whose images are being decoded (off the loop) before they are queued."""
        self.live_job: int | None = None
        """The client's latest live job (``generate.live``): a newer one replaces it."""
        self.image_bytes: dict[int, int] = {}
        """Each live job's reservation in the server's image budget."""
        self.inputs: dict[int, dict[int, PixelFrame]] = {}
        self.name = "?"

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        if not await self._handshake():
            self.outbox.close()  # out of the server's pool
            return
        sender = asyncio.create_task(self._send_loop())
        watchdog = asyncio.create_task(self._watch_backlog())
        self._sender = sender
        try:
            async for message in self.ws:  # type: ignore[attr-defined]
                await self._handle(message)
                # One read from the socket can hold thousands of small messages, which websockets
                # hands over without suspending: let the other clients (and a SIGTERM) have a turn.
                await asyncio.sleep(0)
        except Exception:  # a broken socket ends this client only
            log.debug("connection %s ended abruptly", self.name, exc_info=True)
        finally:
            self._drop_all_jobs()
            self.outbox.close()
            sender.cancel()
            watchdog.cancel()
            log.info("client %s (%s) disconnected", self.name, self.address)

    async def shutdown(self, reason: str, flush_seconds: float = 0.3) -> None:
        """Tell the client the server is going away, then close, within about a second whatever the
        client does (a peer that does not read cannot hold the shutdown up). Each of its live jobs
        ends with that error, then one without a job says it for the connection."""
        for job_id in sorted(self.jobs.keys() | self.preparing):  # queued, running, or still decoding
            self.outbox.put(encode_message(Error(ErrorCode.SHUTTING_DOWN, reason, job_id)))
        self._drop_all_jobs()
        self.jobs.clear()
        self.outbox.put(encode_message(Error(ErrorCode.SHUTTING_DOWN, reason)))
        self.outbox.close()
        sender = getattr(self, "_sender", None)
        if sender is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(sender), flush_seconds)
        await self._close(CLOSE_GOING_AWAY, reason)

    def stop_reading(self) -> None:
        """Read nothing more from this client (the server is shutting down)."""
        transport = getattr(self.ws, "transport", None)
        if transport is not None and not transport.is_closing():
            transport.pause_reading()

    async def _close(self, code: int, reason: str, seconds: float = 0.5) -> None:
        """Close with ``code``; a peer that does not answer the closing handshake within ``seconds``
        is cut off. (Not ``wait_for``: cancelling websockets' ``close`` waits out its own timeout.)"""
        closing = asyncio.ensure_future(self.ws.close(code, reason))  # type: ignore[attr-defined]
        done, _ = await asyncio.wait({closing}, timeout=seconds)
        if not done:
            transport = getattr(self.ws, "transport", None)
            if transport is not None:
                transport.abort()  # the close task then ends at once: the connection is lost
            await asyncio.wait({closing}, timeout=seconds)
        if closing.done() and not closing.cancelled():
            closing.exception()  # retrieved: a broken socket is not worth a warning

    async def _watch_backlog(self, every: float = 0.5) -> None:
        """Disconnect a client that stays over its unsent-bytes budget (it sends but does not read)."""
        limit = self.context.config.slow_client_seconds
        while True:
            await asyncio.sleep(every)
            if self.outbox.over_budget_for(time.monotonic()) > limit:
                log.warning(
                    "disconnecting client %s: %d bytes unread for over %.0f s",
                    shown(self.name),
                    self.outbox.bytes,
                    limit,
                )
                self._drop_all_jobs()
                self.outbox.close()
                await self._close(CLOSE_POLICY, "too slow: the client does not read what it asked for")
                return

    async def _handshake(self) -> bool:
        config = self.context.config
        try:
            first = await asyncio.wait_for(self.ws.recv(), config.hello_timeout)  # type: ignore[attr-defined]
            if isinstance(first, bytes):
                raise ProtocolError(ErrorCode.NOT_READY, "send hello before anything else")
            hello = decode_client_message(first, config.limits)
            if not isinstance(hello, Hello):
                raise ProtocolError(ErrorCode.NOT_READY, "send hello before anything else")
            guard = self.context.hello_guard
            delay = guard.attempt(self.address)  # type: ignore[union-attr]
            if delay is None:
                raise ProtocolError(
                    ErrorCode.NOT_READY, "too many hellos from this address lately: try again in a minute"
                )
            if delay:  # many hellos from this address lately: a guesser gets few tries a minute
                log.info("answering %s's hello in %.1f s (too many lately)", self.address, delay)
                await asyncio.sleep(delay)
            if not config.token_matches(hello.token):  # the token itself is never logged
                raise ProtocolError(ErrorCode.UNAUTHORIZED, "wrong or missing token")
            guard.accepted(self.address)  # type: ignore[union-attr]
        except ProtocolError as error:
            log.warning("refused a client from %s: %s", self.address, shown(error.message, 300))
            await self.ws.send(encode_message(Error.from_exception(error)))  # type: ignore[attr-defined]
            await self.ws.close(CLOSE_POLICY, error.code.value)  # type: ignore[attr-defined]
            return False
        except (TimeoutError, asyncio.TimeoutError):
            await self.ws.close(CLOSE_POLICY, "no hello")  # type: ignore[attr-defined]
            return False
        except Exception:  # the client went away during the handshake
            return False
        if self.context.model_state.stopping:
            await self.ws.send(encode_message(Error(ErrorCode.SHUTTING_DOWN, "the server is shutting down")))  # type: ignore[attr-defined]
            await self._close(CLOSE_GOING_AWAY, "shutting down")
            return False
        self.name = shown(hello.client or "client", 100)
        # Authenticated: from now on the server's own message limit applies instead of the small one.
        self.ws.protocol.max_message_size = config.limits.max_message_bytes  # type: ignore[attr-defined]
        reply = ServerHello(
            self.context.version,
            self.context.model,
            config.limits,
            list(self.context.modes),
            status=self.context.model_state.status,
            samplers=list(Sampler),
        )
        await self.ws.send(encode_message(reply))  # type: ignore[attr-defined]
        log.info("client %s connected from %s", self.name, self.address)
        return True

    async def _send_loop(self) -> None:
        while (item := await self.outbox.get()) is not None:
            try:
                if isinstance(item, StepUpdate):
                    await self.ws.send(item.progress)  # type: ignore[attr-defined]
                    if item.preview:  # empty: a step without a preview
                        await self.ws.send(item.preview)  # type: ignore[attr-defined]
                else:
                    await self.ws.send(item)  # type: ignore[attr-defined]
            except Exception:
                log.debug("send to %s failed", self.name, exc_info=True)
                self._drop_all_jobs()
                return

    # ------------------------------------------------------------------ requests

    async def _handle(self, message: str | bytes) -> None:
        job_id = None
        try:
            if isinstance(message, bytes):
                self._store_input(decode_frame(message, self.context.config.limits.max_side))
                return
            request = decode_client_message(message, self.context.config.limits)
            job_id = getattr(request, "job_id", None)
            if isinstance(request, Generate):
                if request.mode not in self.context.modes:
                    raise ProtocolError(
                        ErrorCode.BAD_REQUEST,
                        f"this backend cannot run mode {request.mode.value}"
                        + (" (it has no ControlNet loaded)" if request.mode is Mode.CONTROL else ""),
                        request.job_id,
                    )
                await self._generate(request)
            elif isinstance(request, Cancel):
                self._cancel(request.job_id)
            elif isinstance(request, Ping):
                self.outbox.put(encode_message(Pong(request.nonce)), droppable=True)
            else:
                raise ProtocolError(ErrorCode.BAD_MESSAGE, "hello was already received")
        except ProtocolError as error:
            log.info("bad message from %s: %s", self.name, shown(error.message, 300))
            if isinstance(message, str) and error.job_id is not None:
                # A refused generate (or cancel) releases the INPUT frames sent for its job: they stayed
                # charged to the client until it disconnected, and a few refusals blocked its next jobs.
                self._discard_inputs(error.job_id)
            self.outbox.put(encode_message(Error.from_exception(error)), droppable=error.job_id is None)
        except Exception:  # a bug must cost one message, not the connection
            log.exception("internal error handling a message from %s", self.name)
            self.outbox.put(
                encode_message(Error(ErrorCode.INTERNAL, "internal error: please report it", job_id))
            )

    def _store_input(self, frame: PixelFrame) -> None:
        if frame.kind is not FrameKind.INPUT:
            raise ProtocolError(ErrorCode.BAD_FRAME, "clients may only send INPUT frames", frame.job_id)
        if frame.job_id < 1 or frame.index > MAX_INPUT_INDEX:
            raise ProtocolError(
                ErrorCode.BAD_FRAME,
                f"an INPUT frame needs a job id from 1 and an index from 0 to {MAX_INPUT_INDEX} "
                f"(got job {frame.job_id}, index {frame.index})",
            )
        if frame.job_id in self.jobs or frame.job_id in self.preparing:
            raise ProtocolError(
                ErrorCode.DUPLICATE_JOB, f"job {frame.job_id} is already running", frame.job_id
            )
        slots = self.inputs.setdefault(frame.job_id, {})
        if frame.index in slots:  # replaced: its bytes no longer count
            old = slots.pop(frame.index)
            self.context.input_budget.release(self, len(old.payload))  # type: ignore[union-attr]
        try:
            self.context.input_budget.reserve(self, len(frame.payload))  # type: ignore[union-attr]
        except OverBudget as error:
            self._discard_inputs(frame.job_id)
            raise ProtocolError(ErrorCode.TOO_LARGE, str(error), frame.job_id) from None
        slots[frame.index] = frame

    def _discard_inputs(self, job_id: int) -> dict[int, PixelFrame]:
        frames = self.inputs.pop(job_id, {})
        size = sum(len(f.payload) for f in frames.values())
        self.context.input_budget.release(self, size)  # type: ignore[union-attr]
        return frames

    def _check_can_run(self, job_id: int) -> None:
        state = self.context.model_state
        if state.stopping:
            raise ProtocolError(ErrorCode.SHUTTING_DOWN, "the server is shutting down", job_id)
        if state.status.phase is ModelPhase.FAILED:
            raise ProtocolError(
                ErrorCode.MODEL_FAILED,
                f"the backend could not load its model: {state.status.message}",
                job_id,
            )

    async def _generate(self, message: Generate) -> None:
        """Check everything cheap, reserve the decoded images' bytes, decode off the loop, queue."""
        job_id = message.job_id
        self._check_can_run(job_id)
        if job_id in self.jobs or job_id in self.preparing:
            raise ProtocolError(ErrorCode.DUPLICATE_JOB, f"job {job_id} already exists", job_id)
        self._check_loras(message)
        check_inputs_arrived(message, self.inputs.get(job_id, {}))  # before a live job is superseded
        if message.live:
            self._supersede_live(job_id)
        frames = self._discard_inputs(job_id)
        wanted = {i: frames[i] for i in message.input_indices() if i in frames}
        cost = sum(decoded_bytes(f.width, f.height) for f in wanted.values())
        reason = self.context.worker.refusal(self)
        if reason is not None:
            raise ProtocolError(ErrorCode.QUEUE_FULL, reason, job_id)
        try:
            self.context.image_budget.reserve(self, cost)  # type: ignore[union-attr]
        except OverBudget as error:
            raise ProtocolError(ErrorCode.QUEUE_FULL, str(error), job_id) from None
        self.image_bytes[job_id] = cost
        self.preparing.add(job_id)
        try:
            config = self.context.config
            request = await self.loop.run_in_executor(
                self.context.decoder,
                _prepare,
                message,
                wanted,
                config.limits.preview_side_in_one_message,
                config.preview_share,
            )
        except BaseException:
            self._release_images(job_id)
            raise
        finally:
            self.preparing.discard(job_id)
        if request.auto is not None:  # planned as the engine will (once the model is known): one total
            limit = SearchContext.limit_only(self.context.config.limits.max_sweep_cells)
            request = with_plan(
                replace(request, search_context=limit), self.context.model_state.status.features
            )
        if self.outbox.closed:  # the client left, was cut off, or was told of the shutdown meanwhile
            self._release_images(job_id)
            return
        try:  # the model may have failed, or the server begun to stop, meanwhile
            self._check_can_run(job_id)
        except ProtocolError:
            self._release_images(job_id)
            raise
        if message.live and self.live_job != job_id:  # a newer live job came while this one decoded
            self._release_images(job_id)
            self.outbox.put(encode_message(Cancelled(job_id, 0)))
            return
        job = Job(job_id, request, emit=self._emitter(job_id), client=self)
        try:
            position = self.context.worker.submit(job)
        except QueueFull as full:
            self._release_images(job_id)
            raise ProtocolError(ErrorCode.QUEUE_FULL, str(full), job_id) from None
        self.jobs[job_id] = job
        self.outbox.put(encode_message(Queued(job_id, position)))

    def _check_loras(self, message: Generate) -> None:
        """Unknown LoRAs are refused at once when the model's are known (else when the job runs)."""
        features = self.context.model_state.status.features
        if features is None:
            return
        for lora in message.loras:
            if lora.name not in features.loras:
                available = ", ".join(features.loras) or "none"
                raise ProtocolError(
                    ErrorCode.BAD_FIELD,
                    f"LoRA '{shown(lora.name, 64)}' is not loaded on this server (available: {available})",
                    message.job_id,
                )

    def _supersede_live(self, job_id: int) -> None:
        """Latest wins: the client's previous live job is dropped from the queue or stopped at its next
        step (its ``cancelled`` follows as for any cancel), and ``job_id`` becomes the live job."""
        previous, self.live_job = self.live_job, job_id
        if previous is not None and previous in self.jobs:
            self._cancel(previous)

    def _release_images(self, job_id: int) -> None:
        self.context.image_budget.release(self, self.image_bytes.pop(job_id, 0))  # type: ignore[union-attr]

    def _cancel(self, job_id: int) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            raise ProtocolError(ErrorCode.UNKNOWN_JOB, f"no queued or running job {job_id}", job_id)
        if self.context.worker.cancel(job):
            del self.jobs[job_id]
            self._release_images(job_id)
            self.outbox.put(encode_message(Cancelled(job_id, job.last_step)))  # a sweep between cells

    def _drop_all_jobs(self) -> None:
        for job in list(self.jobs.values()):
            if self.context.worker.cancel(job):  # was queued: gone now; a running one ends on its own
                self.jobs.pop(job.job_id, None)
                self._release_images(job.job_id)
        for job_id in list(self.inputs):
            self._discard_inputs(job_id)

    # ------------------------------------------------------------------ events from the worker

    def _emitter(self, job_id: int) -> Callable[[JobEvent], None]:
        """Runs on the worker thread: encode there, hand finished frames to the loop."""

        def emit(event: JobEvent) -> None:
            if isinstance(event, JobCancelledEvent) and self.context.model_state.stopping:
                # Stopped by the shutdown, not by the client: say so, as for the jobs still queued.
                event = JobFailed(ErrorCode.SHUTTING_DOWN, "the server is shutting down")
            items = encode_event(job_id, event, self.context.config.limits.max_message_bytes)
            terminal = isinstance(event, JobFinished | JobCancelledEvent | JobFailed)
            # RuntimeError: the loop is closed, nobody is listening any more.
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._deliver, job_id, items, terminal)

        return emit

    def _deliver(self, job_id: int, items: list[OutboxItem], terminal: bool) -> None:
        if job_id not in self.jobs:  # its terminal message went out already (a cancel between cells)
            return
        for item in items:
            self.outbox.put(item)
        if terminal:
            self.jobs.pop(job_id, None)
            self._release_images(job_id)


def _prepare(
    message: Generate, frames: dict[int, PixelFrame], max_preview_side: int, preview_share: float | None
) -> GenerationRequest:
    """Decode the job's images and build its request (on the decoder threads, not the event loop)."""
    request = build_request(message, input_images(message, frames), max_preview_side, preview_share)
    try:
        request.validate()
    except RequestError as error:
        raise ProtocolError(ErrorCode.BAD_REQUEST, str(error), message.job_id) from None
    return request
