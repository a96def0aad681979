"""Every JSON control message, as a dataclass.

Field annotations give the type, ``bounds`` the hard limits that hold for every
server; a server's own (usually tighter) limits are the ``Limits`` it announces
in ``hello`` and are checked by ``Generate.check_limits``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .enums import (
    BlockPreset,
    ControlKind,
    ErrorCode,
    ImageAdapter,
    MessageType,
    Mode,
    ModelFamily,
    ModelPhase,
    PreviewMethod,
    Sampler,
    SearchStage,
    StyleMetric,
)
from .errors import ProtocolError
from .generate import Auto, Generate, LoraWeight, Refine, Region, StyleImage, SweepValues
from .limits import (
    DEFAULT_LEAKAGE_MARGIN,
    DEFAULT_PROMPT_MARGIN,
    MAX_AUTO_POINTS,
    MAX_JOB_ID,
    MAX_SEED,
    MAX_TEXT,
    MAX_TILES,
    Limits,
)
from .schema import bounds

__all__ = ["Auto", "Generate", "Limits", "LoraWeight", "Refine", "Region", "StyleImage", "SweepValues"]

# ---------------------------------------------------------------- client -> server


@dataclass(frozen=True)
class Hello:
    """First message from a client; the token is required when the server has one."""

    TYPE: ClassVar[MessageType] = MessageType.HELLO
    client: str = field(default="", metadata=bounds(max_length=200))
    token: str | None = field(default=None, metadata=bounds(max_length=1000))


@dataclass(frozen=True)
class Cancel:
    TYPE: ClassVar[MessageType] = MessageType.CANCEL
    job_id: int = field(metadata=bounds(1, MAX_JOB_ID))


@dataclass(frozen=True)
class Ping:
    TYPE: ClassVar[MessageType] = MessageType.PING
    nonce: int = field(default=0, metadata=bounds(0, MAX_JOB_ID))


# ---------------------------------------------------------------- server -> client


@dataclass(frozen=True)
class ModelInfo:
    label: str = field(metadata=bounds(max_length=500))
    is_test_model: bool
    device: str = field(default="", metadata=bounds(max_length=100))
    dtype: str = field(default="", metadata=bounds(max_length=100))
    memory_tier: str = field(default="", metadata=bounds(max_length=100))
    """How much of the model lives on the GPU: full, encoders-off, model-offload or group-offload."""


@dataclass(frozen=True)
class SpeedPresetInfo:
    """A few-step preset: the settings it fills in (the artist may change each before sending)."""

    name: str = field(metadata=bounds(max_length=64))
    label: str = field(metadata=bounds(max_length=200))
    lora: str = field(metadata=bounds(max_length=64))
    lora_weight: float
    sampler: Sampler
    steps: int = field(metadata=bounds(1, 1000))
    guidance_scale: float = field(metadata=bounds(0.0, 30.0))


@dataclass(frozen=True)
class WorkerInfo:
    """One of the server's workers: each runs one job at a time on its own copy of the model."""

    name: str = field(metadata=bounds(max_length=200))
    device: str = field(metadata=bounds(max_length=200))


LAYOUT_PUSH_BLOCKS = "layout_push"
"""The ``features.preset_blocks`` key beside the ``BlockPreset`` values: where ``precise`` pushes the
reference's layout away."""
MAX_PRESET_BLOCK_KEYS = 16
MAX_BLOCK_NAME = 100


