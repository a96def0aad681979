"""Jobs as the artist sees them: submitted, queued, running with previews, done.

Qt-free and Krita-free: it turns settings plus input images into protocol
messages, and connection events into ``JobUpdate``s that the Krita layer
applies to the canvas. Tests drive it directly against a real backend.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from enum import Enum

from .connection import Connected, Connection, ConnectionEvent, ConnectionState, Received, StateChanged
from .deps import protocol
from .errors import describe_error
from .job_message import JobShape, SubmitError, auto_request, build_message, refuse, wants_refine
from .jobs import Image, Job, JobInputs, JobState, ResultPart, Target
from .model_family import with_family
from .server_trust import Untrusted
from .settings import GenerationSettings

RESULT_FRAMES = (protocol.FrameKind.RESULT, protocol.FrameKind.RESULT_TILE)


class UpdateKind(str, Enum):
    CONNECTION = "connection"
    QUEUED = "queued"
    PROGRESS = "progress"
    PREVIEW = "preview"
    RESULT_PART = "result_part"
    """A tile of a canvas-sized result (``JobUpdate.part``), before the whole is ``RESULT``."""
    RESULT = "result"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(frozen=True)
class JobUpdate:
    kind: UpdateKind
    job: Job | None = None
    message: str = ""
    preview: Image | None = None
    """A ``PREVIEW``'s own frame (the job's ``preview`` is already its newest)."""
    step: int = 0
    """The step ``preview`` shows."""
    part: ResultPart | None = None
    """A ``RESULT_PART``'s rectangle."""


def drop_stale_previews(updates: list[JobUpdate]) -> list[JobUpdate]:
    """Keep each job's newest preview, and its first step's: painting the others would only slow the
    canvas down, and a short job's first and last previews often arrive between two ticks (the
    backend's preview budget always sends both: the artist sees the job begin and end)."""
    newest = {id(u.job): index for index, u in enumerate(updates) if u.kind is UpdateKind.PREVIEW}
    return [
        u
        for index, u in enumerate(updates)
        if u.kind is not UpdateKind.PREVIEW or newest[id(u.job)] == index or u.step == 1
    ]


