"""What a job asks for and what it returns: plain data, validated up front."""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field, fields, replace

import numpy as np
from PIL import Image

from protocol.enums import BlockPreset, ControlKind, Mode, Sampler, SweepAxis
from protocol.generate import Auto

from .blocks import BlockScaleMap
from .preview_budget import DEFAULT_PREVIEW_SHARE

LoraSelection = tuple[tuple[str, float], ...]
"""The LoRAs a job uses with their weights, in order; empty: none."""

DEFAULT_NEGATIVE_PROMPT = (
    "text, watermark, lowres, low quality, worst quality, deformed, glitch, low contrast, noisy, "
    "saturation, blurry"
)


class RequestError(ValueError):
    """A request that cannot run as given (bad size, missing image...)."""


class JobCancelled(Exception):
    """Raised inside a job when its cancel event was set; the job stops at the next step."""


@dataclass(frozen=True)
class StyleReference:
    image: Image.Image
    weight: float = 1.0


@dataclass(frozen=True)
class SweepCell:
    """The settings one picture of a sweep varies."""

    style_scale: float
    content_scale: float
    preset: BlockPreset
    seed: int


@dataclass(frozen=True)
class Refine:
    """A second stage for a canvas larger than the model's native size: the picture is made at about
    the model's native area with the canvas's proportions, upscaled (Lanczos) to the request's
    ``width`` × ``height`` and refined tile by tile at ``strength`` with the same style conditioning."""

    strength: float = 0.35
    tile: int = 0
    """Tile side in pixels (a multiple of 8); 0: the model's native side (1024 for SDXL; 512 at least)."""
    overlap: int = 0
    """Pixels neighbouring tiles share (a multiple of 8); 0: an eighth of the tile."""

    def steps(self, steps: int) -> int:
        """The refining stage's steps for a job of ``steps``: at least one, whatever the strength."""
        return max(1, int(self.stage_steps(steps) * self.strength))

    def stage_steps(self, steps: int) -> int:
        """The refining stage's schedule length: the job's, stretched so that one step runs."""
        return max(steps, math.ceil(1 / self.strength))

    def check(self) -> None:
        if not 0.0 < self.strength <= 1.0:
            raise RequestError(f"refine strength must be in (0, 1], got {self.strength}")
        for name, value in (("tile", self.tile), ("overlap", self.overlap)):
            if value < 0 or value % 8:
                raise RequestError(f"refine {name} must be a multiple of 8, got {value}")
        if self.tile and self.overlap >= self.tile:
            raise RequestError(f"refine overlap {self.overlap} must be smaller than its tile {self.tile}")