@dataclass(frozen=True)
class ModelFeatures:
    """What the loaded model offers beyond the protocol's fixed choices (known once it is ready)."""

    loras: list[str] = field(default_factory=list, metadata=bounds(max_items=1000))
    """What ``generate.loras`` may name."""
    speed_presets: list[SpeedPresetInfo] = field(default_factory=list, metadata=bounds(max_items=100))
    attention_blocks: list[str] = field(default_factory=list, metadata=bounds(max_items=1000))
    """The UNet's attention blocks (``up_blocks.0.attentions.1``...): what ``block_scales`` can address,
    ``{"up": {"block_0": [a0, a1, a2]}}`` setting ``up_blocks.0.attentions.0`` to ``.2``."""
    problems: list[str] = field(default_factory=list, metadata=bounds(max_items=1000))
    """One line for each thing asked for at start that is not available (a LoRA file that failed)."""
    preview: PreviewMethod = PreviewMethod.LINEAR
    """How step previews are drawn: ``tiny-vae`` frames come at ``generate.preview_side``."""
    workers: list[WorkerInfo] = field(default_factory=list, metadata=bounds(max_items=1024))
    """Where jobs run: one entry per worker (jobs run side by side on several); empty from older
    servers (one worker)."""
    native_side: int = field(default=0, metadata=bounds(0, 16384))
    """The side the model was trained at (1024 for SDXL, 512 for SD1.5): a canvas larger than its
    area is best made with ``generate.refine``; 0: not said."""
    prediction: str = field(default="", metadata=bounds(max_length=20))
    """What the UNet predicts: ``epsilon``, ``v`` or ``v-zsnr`` (v-prediction with zero terminal SNR,
    whose jobs get ``guidance_rescale`` 0.7 unless they say otherwise); empty: not said."""
    image_adapter: ImageAdapter = ImageAdapter.PLAIN
    """What the IP-Adapter reads from style images; ``plus`` adapters take no ``content_text``."""
    content_subtraction: bool = True
    """Whether ``content_text`` can be subtracted (the image encoder shares a text tower's space and
    the adapter reads the pooled embedding); false: a job with one is refused in one line."""
    family: ModelFamily = ModelFamily.SDXL
    """Which kind of base model is loaded: block names, native size and encoders follow it (older
    servers: SDXL, the only family they had)."""
    controls: list[ControlKind] = field(default_factory=list, metadata=bounds(max_items=16))
    """What mode ``control`` can keep (``generate.control``); empty from older servers: ``edges``
    where ``hello.modes`` has ``control``."""
    style_metric: StyleMetric = StyleMetric.CLIP
    """What the ``scores.style`` of this server's results measure."""
    preset_blocks: dict[str, list[str]] = field(
        default_factory=dict,
        metadata=bounds(max_keys=MAX_PRESET_BLOCK_KEYS, max_items=1000, max_length=MAX_BLOCK_NAME),
    )
    """The attention blocks each ``BlockPreset`` (``style``, ``style+layout``, ``precise``) gives the
    style at full weight, and under ``layout_push`` the blocks where ``precise`` pushes the layout
    away; names from ``attention_blocks``. Empty: not said (an older server: SDXL's
    ``up_blocks.0.attentions.1`` for style, ``down_blocks.2.attentions.1`` for layout)."""


@dataclass(frozen=True)
class ModelStatus:
    """How far the server is in loading its model; sent in ``hello`` and whenever it changes.

    While downloading, ``bytes_done`` of ``bytes_total`` are the weights fetched so far (0 of 0 when
    nothing needs downloading); ``message`` is one line for the artist (what is loading, or why it failed).
    """

    TYPE: ClassVar[MessageType] = MessageType.MODEL_STATUS
    phase: ModelPhase
    message: str = field(default="", metadata=bounds(max_length=MAX_TEXT))
    bytes_done: int = field(default=0, metadata=bounds(0, None))
    bytes_total: int = field(default=0, metadata=bounds(0, None))
    features: ModelFeatures | None = None
    """With ``ready``: what the model offers (LoRAs, speed presets, attention blocks)."""

    @property
    def ready(self) -> bool:
        return self.phase is ModelPhase.READY


