"""``generate``: what a job asks for, and the checks that need a server's limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .enums import BlockPreset, ControlKind, ErrorCode, MessageType, Mode, Sampler, SweepAxis
from .errors import ProtocolError
from .limits import (
    DEFAULT_LAYOUT_PUSH,
    DEFAULT_LEAKAGE_MARGIN,
    DEFAULT_PREVIEW_SIDE,
    DEFAULT_PROMPT_MARGIN,
    MAX_BLOCK_DEPTH,
    MAX_BLOCK_SCALE,
    MAX_INPUT_INDEX,
    MAX_JOB_ID,
    MAX_LAYOUT_PUSH,
    MAX_LORA_WEIGHT,
    MAX_LORAS,
    MAX_PREVIEW_SIDE,
    MAX_REFINE_TILE,
    MAX_REGIONS,
    MAX_SEED,
    MAX_SWEEP_AXES,
    MAX_SWEEP_VALUES,
    MAX_TEXT,
    Limits,
)
from .schema import bounds, shown


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


MIN_REGION_SIDE = 32
"""Pixels a side a job with regions needs: each region's mask is scaled to every attention level of
the UNet, the smallest of which is 1/32 of the picture (an 8-px side made an empty mask: an engine
error after the job had been accepted)."""


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
class Refine:
    """Make a job's ``width`` × ``height`` at a canvas's own resolution: first at the model's native
    area with those proportions, then upscaled and refined in overlapping tiles with the same style."""

    strength: float = field(default=0.35, metadata=bounds(0.01, 1.0))
    """How much the refine repaints of the upscaled picture."""
    tile: int = field(default=0, metadata=bounds(0, MAX_REFINE_TILE))
    """Tile side in pixels, a multiple of 8; 0: the server's choice (the model's native side)."""
    overlap: int = field(default=0, metadata=bounds(0, MAX_REFINE_TILE))
    """Pixels neighbouring tiles share, a multiple of 8; 0: an eighth of the tile."""


@dataclass(frozen=True)
class Auto:
    """Find the strength for these references: the server searches style scale × content scale at a
    low resolution, scores each point and renders the chosen one at the job's size. The rule: the
    strongest style whose content leakage stays within ``leakage_margin`` of a no-style picture's and
    whose prompt alignment stays within ``prompt_margin`` of it (``result.auto`` shows every point)."""

    leakage_margin: float = field(default=DEFAULT_LEAKAGE_MARGIN, metadata=bounds(0.0, 1.0))
    prompt_margin: float = field(default=DEFAULT_PROMPT_MARGIN, metadata=bounds(0.0, 1.0))
    presets: bool = False
    """Also search the ``precise`` preset against the job's own (``style`` or ``style+layout``)."""


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
    control: ControlKind = ControlKind.EDGES
    """For mode ``control``: what of the init image is kept (one of ``features.controls``)."""
    width: int = field(default=1024, metadata=bounds(8, 16384))
    height: int = field(default=1024, metadata=bounds(8, 16384))
    steps: int = field(default=30, metadata=bounds(1, 1000))
    guidance_scale: float = field(default=5.0, metadata=bounds(0.0, 30.0))
    guidance_rescale: float | None = field(default=None, metadata=bounds(0.0, 1.0))
    """CFG rescale against the over-exposure of zero-terminal-SNR (v-prediction) models; absent: the
    model's default (``hello.model.prediction``: 0.7 for ``v-zsnr``, else 0)."""
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
    preview_side: int = field(default=DEFAULT_PREVIEW_SIDE, metadata=bounds(8, MAX_PREVIEW_SIDE))
    """Longest side of the preview frames when the server previews with a tiny autoencoder (never
    above the image's, nor the server's ``limits.max_preview_side``); ask for less on a slow link.
    Linear previews are at latent resolution, scaled down to this where the latents are larger (a
    canvas); no preview is larger than one message takes."""
    refine: Refine | None = None
    """Present: ``width`` × ``height`` is a canvas up to ``limits.max_canvas_side`` (see ``Refine``)."""
    live: bool = False
    """Latest wins: this job replaces the client's earlier live job, cancelled at its next step (or
    dropped from the queue). For re-rendering while the artist paints."""
    auto: Auto | None = None
    """Present: find the style and content scales first (``Auto``); the job's own scales are ignored."""

    def check_refine(self, fail: Any) -> None:
        """What a job at canvas resolution cannot have (yet), and its tiles' sizes."""
        assert self.refine is not None
        for name, value in (("tile", self.refine.tile), ("overlap", self.refine.overlap)):
            if value % 8:
                raise fail(ErrorCode.OUT_OF_RANGE, f"refine.{name} must be a multiple of 8, got {value}")
        if self.refine.tile and self.refine.overlap >= self.refine.tile:
            raise fail(ErrorCode.BAD_FIELD, "refine.overlap must be smaller than refine.tile")
        refused = {
            "a sweep": bool(self.sweep),
            "live": self.live,
        }
        for what, present in refused.items():
            if present:
                raise fail(ErrorCode.BAD_FIELD, f"a job with refine cannot have {what}")

    def check_auto(self, fail: Any) -> None:
        """What a job that finds its own strength cannot have."""
        if not self.style_images:
            raise fail(ErrorCode.MISSING_FIELD, "auto strength needs style_images to score the style against")
        refused = {"a sweep (it runs its own search)": bool(self.sweep), "regions": bool(self.regions)}
        refused["live"] = self.live
        for what, present in refused.items():
            if present:
                raise fail(ErrorCode.BAD_FIELD, f"a job with auto cannot have {what}")

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

        max_side, max_pixels = limits.max_side, limits.max_pixels
        if self.refine is not None:
            max_side, max_pixels = limits.max_canvas_side, limits.max_canvas_pixels
            self.check_refine(fail)
        for name in ("width", "height"):
            value = getattr(self, name)
            if value % 8:
                raise fail(ErrorCode.OUT_OF_RANGE, f"{name} must be a multiple of 8, got {value}")
            if value > max_side:
                larger = self.refine is None and value <= limits.max_canvas_side
                hint = f" (with refine: {limits.max_canvas_side})" if larger else ""
                raise fail(
                    ErrorCode.TOO_LARGE, f"{name} {value} is over this server's limit of {max_side}{hint}"
                )
        if self.width * self.height > max_pixels:
            raise fail(ErrorCode.TOO_LARGE, f"{self.width}x{self.height} is over {max_pixels} pixels")
        if self.refine is not None and self.batch * self.width * self.height > max_pixels:
            raise fail(  # a canvas batch's pictures share one canvas's budget
                ErrorCode.TOO_LARGE,
                f"a batch of {self.batch} at {self.width}x{self.height} is over {max_pixels} pixels",
            )
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
        if self.auto is not None:
            self.check_auto(fail)
        if not self.style_images and not self.regions:
            raise fail(ErrorCode.MISSING_FIELD, "style_images needs at least one style reference")
        if len(self.regions) > limits.max_regions:
            raise fail(
                ErrorCode.OUT_OF_RANGE,
                f"{len(self.regions)} regions is over this server's limit of {limits.max_regions}",
            )
        if self.regions and min(self.width, self.height) < MIN_REGION_SIDE:
            raise fail(
                ErrorCode.BAD_FIELD,
                f"regions need a picture at least {MIN_REGION_SIDE} px a side (their masks are scaled down "
                f"to 1/{MIN_REGION_SIDE} of it), got {self.width}x{self.height}",
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
        if self.mode is Mode.CONTROL and self.guidance_rescale:
            raise fail(ErrorCode.BAD_FIELD, "guidance_rescale is not available with mode control")
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
        if self.control is not ControlKind.EDGES and self.mode is not Mode.CONTROL:
            raise fail(ErrorCode.BAD_FIELD, f"control {self.control.value} is only used with mode control")
        names = [lora.name for lora in self.loras]
        if len(set(names)) != len(names):
            raise fail(ErrorCode.BAD_FIELD, "a LoRA is named twice in loras")
        if self.seed is not None and self.seed + self.batch - 1 > MAX_SEED:
            raise fail(
                ErrorCode.OUT_OF_RANGE,
                f"seed {self.seed} with batch {self.batch} runs past the largest seed {MAX_SEED}",
            )