class Session:
    """All jobs of one connection, and the history of finished results."""

    def __init__(self, connection: Connection, history_size: int = 12) -> None:
        self.connection = connection
        self.jobs: dict[int, Job] = {}
        self.history: list[Job] = []
        self.history_size = history_size
        self.hello: protocol.ServerHello | None = None
        self.status = "not connected"
        self.untrusted: Untrusted | None = None
        """The server certificate the connection refused, for the artist to trust or not."""
        self._ids = itertools.count(1)

    @property
    def connected(self) -> bool:
        return self.connection.state is ConnectionState.CONNECTED and self.hello is not None

    @property
    def features(self) -> protocol.ModelFeatures:
        """What the backend's model offers (LoRAs, speed presets, blocks); empty until it is ready."""
        status = self.hello.status if self.hello is not None else None
        features = status.features if status is not None else None
        return features if features is not None else protocol.ModelFeatures()

    @property
    def active_jobs(self) -> list[Job]:
        return [job for job in self.jobs.values() if not job.state.finished]

    def generation_size(
        self, target: Target, settings: GenerationSettings, refine: bool = False
    ) -> tuple[int, int]:
        """The job's size: the target's (or the settings'), within the server's limits; with
        ``refine``, within its canvas limits."""
        from .pixels import fit_generation_size

        limits = self.hello.limits if self.hello else protocol.Limits()
        width, height = (
            (target.width, target.height) if settings.auto_size else (settings.width, settings.height)
        )
        if refine:
            return fit_generation_size(width, height, limits.max_canvas_side, limits.max_canvas_pixels)
        return fit_generation_size(width, height, limits.max_side, limits.max_pixels)

    def submit(
        self,
        settings: GenerationSettings,
        inputs: JobInputs,
        target: Target,
        live: bool = False,
        sweep: bool = False,
        auto: bool = False,
    ) -> Job:
        """Send a job; raises ``SubmitError`` with an artist-facing message if it cannot be sent.
        A ``live`` job replaces the previous live job on the backend (latest wins); an ``auto`` one
        ("Find strength") lets the server search its style and content scales first."""
        if not self.connected:
            raise SubmitError(f"not connected to the backend ({self.status})")
        hello = self.hello
        assert hello is not None
        refuse(settings, inputs, hello, sweep, auto)
        refine = (
            not live
            and wants_refine(settings, inputs, target.width, target.height, self.features.native_side, sweep)
            # a canvas batch shares one canvas's pixels (else: made at the model's size, as before)
            and settings.batch * target.width * target.height <= hello.limits.max_canvas_pixels
        )
        width, height = self.generation_size(target, settings, refine)
        preview_side = min(settings.preview_side, hello.limits.max_preview_side)
        shape = JobShape(
            next(self._ids),
            width,
            height,
            settings.next_seed(),
            live,
            sweep,
            preview_side,
            protocol.Refine() if refine else None,
            auto_request(settings) if auto else None,
        )
        features = self.features
        subtraction, family = features.content_subtraction, features.family
        message, frames = build_message(settings, inputs, shape, subtraction, family)
        self._check_features(message)
        try:  # the same checks the server makes, with the server's limits, before sending anything
            protocol.decode_client_message(protocol.encode_message(message), hello.limits)
        except protocol.ProtocolError as error:
            raise SubmitError(describe_error(error.code, error.message)) from None
        for index, image in frames.items():
            header = protocol.encode_frame_header(
                protocol.FrameKind.INPUT, shape.job_id, index, image.width, image.height, image.pixel_format
            )
            self.connection.send_frame(header + image.data)
        self.connection.send_message(message)
        job = Job(
            shape.job_id,
            settings.prompt,
            shape.seed,
            target,
            width,
            height,
            is_test_model=hello.model.is_test_model,
            live=live,
            auto=auto,
        )
        self.jobs[shape.job_id] = job
        return job

    def _check_features(self, message: protocol.Generate) -> None:
        """LoRAs, samplers and content subtraction this backend does not offer, said before anything is
        sent (a content-scale sweep without it would make the same picture in every cell)."""
        assert self.hello is not None
        if message.sampler is not None and message.sampler not in self.hello.samplers:
            raise SubmitError(f"this backend has no sampler '{message.sampler.value}'")
        status = self.hello.status
        if not status.ready:
            return  # the backend checks once its model is ready
        if not self.features.content_subtraction and any(
            axis.axis is protocol.SweepAxis.CONTENT_SCALE for axis in message.sweep
        ):
            raise SubmitError(
                "this backend's IP-Adapter cannot subtract content: sweep another setting than the "
                "content scale"
            )
        offered = self.features.loras
        for lora in message.loras:
            if lora.name not in offered:
                raise SubmitError(
                    f"the backend has no LoRA '{lora.name}' (it offers: {', '.join(offered) or 'none'}); "
                    "start it with --lora, or remove it from the LoRAs section"
                )

    def cancel(self, job: Job) -> None:
        if not job.state.finished and self.connected:
            self.connection.send_message(protocol.Cancel(job.job_id))

    def cancel_all(self) -> None:
        for job in self.active_jobs:
            self.cancel(job)

    def discard(self, job: Job) -> None:
        """Forget a finished result (the layers it made stay)."""
        if job in self.history:
            self.history.remove(job)

    # ------------------------------------------------------------------ events

    def update(self) -> list[JobUpdate]:
        """Drain the connection's events into job updates (call from the UI thread)."""
        updates: list[JobUpdate] = []
        for event in self.connection.poll():
            updates.extend(self._apply(event))
        return updates

    def _apply(self, event: ConnectionEvent) -> list[JobUpdate]:
        if isinstance(event, Connected):
            self.hello = event.hello
            return []
        if isinstance(event, Untrusted):
            self.untrusted = event
            return []
        if isinstance(event, StateChanged):
            if event.state is ConnectionState.CONNECTED:
                self.untrusted = None
            return self._connection_changed(event)
        return self._received(event.item) if isinstance(event, Received) else []

    def _connection_changed(self, event: StateChanged) -> list[JobUpdate]:
        if event.state is ConnectionState.CONNECTED:
            self.status = self._connected_status()
        else:
            self.status = event.message or event.state.value
        updates = [JobUpdate(UpdateKind.CONNECTION, message=self.status)]
        if event.state is not ConnectionState.CONNECTED:
            self.hello = None
            for job in self.active_jobs:  # the server cancels a lost client's jobs
                job.state, job.message = JobState.FAILED, "the connection to the backend was lost"
                updates.append(JobUpdate(UpdateKind.FAILED, job, job.message))
        return updates

    def _connected_status(self) -> str:
        if self.hello is None:
            return "connected"
        text = f"connected — {describe_model(self.hello.model)}"
        loading = self.hello.status
        if not loading.ready:
            return f"{text} — {describe_loading(loading)}"
        features = loading.features
        if features is None:  # an older backend: nothing said about its previews
            return text
        text = f"connected — {with_family(describe_model(self.hello.model), features.family)}"
        tiny_vae = features.preview is protocol.PreviewMethod.TINY_VAE
        text = f"{text} — {'full-size' if tiny_vae else 'rough'} previews"
        if features.prediction.startswith("v"):  # the artist's v-pred checkpoint was recognised
            text += " — v-prediction" + (
                " (zero SNR, CFG rescale 0.7)" if features.prediction == "v-zsnr" else ""
            )
        if features.image_adapter is protocol.ImageAdapter.PLUS:
            text += " — plus IP-Adapter (no content subtraction)"
        elif not features.content_subtraction:
            text += " — no content subtraction with this IP-Adapter"
        workers = features.workers
        if len(workers) > 1:  # jobs run side by side
            devices = sorted({worker.device for worker in workers})
            text = f"{text} — {len(workers)} workers ({', '.join(devices)})"
        return text

    def _received(self, item: protocol.ServerMessage | protocol.PixelFrame) -> list[JobUpdate]:
        if isinstance(item, protocol.ModelStatus):
            if self.hello is not None:
                self.hello = dataclasses.replace(self.hello, status=item)
            self.status = self._connected_status()
            return [JobUpdate(UpdateKind.CONNECTION, message=self.status)]
        job = self.jobs.get(getattr(item, "job_id", None) or 0)
        if job is None or job.state.finished:
            if isinstance(item, protocol.Error) and item.job_id is None:
                return [JobUpdate(UpdateKind.FAILED, None, describe_error(item.code, item.message))]
            return []
        if isinstance(item, protocol.Queued):
            job.position = item.position
            return [JobUpdate(UpdateKind.QUEUED, job)]
        if isinstance(item, protocol.Started):
            job.state, job.total = JobState.RUNNING, item.total_steps
            return [JobUpdate(UpdateKind.PROGRESS, job)]
        if isinstance(item, protocol.Progress):
            job.state, job.step, job.total, job.eta_seconds = (
                JobState.RUNNING,
                item.step,
                item.total,
                item.eta_seconds,
            )
            job.tile, job.tiles = item.tile, item.tiles
            return [JobUpdate(UpdateKind.PROGRESS, job)]
        if isinstance(item, protocol.PixelFrame) and item.kind is protocol.FrameKind.PREVIEW:
            job.preview, job.preview_step = Image.from_frame(item), item.index
            return [JobUpdate(UpdateKind.PREVIEW, job, preview=job.preview, step=item.index)]
        if isinstance(item, protocol.Result):
            job.result, job.is_test_model = item, item.is_test_model
            return []
        if isinstance(item, protocol.PixelFrame) and item.kind in RESULT_FRAMES:
            if job.result is None:
                return []  # a server sends ``result`` first; frames before it are not ours to place
            assembly = job.assembling.setdefault(
                item.index, protocol.ResultImage(job.result.width, job.result.height)
            )
            try:
                assembly.add(item)
            except protocol.ProtocolError as error:
                job.state, job.message = JobState.FAILED, describe_error(error.code, error.message)
                return [JobUpdate(UpdateKind.FAILED, job, job.message)]
            parts = []  # a tile is written into the result layer as it arrives: the canvas fills in
            if item.kind is protocol.FrameKind.RESULT_TILE:
                tile = ResultPart(item.index, item.x, item.y, Image(item.width, item.height, 4, item.payload))
                parts.append(JobUpdate(UpdateKind.RESULT_PART, job, part=tile))
            if assembly.complete:
                job.images.append(Image(assembly.width, assembly.height, 4, bytes(assembly.pixels)))
                del job.assembling[item.index]
            if len(job.images) == job.result.count:
                job.state = JobState.DONE
                if not job.live:
                    self.history.insert(0, job)
                    del self.history[self.history_size :]
                return [*parts, JobUpdate(UpdateKind.RESULT, job)]
            return parts
        if isinstance(item, protocol.Cancelled):
            job.state, job.step, job.message = JobState.CANCELLED, item.step, "cancelled"
            return [JobUpdate(UpdateKind.CANCELLED, job, "cancelled")]
        if isinstance(item, protocol.Error):
            job.state, job.message = JobState.FAILED, describe_error(item.code, item.message)
            return [JobUpdate(UpdateKind.FAILED, job, job.message)]
        return []


def describe_loading(status: protocol.ModelStatus) -> str:
    """The backend's loading phase in words ("Downloading models: 3.1 of 11.3 GB (4 of 17 files)"):
    jobs sent meanwhile wait for it, or fail once it failed."""
    if status.phase is protocol.ModelPhase.FAILED:
        return f"it could not load its model: {status.message or 'see its console'}"
    what = status.message or status.phase.value.replace("_", " ")
    return f"{what}; jobs wait until the model is ready"


def describe_model(model: protocol.ModelInfo) -> str:
    """The backend's model for the docker's status line; a low-memory tier is worth knowing (slower)."""
    if model.memory_tier and model.memory_tier != "full":
        return f"{model.label}; GPU memory tier {model.memory_tier}: fits a smaller card, runs slower"
    return model.label