@dataclass(frozen=True)
class ServerHello:
    """The server's answer to ``hello``: who it is and what it accepts."""

    TYPE: ClassVar[MessageType] = MessageType.HELLO
    server_version: str = field(metadata=bounds(max_length=100))
    model: ModelInfo
    limits: Limits
    modes: list[Mode] = field(default_factory=lambda: list(Mode))
    presets: list[BlockPreset] = field(default_factory=lambda: list(BlockPreset))
    status: ModelStatus = field(default_factory=lambda: ModelStatus(ModelPhase.READY))
    """The model's loading phase at connection time; ``model_status`` messages follow as it changes."""
    samplers: list[Sampler] = field(default_factory=list)
    """What ``generate.sampler`` may name on this server (absent from older servers: none)."""


@dataclass(frozen=True)
class Queued:
    TYPE: ClassVar[MessageType] = MessageType.QUEUED
    job_id: int = field(metadata=bounds(1, MAX_JOB_ID))
    position: int = field(metadata=bounds(0, None))
    """Jobs ahead of this one (0 = runs next)."""


@dataclass(frozen=True)
class Started:
    TYPE: ClassVar[MessageType] = MessageType.STARTED
    job_id: int = field(metadata=bounds(1, MAX_JOB_ID))
    seed: int = field(metadata=bounds(0, MAX_SEED))
    total_steps: int = field(metadata=bounds(0, None))


@dataclass(frozen=True)
class Progress:
    """One denoising step done; a PREVIEW frame with ``index == step`` may follow. With ``tiles``: a
    canvas refined at its own size runs its steps in tiles, and ``tile`` of ``tiles`` are done in
    the step after ``step`` (no PREVIEW follows: a step is pictured once all its tiles are done)."""

    TYPE: ClassVar[MessageType] = MessageType.PROGRESS
    job_id: int = field(metadata=bounds(1, MAX_JOB_ID))
    step: int = field(metadata=bounds(1, None))
    total: int = field(metadata=bounds(1, None))
    eta_seconds: float = field(default=0.0, metadata=bounds(0.0, None))
    tile: int = field(default=0, metadata=bounds(0, MAX_TILES))
    tiles: int = field(default=0, metadata=bounds(0, MAX_TILES))

    def __post_init__(self) -> None:
        if self.tile > self.tiles or (self.tiles and not self.tile):
            raise ProtocolError(ErrorCode.BAD_FIELD, "progress.tile must be 1..tiles when tiles is set")

    def describe(self) -> str:
        """ "step 3/30", or within a tiled step "step 6/25, tile 7/24"."""
        if self.tiles:
            return f"step {min(self.step + 1, self.total)}/{self.total}, tile {self.tile}/{self.tiles}"
        return f"step {self.step}/{self.total}"


@dataclass(frozen=True)
class Scores:
    """One image's balance, as cosines in the CLIP space InstantStyle works in (-1..1, higher = more):
    ``style`` with the references, ``content`` with the content description (the leakage content
    subtraction lowers; absent without one), ``prompt`` with the prompt (absent where the IP-Adapter's
    image space is not the text encoder's)."""

    style: float = field(metadata=bounds(-1.0, 1.0))
    content: float | None = field(default=None, metadata=bounds(-1.0, 1.0))
    prompt: float | None = field(default=None, metadata=bounds(-1.0, 1.0))
    style_metric: StyleMetric = StyleMetric.CLIP
    """What made ``style``: CLIP image embeddings, or CSD style descriptors."""


@dataclass(frozen=True)
class AutoPoint:
    """One setting an auto-strength search tried, with the scores of its picture."""

    style_scale: float = field(metadata=bounds(0.0, 2.0))
    content_scale: float = field(metadata=bounds(0.0, 2.0))
    preset: BlockPreset
    scores: Scores
    stage: SearchStage = SearchStage.COARSE


