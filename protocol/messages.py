"""Every JSON control message, as a dataclass.

Field annotations give the type, ``bounds`` the hard limits that hold for every
server; a server's own (usually tighter) limits are the ``Limits`` it announces
in ``hello`` and are checked by ``Generate.check_limits``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .enums import BlockPreset, ErrorCode, MessageType, Mode, ModelPhase, Sampler, SweepAxis
from .errors import ProtocolError
from .schema import bounds, shown

MAX_JOB_ID = 2**32 - 1
MAX_SEED = 2**32 - 1
MAX_TEXT = 4000
MAX_INPUT_INDEX = 63
"""INPUT frame indices a job may use (style images, init image, mask)."""
MAX_BLOCK_SCALE = 10.0
"""Largest per-block IP-Adapter scale (InstantStyle uses about 1; 10 is already far past useful)."""
MAX_BLOCK_DEPTH = 4
MAX_LORAS = 8
"""LoRAs one job may use at once."""
MAX_LORA_WEIGHT = 4.0
MAX_LAYOUT_PUSH = 5.0
MAX_REGIONS = 8
MAX_SWEEP_AXES = 2
MAX_SWEEP_VALUES = 16
DEFAULT_LAYOUT_PUSH = 2.0
"""ComfyUI_IPAdapter_plus's advice for SDXL's "style transfer precise"."""


def _leaves(tree: dict, path: str, depth: int = 0) -> list[tuple[str, object]]:
    """The values of a (nested) block-scale map with their dotted names: ``{"up": {"block_0": [0, 1]}}``
    gives ``up.block_0[0]`` and ``up.block_0[1]``."""
    if depth > MAX_BLOCK_DEPTH:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{shown(path)} is nested too deeply")
    found: list[tuple[str, object]] = []
    for key, value in tree.items():
        name = f"{path}.{key}"
        if isinstance(value, dict):
            found.extend(_leaves(value, name, depth + 1))
        elif isinstance(value, list):
            found.extend((f"{name}[{i}]", item) for i, item in enumerate(value))
        else:
            found.append((name, value))
    return found


@dataclass(frozen=True)
class Limits:
    """What a server accepts; sent in ``hello`` so clients can check before sending."""

    max_side: int = field(default=2048, metadata=bounds(8, 16384))
    max_pixels: int = field(default=2048 * 2048, metadata=bounds(64, 16384 * 16384))
    max_steps: int = field(default=150, metadata=bounds(1, 1000))
    max_batch: int = field(default=8, metadata=bounds(1, 64))
    max_style_images: int = field(default=4, metadata=bounds(1, 16))
    max_message_bytes: int = field(default=2048 * 2048 * 4 + 64, metadata=bounds(1024, 2**31))
    """Largest WebSocket message accepted: one RGBA image of max_side x max_side plus its header."""
    max_queued_jobs: int = field(default=32, metadata=bounds(1, 10000))
    max_regions: int = field(default=4, metadata=bounds(0, MAX_REGIONS))
    """Regions one job may have (``generate.regions``)."""
    max_sweep_cells: int = field(default=16, metadata=bounds(1, MAX_SWEEP_VALUES**MAX_SWEEP_AXES))
    """Cells (pictures) one sweep may make."""


# ---------------------------------------------------------------- client -> server


@dataclass(frozen=True)
class Hello:
    """First message from a client; the token is required when the server has one."""

    TYPE: ClassVar[MessageType] = MessageType.HELLO
    client: str = field(default="", metadata=bounds(max_length=200))
    token: str | None = field(default=None, metadata=bounds(max_length=1000))


@dataclass(frozen=True)
class StyleImage:
    """A style reference: the index of an INPUT frame sent before ``generate``, and its weight."""

    input: int = field(metadata=bounds(0, MAX_INPUT_INDEX))
    weight: float = field(default=1.0, metadata=bounds(0.0, 10.0))


@dataclass(frozen=True)
class LoraWeight:
    """A LoRA of ``hello.loras`` and how strongly it applies (0: as if absent; negative: the opposite)."""

    name: str = field(metadata=bounds(max_length=64))
    weight: float = field(default=1.0, metadata=bounds(-MAX_LORA_WEIGHT, MAX_LORA_WEIGHT))


@dataclass(frozen=True)
class Region:
    """A part of the picture with its own style: white in the ``mask`` INPUT frame (gray, the job's
    size or its init image's), styled by its own references."""

    mask: int = field(metadata=bounds(0, MAX_INPUT_INDEX))
    style_images: list[StyleImage] = field(metadata=bounds(max_items=16))
    content_text: str | None = field(default=None, metadata=bounds(max_length=MAX_TEXT))
    """What this region's references show, to subtract; absent: the job's ``content_text``."""
    name: str = field(default="", metadata=bounds(max_length=100))


@dataclass(frozen=True)
class SweepValues:
    """One axis of a sweep and its values: numbers 0..2 for the scales, preset names (not ``custom``)
    for ``preset``, seeds for ``seed``."""

    axis: SweepAxis
    values: list[Any] = field(metadata=bounds(max_items=MAX_SWEEP_VALUES))

    def check(self, fail: Any) -> None:
        if not self.values:
            raise fail(ErrorCode.MISSING_FIELD, f"sweep axis {self.axis.value} needs at least one value")
        for value in self.values:
            if self.axis is SweepAxis.PRESET:
                presets = [p.value for p in BlockPreset if p is not BlockPreset.CUSTOM]
                if value not in presets:
                    raise fail(
                        ErrorCode.BAD_FIELD,
                        f"sweep preset {shown(repr(value), 40)} is not one of {', '.join(presets)}",
                    )
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise fail(ErrorCode.BAD_FIELD, f"sweep {self.axis.value} values must be numbers")
            if self.axis is SweepAxis.SEED and (not isinstance(value, int) or not 0 <= value <= MAX_SEED):
                raise fail(ErrorCode.OUT_OF_RANGE, f"sweep seeds must be whole numbers from 0 to {MAX_SEED}")
            if self.axis is not SweepAxis.SEED and not 0.0 <= value <= 2.0:
                raise fail(ErrorCode.OUT_OF_RANGE, f"sweep {self.axis.value} values must be from 0 to 2")


@dataclass(frozen=True)
class Generate:
    """Start a job. Images travel as INPUT binary frames (same ``job_id``) sent just before."""

    TYPE: ClassVar[MessageType] = MessageType.GENERATE
    job_id: int = field(metadata=bounds(1, MAX_JOB_ID))
    prompt: str = field(metadata=bounds(max_length=MAX_TEXT))
    style_images: list[StyleImage] = field(metadata=bounds(max_items=16))
    negative_prompt: str | None = field(default=None, metadata=bounds(max_length=MAX_TEXT))
    content_text: str = field(default="", metadata=bounds(max_length=MAX_TEXT))
    content_scale: float = field(default=0.5, metadata=bounds(0.0, 2.0))
    preset: BlockPreset = BlockPreset.STYLE
    block_scales: dict[str, Any] | None = None
    style_scale: float = field(default=1.0, metadata=bounds(0.0, 2.0))
    layout_push: float = field(default=DEFAULT_LAYOUT_PUSH, metadata=bounds(0.0, MAX_LAYOUT_PUSH))
    """For preset ``precise``: how hard the reference's layout is pushed away (0 = the style preset)."""
    mode: Mode = Mode.TXT2IMG
    init_image: int | None = field(default=None, metadata=bounds(0, MAX_INPUT_INDEX))
    mask: int | None = field(default=None, metadata=bounds(0, MAX_INPUT_INDEX))
    strength: float = field(default=0.6, metadata=bounds(0.01, 1.0))
    control_scale: float = field(default=0.6, metadata=bounds(0.0, 2.0))
    width: int = field(default=1024, metadata=bounds(8, 16384))
    height: int = field(default=1024, metadata=bounds(8, 16384))
    steps: int = field(default=30, metadata=bounds(1, 1000))
    guidance_scale: float = field(default=5.0, metadata=bounds(0.0, 30.0))
    seed: int | None = field(default=None, metadata=bounds(0, MAX_SEED))
    batch: int = field(default=1, metadata=bounds(1, 64))
    sampler: Sampler | None = None
    """One of ``hello.samplers``; absent: the model's own scheduler."""
    loras: list[LoraWeight] = field(default_factory=list, metadata=bounds(max_items=MAX_LORAS))
    """LoRAs of ``hello.loras`` with their weights; absent: none."""
    regions: list[Region] = field(default_factory=list, metadata=bounds(max_items=MAX_REGIONS))
    """Parts of the picture with their own references; ``style_images`` then style the rest (and may
    be empty: no style outside the regions)."""
    sweep: list[SweepValues] = field(default_factory=list, metadata=bounds(max_items=MAX_SWEEP_AXES))
    """A grid over one or two axes: one picture per cell (``batch`` must be 1), each scored; the
    result's ``cells`` say each picture's settings."""
    live: bool = False
    """Latest wins: this job replaces the client's earlier live job, cancelled at its next step (or
    dropped from the queue). For re-rendering while the artist paints."""

    @property
    def sweep_cells(self) -> int:
        cells = 1
        for values in self.sweep:
            cells *= len(values.values)
        return cells

    def input_indices(self) -> set[int]:
        used = {ref.input for ref in self.style_images}
        used.update(i for i in (self.init_image, self.mask) if i is not None)
        for region in self.regions:
            used.add(region.mask)
            used.update(ref.input for ref in region.style_images)
        return used

    def check_limits(self, limits: Limits) -> None:
        """Checks that need the server's limits or more than one field."""

        def fail(code: ErrorCode, text: str) -> ProtocolError:
            return ProtocolError(code, text, job_id=self.job_id)

        for name in ("width", "height"):
            value = getattr(self, name)
            if value % 8:
                raise fail(ErrorCode.OUT_OF_RANGE, f"{name} must be a multiple of 8, got {value}")
            if value > limits.max_side:
                raise fail(
                    ErrorCode.TOO_LARGE, f"{name} {value} is over this server's limit of {limits.max_side}"
                )
        if self.width * self.height > limits.max_pixels:
            raise fail(ErrorCode.TOO_LARGE, f"{self.width}x{self.height} is over {limits.max_pixels} pixels")
        if self.steps > limits.max_steps:
            raise fail(
                ErrorCode.OUT_OF_RANGE,
                f"steps {self.steps} is over this server's limit of {limits.max_steps}",
            )
        if self.batch > limits.max_batch:
            raise fail(
                ErrorCode.OUT_OF_RANGE,
                f"batch {self.batch} is over this server's limit of {limits.max_batch}",
            )
        if not self.style_images and not self.regions:
            raise fail(ErrorCode.MISSING_FIELD, "style_images needs at least one style reference")
        if len(self.regions) > limits.max_regions:
            raise fail(
                ErrorCode.OUT_OF_RANGE,
                f"{len(self.regions)} regions is over this server's limit of {limits.max_regions}",
            )
        named = [("style_images", self.style_images)] + [
            (f"regions[{i}].style_images", region.style_images) for i, region in enumerate(self.regions)
        ]
        for name, references in named:
            if name != "style_images" and not references:
                raise fail(ErrorCode.MISSING_FIELD, f"{name} needs at least one style reference")
            if len(references) > limits.max_style_images:
                raise fail(
                    ErrorCode.OUT_OF_RANGE, f"at most {limits.max_style_images} style images are allowed"
                )
            if references and sum(ref.weight for ref in references) <= 0:
                raise fail(ErrorCode.OUT_OF_RANGE, f"{name} weights must add up to more than 0")
        if self.mode is not Mode.TXT2IMG and self.init_image is None:
            raise fail(ErrorCode.MISSING_FIELD, f"mode {self.mode.value} needs init_image")
        if self.mode is Mode.INPAINT and self.mask is None:
            raise fail(ErrorCode.MISSING_FIELD, "mode inpaint needs mask")
        if self.preset is BlockPreset.CUSTOM and not self.block_scales:
            raise fail(ErrorCode.MISSING_FIELD, "preset custom needs block_scales")
        if self.preset is BlockPreset.PRECISE and self.guidance_scale <= 1.0:
            raise fail(
                ErrorCode.BAD_FIELD,
                "preset precise pushes the layout away through the negative branch, which guidance "
                f"{self.guidance_scale} turns off: raise guidance_scale above 1",
            )
        if self.block_scales is not None and self.preset is not BlockPreset.CUSTOM:
            raise fail(
                ErrorCode.BAD_FIELD, f"block_scales is only used with preset custom, not {self.preset.value}"
            )
        for name, value in _leaves(self.block_scales or {}, "block_scales"):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0.0 <= value <= MAX_BLOCK_SCALE
            ):
                raise fail(
                    ErrorCode.OUT_OF_RANGE,
                    f"{shown(name)} must be a number from 0 to {MAX_BLOCK_SCALE}, got {shown(repr(value))}",
                )
        axes = [values.axis for values in self.sweep]
        if len(set(axes)) != len(axes):
            raise fail(ErrorCode.BAD_FIELD, "a sweep axis is named twice")
        for values in self.sweep:
            values.check(fail)
        if self.sweep and self.sweep_cells > limits.max_sweep_cells:
            raise fail(
                ErrorCode.OUT_OF_RANGE,
                f"a sweep of {self.sweep_cells} cells is over this server's limit of "
                f"{limits.max_sweep_cells}",
            )
        if self.sweep and self.batch != 1:
            raise fail(ErrorCode.BAD_FIELD, "a sweep makes one picture per cell: batch must be 1")
        names = [lora.name for lora in self.loras]
        if len(set(names)) != len(names):
            raise fail(ErrorCode.BAD_FIELD, "a LoRA is named twice in loras")
        if self.seed is not None and self.seed + self.batch - 1 > MAX_SEED:
            raise fail(
                ErrorCode.OUT_OF_RANGE,
                f"seed {self.seed} with batch {self.batch} runs past the largest seed {MAX_SEED}",
            )


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
    """One denoising step done; a PREVIEW frame with ``index == step`` follows."""

    TYPE: ClassVar[MessageType] = MessageType.PROGRESS
    job_id: int = field(metadata=bounds(1, MAX_JOB_ID))
    step: int = field(metadata=bounds(1, None))
    total: int = field(metadata=bounds(1, None))
    eta_seconds: float = field(default=0.0, metadata=bounds(0.0, None))


@dataclass(frozen=True)
class Scores:
    """One image's balance, as cosines in the CLIP space InstantStyle works in (-1..1, higher = more):
    ``style`` with the references, ``content`` with the content description (the leakage content
    subtraction lowers; absent without one), ``prompt`` with the prompt (absent where the IP-Adapter's
    image space is not the text encoder's)."""

    style: float = field(metadata=bounds(-1.0, 1.0))
    content: float | None = field(default=None, metadata=bounds(-1.0, 1.0))
    prompt: float | None = field(default=None, metadata=bounds(-1.0, 1.0))


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


@dataclass(frozen=True)
class Cancelled:
    TYPE: ClassVar[MessageType] = MessageType.CANCELLED
    job_id: int = field(metadata=bounds(1, MAX_JOB_ID))
    step: int = field(default=0, metadata=bounds(0, None))
    """The last step that ran (0 = cancelled while queued)."""


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
