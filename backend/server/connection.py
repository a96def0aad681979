"""One client's session: handshake, requests in, events out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from backend.engine.request import RequestError
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
    PixelFormat,
    PixelFrame,
    Pong,
    Progress,
    ProtocolError,
    Queued,
    Result,
    ServerHello,
    Started,
    decode_client_message,
    decode_frame,
    encode_frame_header,
    encode_message,
)

from .config import ServerConfig
from .inputs import build_request, input_images, rgba_bytes
from .outbox import Outbox, OutboxItem, StepUpdate
from .worker import (
    GpuWorker,
    Job,
    JobCancelledEvent,
    JobEvent,
    JobFailed,
    JobFinished,
    JobMoved,
    JobStarted,
    JobStep,
)

log = logging.getLogger(__name__)

CLOSE_POLICY = 1008
CLOSE_GOING_AWAY = 1001


@dataclass
class ModelState:
    """The model's loading status, as the server last announced it (changed on the event loop only)."""

    status: ModelStatus


@dataclass(frozen=True)
class ServerContext:
    config: ServerConfig
    worker: GpuWorker
    model: ModelInfo
    version: str
    modes: tuple[Mode, ...] = tuple(Mode)
    """What the engine can run (``control`` only with a ControlNet loaded)."""
    model_state: ModelState = field(default_factory=lambda: ModelState(ModelStatus(ModelPhase.READY)))