@dataclass(frozen=True)
class AutoSearch:
    """How a job with ``auto`` found its strength: every point tried (at ``width`` × ``height``,
    ``steps`` steps), the ``chosen`` one's index, and one line saying why it won (``passed`` false: no
    point kept within both margins, and the line says what was chosen instead)."""

    points: list[AutoPoint] = field(metadata=bounds(max_items=MAX_AUTO_POINTS))
    chosen: int = field(metadata=bounds(0, MAX_AUTO_POINTS - 1))
    passed: bool
    reason: str = field(metadata=bounds(max_length=MAX_TEXT))
    width: int = field(metadata=bounds(1, None))
    height: int = field(metadata=bounds(1, None))
    steps: int = field(metadata=bounds(1, None))
    leakage_margin: float = field(default=DEFAULT_LEAKAGE_MARGIN, metadata=bounds(0.0, 1.0))
    prompt_margin: float = field(default=DEFAULT_PROMPT_MARGIN, metadata=bounds(0.0, 1.0))

    def __post_init__(self) -> None:
        if self.chosen >= len(self.points):
            raise ProtocolError(ErrorCode.BAD_FIELD, "auto.chosen must index auto.points")


@dataclass(frozen=True)
class SweepCell:
    """The settings of one picture of a sweep."""

    style_scale: float
    content_scale: float
    preset: BlockPreset
    seed: int = field(metadata=bounds(0, MAX_SEED))


@dataclass(frozen=True)
class Result:
    """The job finished; ``count`` RESULT frames with index 0..count-1 follow."""

    TYPE: ClassVar[MessageType] = MessageType.RESULT
    job_id: int = field(metadata=bounds(1, MAX_JOB_ID))
    count: int = field(metadata=bounds(1, None))
    width: int = field(metadata=bounds(1, None))
    height: int = field(metadata=bounds(1, None))
    seeds: list[int]
    model: str = field(default="", metadata=bounds(max_length=500))
    is_test_model: bool = False
    seconds: float = field(default=0.0, metadata=bounds(0.0, None))
    scores: list[Scores] = field(default_factory=list, metadata=bounds(max_items=1000))
    """One per image, in order."""
    cells: list[SweepCell] = field(default_factory=list, metadata=bounds(max_items=1000))
    """For a sweep: each image's settings, in order (row by row: the first axis varies slowest)."""
    auto: AutoSearch | None = None
    """For a job with ``auto``: the search that chose its images' style and content scales."""


@dataclass(frozen=True)
class Cancelled:
    TYPE: ClassVar[MessageType] = MessageType.CANCELLED
    job_id: int = field(metadata=bounds(1, MAX_JOB_ID))
    step: int = field(default=0, metadata=bounds(0, None))
    """The last step that ran (0 = cancelled while queued). A sweep counts its steps across its cells:
    one cancelled while it waits for its next cell's turn says the steps of the cells done."""


@dataclass(frozen=True)
class Error:
    """Something failed; with a ``job_id`` it ended that job only."""

    TYPE: ClassVar[MessageType] = MessageType.ERROR
    code: ErrorCode
    message: str = field(metadata=bounds(max_length=MAX_TEXT))
    job_id: int | None = field(default=None, metadata=bounds(0, MAX_JOB_ID))

    @classmethod
    def from_exception(cls, error: ProtocolError) -> Error:
        return cls(error.code, error.message[:MAX_TEXT], error.job_id)


@dataclass(frozen=True)
class Pong:
    TYPE: ClassVar[MessageType] = MessageType.PONG
    nonce: int = field(default=0, metadata=bounds(0, MAX_JOB_ID))


ClientMessage = Hello | Generate | Cancel | Ping
ServerMessage = ServerHello | Queued | Started | Progress | Result | Cancelled | Error | Pong | ModelStatus

CLIENT_MESSAGES: dict[MessageType, type] = {m.TYPE: m for m in (Hello, Generate, Cancel, Ping)}
SERVER_MESSAGES: dict[MessageType, type] = {
    m.TYPE: m for m in (ServerHello, Queued, Started, Progress, Result, Cancelled, Error, Pong, ModelStatus)
}