@dataclass
class GenerationRequest:
    """One InstantStyle job. Defaults follow the InstantStyle paper's examples."""

    prompt: str
    style_images: list[StyleReference]
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    content_text: str = ""
    content_scale: float = 0.5
    preset: BlockPreset = BlockPreset.STYLE
    block_scales: BlockScaleMap | None = None
    style_scale: float = 1.0
    layout_push: float = 2.0
    """For ``BlockPreset.PRECISE``: the reference's weight in the negative branch at the layout block."""
    mode: Mode = Mode.TXT2IMG
    init_image: Image.Image | None = None
    mask: Image.Image | None = None
    strength: float = 0.6
    control_scale: float = 0.6
    """ControlNet conditioning scale for ``Mode.CONTROL`` (the InstantStyle code's 0.6)."""
    control: ControlKind = ControlKind.EDGES
    """For ``Mode.CONTROL``: keep the init image's Canny edges, or (tile) the picture itself."""
    width: int = 1024
    height: int = 1024
    steps: int = 30
    guidance_scale: float = 5.0
    guidance_rescale: float | None = None
    """CFG rescale (0..1, Lin et al. 2023) against the over-exposure guidance gives zero-terminal-SNR
    models; None: the model's default (``prediction.default_guidance_rescale``)."""
    seed: int = 42
    batch: int = 1
    sampler: Sampler | None = None
    """None: the model's own scheduler."""
    loras: LoraSelection = ()
    sweep: list[tuple[SweepAxis, tuple]] = field(default_factory=list)
    """A grid over one or two axes (first varies slowest): one picture per cell, batch 1."""
    regions: list = field(default_factory=list)
    """``regions.StyleRegion``s: parts of the picture with their own references; ``style_images``
    then style the rest (and may be empty)."""
    preview_side: int = 1024
    """Longest side of the tiny autoencoder's previews (never above the image's); the linear previews
    stay at latent resolution."""
    preview_share: float | None = DEFAULT_PREVIEW_SHARE
    """What previews may cost, as a share of the denoising time (``preview_budget``); None: every
    step gets one drawn from its own latents, whatever it costs (the command line's ``--previews``)."""
    step_pictures: bool = True
    """False: steps report progress only (a live job: its result is what the artist waits for)."""
    refine: Refine | None = None
    """Make ``width`` × ``height`` in two stages (``Refine``): for canvases above the native size."""
    auto: Auto | None = None
    """Find the style and content scales first (``auto_search``), then render the chosen ones."""
    search_context: object | None = None
    """For ``auto``: the ``auto_search.SearchContext`` its search is planned in (the server's few-step
    presets and cell limit), set with ``search_steps`` by ``auto_search.planned``; None: not yet."""
    search_steps: int = 0
    """For ``auto``: the planned search's steps (``total_steps`` adds the render's)."""

    def cells(self) -> list[SweepCell]:
        """The sweep's cells in order (one cell, the request's own settings, without a sweep)."""
        axes = [(axis, values) for axis, values in self.sweep]
        combos = itertools.product(*[values for _, values in axes]) if axes else [()]
        cells = []
        for combo in combos:
            chosen = dict(zip([axis for axis, _ in axes], combo, strict=True))
            cells.append(
                SweepCell(
                    float(chosen.get(SweepAxis.STYLE_SCALE, self.style_scale)),
                    float(chosen.get(SweepAxis.CONTENT_SCALE, self.content_scale)),
                    BlockPreset(chosen.get(SweepAxis.PRESET, self.preset)),
                    int(chosen.get(SweepAxis.SEED, self.seed)),
                )
            )
        return cells

    def for_cell(self, cell: SweepCell) -> GenerationRequest:
        """The single job a sweep's cell is."""
        return replace(
            self,
            sweep=[],
            batch=1,
            style_scale=cell.style_scale,
            content_scale=cell.content_scale,
            preset=cell.preset,
            seed=cell.seed,
        )

    @property
    def total_steps(self) -> int:
        """Denoising steps of the whole job (every cell of a sweep; both stages of a refine)."""
        if self.auto is not None:
            return self.search_steps + replace(self, auto=None).total_steps
        if self.refine is not None:
            return self.effective_steps + self.batch * self.refine.steps(self.steps)
        return self.effective_steps * len(self.cells())

    def validate(self) -> None:
        if self.auto is not None:
            self.auto_check()
        if self.sweep:
            if self.refine is not None:
                raise RequestError("a sweep runs at the model's size: it cannot refine to canvas resolution")
            axes = [axis for axis, _ in self.sweep]
            if len(set(axes)) != len(axes):
                raise RequestError("a sweep axis is named twice")
            if self.batch != 1:
                raise RequestError("a sweep makes one picture per cell: batch must be 1")
            for cell in self.cells():
                self.for_cell(cell).validate()
            return
        for name, value in (("width", self.width), ("height", self.height)):
            if value < 8 or value % 8:
                raise RequestError(f"{name} must be a positive multiple of 8, got {value}")
        for name, (low, high) in wire_ranges().items():  # one place for each setting's range
            value = getattr(self, name)
            if isinstance(value, int | float) and not isinstance(value, bool) and not low <= value <= high:
                raise RequestError(f"{name} must be from {number(low)} to {number(high)}, got {value}")
        if self.preview_share is not None and not 0.0 <= self.preview_share <= 1.0:
            raise RequestError(f"preview_share must be within 0..1, got {self.preview_share}")
        if not self.style_images and not self.regions:
            raise RequestError("at least one style reference image is needed")
        for references in [self.style_images, *(region.style_images for region in self.regions)]:
            if references and sum(ref.weight for ref in references) <= 0:
                raise RequestError("style reference weights must add up to more than 0")
        if self.mode is not Mode.TXT2IMG and self.init_image is None:
            raise RequestError(f"mode {self.mode.value} needs an init image")
        if self.mode in (Mode.IMG2IMG, Mode.INPAINT):
            if not 0.0 < self.strength <= 1.0:
                raise RequestError(f"strength must be in (0, 1], got {self.strength}")
            if self.effective_steps < 1:
                raise RequestError(
                    f"strength {self.strength} of {self.steps} steps runs no step: "
                    "raise the strength or the steps"
                )
        if self.mode is Mode.INPAINT and self.mask is None:
            raise RequestError("mode inpaint needs a mask")
        if self.preset is BlockPreset.CUSTOM and not self.block_scales:
            raise RequestError("the custom preset needs block_scales")
        if self.preset is BlockPreset.PRECISE:
            check_precise(self.guidance_scale)
        if self.refine is not None:
            self.refine.check()
        if self.control is not ControlKind.EDGES and self.mode is not Mode.CONTROL:
            raise RequestError(f"control {self.control.value} is only used with mode control")
        if self.guidance_rescale and self.mode is Mode.CONTROL:
            raise RequestError("guidance_rescale is not available with keep-lines (ControlNet) jobs")

    def auto_check(self) -> None:
        """What a job that finds its own strength cannot have (the wire's checks, for every caller)."""
        assert self.auto is not None
        if not self.style_images:
            raise RequestError("auto strength needs style references to score the style against")
        for what, present in (("a sweep", self.sweep), ("regions", self.regions)):
            if present:
                raise RequestError(f"auto strength runs its own search: it cannot have {what}")
        for name in ("leakage_margin", "prompt_margin"):
            value = getattr(self.auto, name)
            if not 0.0 <= value <= 1.0:
                raise RequestError(f"auto {name} must be from 0 to 1, got {value}")

    @property
    def effective_steps(self) -> int:
        """Denoising steps that actually run: img2img and inpaint skip the first ``1 - strength``."""
        if self.mode in (Mode.TXT2IMG, Mode.CONTROL):
            return self.steps
        return min(int(self.steps * self.strength), self.steps)