class Connection:
    def __init__(self, websocket: object, context: ServerContext) -> None:
        self.ws = websocket
        self.context = context
        self.loop = asyncio.get_running_loop()
        self.outbox = Outbox(context.config.max_pending_previews)
        self.jobs: dict[int, Job] = {}
        self.inputs: dict[int, dict[int, PixelFrame]] = {}
        self.input_bytes = 0
        self.name = "?"

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        if not await self._handshake():
            return
        sender = asyncio.create_task(self._send_loop())
        try:
            async for message in self.ws:  # type: ignore[attr-defined]
                self._handle(message)
        except Exception:  # a broken socket ends this client only
            log.debug("connection %s ended abruptly", self.name, exc_info=True)
        finally:
            self._drop_all_jobs()
            self.outbox.close()
            sender.cancel()
            log.info("client %s disconnected", self.name)

    async def shutdown(self, reason: str) -> None:
        """Tell the client the server is going away, then close."""
        self._drop_all_jobs()
        self.outbox.put(encode_message(Error(ErrorCode.SHUTTING_DOWN, reason)))
        self.outbox.close()
        await asyncio.sleep(0.05)  # let the sender flush
        await self.ws.close(CLOSE_GOING_AWAY, reason)  # type: ignore[attr-defined]

    async def _handshake(self) -> bool:
        config = self.context.config
        try:
            first = await asyncio.wait_for(self.ws.recv(), config.hello_timeout)  # type: ignore[attr-defined]
            if isinstance(first, bytes):
                raise ProtocolError(ErrorCode.NOT_READY, "send hello before anything else")
            hello = decode_client_message(first, config.limits)
            if not isinstance(hello, Hello):
                raise ProtocolError(ErrorCode.NOT_READY, "send hello before anything else")
            if not config.token_matches(hello.token):
                raise ProtocolError(ErrorCode.UNAUTHORIZED, "wrong or missing token")
        except ProtocolError as error:
            log.warning("refused a client: %s", error.message)
            await self.ws.send(encode_message(Error.from_exception(error)))  # type: ignore[attr-defined]
            await self.ws.close(CLOSE_POLICY, error.code.value)  # type: ignore[attr-defined]
            return False
        except (TimeoutError, asyncio.TimeoutError):
            await self.ws.close(CLOSE_POLICY, "no hello")  # type: ignore[attr-defined]
            return False
        except Exception:  # the client went away during the handshake
            return False
        self.name = hello.client or "client"
        reply = ServerHello(
            self.context.version,
            self.context.model,
            config.limits,
            list(self.context.modes),
            status=self.context.model_state.status,
        )
        await self.ws.send(encode_message(reply))  # type: ignore[attr-defined]
        log.info("client %s connected", self.name)
        return True

    async def _send_loop(self) -> None:
        while (item := await self.outbox.get()) is not None:
            try:
                if isinstance(item, StepUpdate):
                    await self.ws.send(item.progress)  # type: ignore[attr-defined]
                    await self.ws.send(item.preview)  # type: ignore[attr-defined]
                else:
                    await self.ws.send(item)  # type: ignore[attr-defined]
            except Exception:
                log.debug("send to %s failed", self.name, exc_info=True)
                self._drop_all_jobs()
                return

    # ------------------------------------------------------------------ requests

    def _handle(self, message: str | bytes) -> None:
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
                self._generate(request)
            elif isinstance(request, Cancel):
                self._cancel(request.job_id)
            elif isinstance(request, Ping):
                self.outbox.put(encode_message(Pong(request.nonce)))
            else:
                raise ProtocolError(ErrorCode.BAD_MESSAGE, "hello was already received")
        except ProtocolError as error:
            log.info("bad message from %s: %s", self.name, error.message)
            self.outbox.put(encode_message(Error.from_exception(error)))
        except Exception:  # a bug must cost one message, not the connection
            log.exception("internal error handling a message from %s", self.name)
            self.outbox.put(
                encode_message(Error(ErrorCode.INTERNAL, "internal error: please report it", job_id))
            )

    def _store_input(self, frame: PixelFrame) -> None:
        if frame.kind is not FrameKind.INPUT:
            raise ProtocolError(ErrorCode.BAD_FRAME, "clients may only send INPUT frames", frame.job_id)
        if frame.job_id in self.jobs:
            raise ProtocolError(
                ErrorCode.DUPLICATE_JOB, f"job {frame.job_id} is already running", frame.job_id
            )
        size = len(frame.payload)
        if self.input_bytes + size > self.context.config.max_pending_input_bytes:
            self._discard_inputs(frame.job_id)
            raise ProtocolError(
                ErrorCode.TOO_LARGE, "too many input bytes waiting for their generate", frame.job_id
            )
        slots = self.inputs.setdefault(frame.job_id, {})
        if frame.index in slots:
            self.input_bytes -= len(slots[frame.index].payload)
        slots[frame.index] = frame
        self.input_bytes += size

    def _discard_inputs(self, job_id: int) -> dict[int, PixelFrame]:
        frames = self.inputs.pop(job_id, {})
        self.input_bytes -= sum(len(f.payload) for f in frames.values())
        return frames

    def _generate(self, message: Generate) -> None:
        status = self.context.model_state.status
        if status.phase is ModelPhase.FAILED:
            raise ProtocolError(
                ErrorCode.MODEL_FAILED,
                f"the backend could not load its model: {status.message}",
                message.job_id,
            )
        if message.job_id in self.jobs:
            raise ProtocolError(
                ErrorCode.DUPLICATE_JOB, f"job {message.job_id} already exists", message.job_id
            )
        request = build_request(message, input_images(message, self._discard_inputs(message.job_id)))
        try:
            request.validate()
        except RequestError as error:
            raise ProtocolError(ErrorCode.BAD_REQUEST, str(error), message.job_id) from None
        job = Job(message.job_id, request, emit=self._emitter(message.job_id))
        position = self.context.worker.submit(job)
        if position is None:
            raise ProtocolError(
                ErrorCode.QUEUE_FULL, "the job queue is full; try again later", message.job_id
            )
        self.jobs[job.job_id] = job
        self.outbox.put(encode_message(Queued(job.job_id, position)))

    def _cancel(self, job_id: int) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            raise ProtocolError(ErrorCode.UNKNOWN_JOB, f"no queued or running job {job_id}", job_id)
        if self.context.worker.cancel(job):
            del self.jobs[job_id]
            self.outbox.put(encode_message(Cancelled(job_id, 0)))

    def _drop_all_jobs(self) -> None:
        for job in list(self.jobs.values()):
            self.context.worker.cancel(job)
        self.inputs.clear()
        self.input_bytes = 0

    # ------------------------------------------------------------------ events from the worker

    def _emitter(self, job_id: int) -> Callable[[JobEvent], None]:
        """Runs on the worker thread: encode there, hand finished frames to the loop."""

        def emit(event: JobEvent) -> None:
            items = self._encode_event(job_id, event)
            terminal = isinstance(event, JobFinished | JobCancelledEvent | JobFailed)
            # RuntimeError: the loop is closed, nobody is listening any more.
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._deliver, job_id, items, terminal)

        return emit

    def _deliver(self, job_id: int, items: list[OutboxItem], terminal: bool) -> None:
        for item in items:
            self.outbox.put(item)
        if terminal:
            self.jobs.pop(job_id, None)

    @staticmethod
    def _encode_event(job_id: int, event: JobEvent) -> list[OutboxItem]:
        if isinstance(event, JobMoved):
            return [encode_message(Queued(job_id, event.position))]
        if isinstance(event, JobStarted):
            return [encode_message(Started(job_id, event.seed, event.total_steps))]
        if isinstance(event, JobStep):
            preview = event.preview
            progress = Progress(job_id, preview.step, preview.total, round(event.eta_seconds, 3))
            header = encode_frame_header(
                FrameKind.PREVIEW, job_id, preview.step, preview.width, preview.height, PixelFormat.RGB8
            )
            return [StepUpdate(job_id, encode_message(progress), header + preview.rgb.tobytes())]
        if isinstance(event, JobFinished):
            result = event.result
            height, width = result.images[0].shape[:2]
            items: list[OutboxItem] = [
                encode_message(
                    Result(
                        job_id,
                        len(result.images),
                        width,
                        height,
                        result.seeds,
                        result.model_label,
                        result.is_test_model,
                        round(result.seconds, 3),
                    )
                )
            ]
            for index, image in enumerate(result.images):
                header = encode_frame_header(
                    FrameKind.RESULT, job_id, index, width, height, PixelFormat.RGBA8
                )
                items.append(header + rgba_bytes(image))
            return items
        if isinstance(event, JobCancelledEvent):
            return [encode_message(Cancelled(job_id, event.last_step))]
        return [encode_message(Error(event.code, event.message, job_id))]
