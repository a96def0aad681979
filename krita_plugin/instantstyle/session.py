"""Jobs as the artist sees them: submitted, queued, running with previews, done.

Qt-free and Krita-free: it turns settings plus input images into protocol
messages, and connection events into ``JobUpdate``s that the Krita layer
applies to the canvas. Tests drive it directly against a real backend.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from enum import Enum

from .connection import Connected, Connection, ConnectionEvent, ConnectionState, Received, StateChanged
from .deps import protocol
from .errors import describe_error
from .settings import GenerationSettings, JobKind


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.CANCELLED, JobState.FAILED)


@dataclass(frozen=True)
class Image:
    """Raw 8-bit pixels; ``channels`` 1 (gray), 3 (RGB) or 4 (RGBA)."""

    width: int
    height: int
    channels: int
    data: bytes

    @property
    def pixel_format(self) -> protocol.PixelFormat:
        return {1: protocol.PixelFormat.GRAY8, 3: protocol.PixelFormat.RGB8, 4: protocol.PixelFormat.RGBA8}[
            self.channels
        ]

    @classmethod
    def from_frame(cls, frame: protocol.PixelFrame) -> Image:
        return cls(frame.width, frame.height, frame.format.channels, frame.payload)


@dataclass(frozen=True)
class Target:
    """Where the result goes: an area of a document, above a layer."""

    x: int
    y: int
    width: int
    height: int
    document_id: object = None
    above_layer: str = ""
    """uniqueId of the layer the result goes above (empty: top)."""


@dataclass(frozen=True)
class RegionInput:
    """A region's mask (gray, the target's size) and its references."""

    name: str
    mask: Image
    styles: list[tuple[Image, float]]


@dataclass(frozen=True)
class JobInputs:
    styles: list[tuple[Image, float]]
    init_image: Image | None = None
    mask: Image | None = None
    regions: list[RegionInput] = field(default_factory=list)


@dataclass
class Job:
    job_id: int
    prompt: str
    seed: int
    target: Target
    width: int
    height: int
    state: JobState = JobState.QUEUED
    position: int = 0
    step: int = 0
    total: int = 0
    eta_seconds: float = 0.0
    preview: Image | None = None
    preview_step: int = 0
    """The step ``preview`` shows."""
    result: protocol.Result | None = None
    images: list[Image] = field(default_factory=list)
    message: str = ""
    is_test_model: bool = False
    live: bool = False
    """A live job: its result goes to the live layer, not to the history (``live.py``)."""

    @property
    def label(self) -> str:
        return self.prompt.strip().replace("\n", " ")[:40] or "untitled"

    @property
    def layer_names(self) -> list[str]:
        suffix = " [TEST MODEL]" if self.is_test_model else ""
        if self.result is not None and self.result.cells:
            return [
                f"InstantStyle: {self.label} ({describe_cell(cell)}){suffix}" for cell in self.result.cells
            ]
        seeds = self.result.seeds if self.result else [self.seed]
        return [f"InstantStyle: {self.label} (seed {seed}){suffix}" for seed in seeds]

    @property
    def is_sweep(self) -> bool:
        return self.result is not None and bool(self.result.cells)

    def scores(self, index: int) -> protocol.Scores | None:
        scores = self.result.scores if self.result is not None else []
        return scores[index] if index < len(scores) else None


class UpdateKind(str, Enum):
    CONNECTION = "connection"
    QUEUED = "queued"
    PROGRESS = "progress"
    PREVIEW = "preview"
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


class SubmitError(ValueError):
    """The job cannot be sent as set up; the message is for the artist."""


class Session:
    """All jobs of one connection, and the history of finished results."""

    def __init__(self, connection: Connection, history_size: int = 12) -> None:
        self.connection = connection
        self.jobs: dict[int, Job] = {}
        self.history: list[Job] = []
        self.history_size = history_size
        self.hello: protocol.ServerHello | None = None
        self.status = "not connected"
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

    def generation_size(self, target: Target, settings: GenerationSettings) -> tuple[int, int]:
        from .pixels import fit_generation_size

        limits = self.hello.limits if self.hello else protocol.Limits()
        width, height = (
            (target.width, target.height) if settings.auto_size else (settings.width, settings.height)
        )
        return fit_generation_size(width, height, limits.max_side, limits.max_pixels)

    def submit(
        self,
        settings: GenerationSettings,
        inputs: JobInputs,
        target: Target,
        live: bool = False,
        sweep: bool = False,
    ) -> Job:
        """Send a job; raises ``SubmitError`` with an artist-facing message if it cannot be sent.
        A ``live`` job replaces the previous live job on the backend (latest wins)."""
        if not self.connected:
            raise SubmitError(f"not connected to the backend ({self.status})")
        if not inputs.styles and not inputs.regions:
            raise SubmitError("pick a style reference first")
        if settings.kind is not JobKind.NEW_IMAGE and inputs.init_image is None:
            raise SubmitError("stylize needs a layer to start from")
        if settings.kind is JobKind.KEEP_LINES and protocol.Mode.CONTROL not in self.hello.modes:  # type: ignore[union-attr]
            raise SubmitError(
                "the backend has no ControlNet for keeping lines: start it with --controlnet, "
                "or choose plain stylize"
            )
        try:
            block_scales = settings.custom_block_scales()
            sweep_axes = settings.sweep_values() if sweep else []
        except ValueError as error:
            raise SubmitError(str(error)) from None
        width, height = self.generation_size(target, settings)
        mode = protocol.Mode.TXT2IMG
        if settings.kind is JobKind.STYLIZE:
            mode = protocol.Mode.INPAINT if inputs.mask is not None else protocol.Mode.IMG2IMG
        elif settings.kind is JobKind.KEEP_LINES:
            mode = protocol.Mode.CONTROL  # a selection still limits where the result shows (its alpha)
        job_id = next(self._ids)
        frames: dict[int, Image] = {index: image for index, (image, _) in enumerate(inputs.styles)}
        init_index = mask_index = None
        if mode is not protocol.Mode.TXT2IMG:
            init_index = len(frames)
            frames[init_index] = inputs.init_image  # type: ignore[assignment]
        if mode is protocol.Mode.INPAINT:
            mask_index = len(frames)
            frames[mask_index] = inputs.mask  # type: ignore[assignment]
        regions = []
        for region in inputs.regions:
            frames[len(frames)] = region.mask
            mask = len(frames) - 1
            references = []
            for image, weight in region.styles:
                frames[len(frames)] = image
                references.append(protocol.StyleImage(len(frames) - 1, weight))
            regions.append(protocol.Region(mask, references, name=region.name[:100]))
        seed = settings.next_seed()
        message = protocol.Generate(
            job_id=job_id,
            prompt=settings.prompt,
            style_images=[protocol.StyleImage(i, weight) for i, (_, weight) in enumerate(inputs.styles)],
            negative_prompt=settings.negative_prompt,
            content_text=settings.content_text,
            content_scale=settings.content_scale,
            preset=protocol.BlockPreset(settings.preset),
            block_scales=block_scales,
            style_scale=settings.style_scale,
            layout_push=settings.layout_push,
            mode=mode,
            init_image=init_index,
            mask=mask_index,
            strength=settings.strength,
            control_scale=settings.control_scale,
            width=width,
            height=height,
            steps=settings.steps,
            guidance_scale=settings.guidance_scale,
            seed=seed,
            batch=1 if sweep_axes else settings.batch,
            sampler=protocol.Sampler(settings.sampler) if settings.sampler else None,
            loras=[protocol.LoraWeight(lora.name, lora.weight) for lora in settings.loras],
            live=live,
            regions=regions,
            sweep=sweep_axes,
            preview_side=min(settings.preview_side, self.hello.limits.max_preview_side),  # type: ignore[union-attr]
        )
        self._check_features(message)
        try:  # the same checks the server makes, with the server's limits, before sending anything
            protocol.decode_client_message(protocol.encode_message(message), self.hello.limits)  # type: ignore[union-attr]
        except protocol.ProtocolError as error:
            raise SubmitError(describe_error(error.code, error.message)) from None
        for index, image in frames.items():
            header = protocol.encode_frame_header(
                protocol.FrameKind.INPUT, job_id, index, image.width, image.height, image.pixel_format
            )
            self.connection.send_frame(header + image.data)
        self.connection.send_message(message)
        job = Job(
            job_id,
            settings.prompt,
            seed,
            target,
            width,
            height,
            is_test_model=self.hello.model.is_test_model,  # type: ignore[union-attr]
            live=live,
        )
        self.jobs[job_id] = job
        return job

    def _check_features(self, message: protocol.Generate) -> None:
        """LoRAs and samplers this backend does not offer, said before anything is sent."""
        assert self.hello is not None
        if message.sampler is not None and message.sampler not in self.hello.samplers:
            raise SubmitError(f"this backend has no sampler '{message.sampler.value}'")
        status = self.hello.status
        if not status.ready:
            return  # the backend checks once its model is ready
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
        if isinstance(event, StateChanged):
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
        tiny_vae = features.preview is protocol.PreviewMethod.TINY_VAE
        text = f"{text} — {'full-size' if tiny_vae else 'rough'} previews"
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
            return [JobUpdate(UpdateKind.PROGRESS, job)]
        if isinstance(item, protocol.PixelFrame) and item.kind is protocol.FrameKind.PREVIEW:
            job.preview, job.preview_step = Image.from_frame(item), item.index
            return [JobUpdate(UpdateKind.PREVIEW, job, preview=job.preview, step=item.index)]
        if isinstance(item, protocol.Result):
            job.result, job.is_test_model = item, item.is_test_model
            return []
        if isinstance(item, protocol.PixelFrame) and item.kind is protocol.FrameKind.RESULT:
            job.images.append(Image.from_frame(item))
            if job.result is not None and len(job.images) == job.result.count:
                job.state = JobState.DONE
                if not job.live:
                    self.history.insert(0, job)
                    del self.history[self.history_size :]
                return [JobUpdate(UpdateKind.RESULT, job)]
            return []
        if isinstance(item, protocol.Cancelled):
            job.state, job.step, job.message = JobState.CANCELLED, item.step, "cancelled"
            return [JobUpdate(UpdateKind.CANCELLED, job, "cancelled")]
        if isinstance(item, protocol.Error):
            job.state, job.message = JobState.FAILED, describe_error(item.code, item.message)
            return [JobUpdate(UpdateKind.FAILED, job, job.message)]
        return []


def describe_cell(cell: protocol.SweepCell) -> str:
    """A sweep cell's settings, as its layer is named: ``style 0.6, content 0.5, precise, seed 7``."""
    return (
        f"style {cell.style_scale:g}, content {cell.content_scale:g}, {cell.preset.value}, seed {cell.seed}"
    )


SCORE_NAMES = (("style", "style"), ("content", "leakage"), ("prompt", "prompt"))
"""Each score's field and the word an artist reads: the content score is how much content leaked."""


def describe_scores(scores: protocol.Scores | None, lines: bool = False) -> str:
    """``style 0.81 · leakage 0.10 · prompt 0.30`` (``lines``: one score per line, for a thumbnail)."""
    if scores is None:
        return ""
    parts = [(word, getattr(scores, name)) for name, word in SCORE_NAMES]
    words = [f"{word} {value:.2f}" for word, value in parts if value is not None]
    return ("\n" if lines else " · ").join(words)


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