@dataclass
class GenerationResult:
    """Finished images (uint8 RGB, H x W x 3) with what made them."""

    images: list[np.ndarray]
    seeds: list[int]
    model_label: str
    is_test_model: bool
    scale_map: dict[str, object] = field(default_factory=dict)
    seconds: float = 0.0
    cells: list[SweepCell] = field(default_factory=list)
    """For a sweep: each image's settings."""
    scores: list = field(default_factory=list)
    """``scores.ImageScores`` of each image: style similarity, content leakage, prompt alignment."""
    auto: object | None = None
    """For a job with ``auto``: the ``auto_search.AutoOutcome`` that chose its scales."""


def check_precise(guidance_scale: float) -> None:
    """The precise preset works through the negative branch: it needs guidance (its push's range is
    the wire format's, checked with the other settings)."""
    if guidance_scale <= 1.0:
        raise RequestError(
            "the precise preset pushes the reference's layout away through the negative prompt's branch, "
            f"which guidance {guidance_scale} turns off: raise the guidance above 1, or use the style preset"
        )


@functools.cache
def wire_ranges() -> dict[str, tuple[float, float]]:
    """The numeric range the wire format gives each setting a request shares with it: a request made
    in Python (the command line, tests, a script) meets the same rules as one from the network."""
    from protocol.generate import Generate

    shared = {f.name for f in fields(GenerationRequest)}
    ranges = {}
    for wire in fields(Generate):
        low, high = wire.metadata.get("low"), wire.metadata.get("high")
        if wire.name in shared and low is not None and high is not None:
            ranges[wire.name] = (low, high)
    return ranges


def number(value: float) -> str:
    """A bound as people write it: 4294967295, not 4.29497e+09; 0.01, not 0.0100."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
