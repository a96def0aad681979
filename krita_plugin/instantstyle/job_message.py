"""From the docker's settings and the canvas's images to a ``generate`` message and its INPUT frames.

Each setting the wire carries is named once here (``message_fields``); the checks an artist can act
on come first (``refuse``), in words, before anything is sent. Qt-free and Krita-free.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from .deps import protocol
from .jobs import Image, JobInputs
from .settings import GenerationSettings, JobKind


class SubmitError(ValueError):
    """The job cannot be sent as set up; the message is for the artist."""


@dataclass(frozen=True)
class JobShape:
    """What the session decides besides the settings: the job's number, size, seed and kind."""

    job_id: int
    width: int
    height: int
    seed: int
    live: bool = False
    sweep: bool = False
    preview_side: int = 1024
    refine: protocol.Refine | None = None
    """At the canvas's own resolution (``width`` × ``height`` is then the canvas)."""
    auto: protocol.Auto | None = None
    """Find strength: the server searches the style and content scales first (``auto_request``)."""


def auto_request(settings: GenerationSettings) -> protocol.Auto:
    """What a "Find strength" job asks the server for: the docker's margins and precise toggle."""
    return protocol.Auto(settings.auto_leakage_margin, settings.auto_prompt_margin, settings.auto_presets)


def point_settings(
    settings: GenerationSettings, point: protocol.AutoPoint, seed: int | None = None
) -> GenerationSettings:
    """The settings a trade-off map's point is painted with: its style and content scales and preset,
    its search's ``seed`` (for this job only), and everything else as the docker has it."""
    return replace(
        settings,
        style_scale=point.style_scale,
        content_scale=point.content_scale,
        preset=point.preset.value,
        seed=settings.seed if seed is None else seed,
        seed_locked=settings.seed_locked or seed is not None,
    )


def chosen_control(settings: GenerationSettings) -> protocol.ControlKind:
    """What keep-lines keeps, as the artist chose it (a value no longer known: edges)."""
    try:
        return protocol.ControlKind(settings.control)
    except ValueError:
        return protocol.ControlKind.EDGES


def offered_controls(hello: protocol.ServerHello) -> list[protocol.ControlKind] | None:
    """What keep-lines can keep on this backend: ``features.controls`` once its model is ready (an
    older server names none: edges, where it has mode control); None while it loads (it checks)."""
    if protocol.Mode.CONTROL not in hello.modes:
        return []
    status = hello.status
    if not status.ready or status.features is None:
        return None if not status.ready else [protocol.ControlKind.EDGES]
    return list(status.features.controls) or [protocol.ControlKind.EDGES]


CONTROL_LABELS = {
    protocol.ControlKind.EDGES: "Lines (edges)",
    protocol.ControlKind.TILE: "Shapes and colours (tile)",
}
"""The keep-lines choices as the docker names them."""


def refuse(
    settings: GenerationSettings,
    inputs: JobInputs,
    hello: protocol.ServerHello,
    sweep: bool = False,
    auto: bool = False,
) -> None:
    """Raise ``SubmitError`` for what the artist must change first (nothing is sent, no seed drawn)."""
    if auto and sweep:
        raise SubmitError("Find strength runs its own search: it cannot be a sweep as well")
    if auto and inputs.regions:
        raise SubmitError(
            "Find strength finds one strength for the whole picture: it cannot run with regions "
            "(remove them in the Regions section, or compare strengths with a sweep)"
        )
    try:
        settings.custom_block_scales()
        if sweep:
            settings.sweep_values()
    except ValueError as error:
        raise SubmitError(str(error)) from None
    if not inputs.styles and not inputs.regions:
        raise SubmitError("pick a style reference first")
    if settings.kind is not JobKind.NEW_IMAGE and inputs.init_image is None:
        raise SubmitError("stylize needs a layer to start from")
    if settings.kind is JobKind.KEEP_LINES and protocol.Mode.CONTROL not in hello.modes:
        raise SubmitError(
            "the backend has no ControlNet for keeping lines: start it with --controlnet, "
            "or choose plain stylize"
        )
    offered = offered_controls(hello)
    control = chosen_control(settings)
    if settings.kind is JobKind.KEEP_LINES and offered is not None and control not in offered:
        if control is protocol.ControlKind.TILE:
            raise SubmitError(
                "the backend has no Tile ControlNet: start it with --tile-controlnet auto (the Backend "
                "section's ControlNet box does), or keep the lines (edges)"
            )
        raise SubmitError(
            "the backend has no canny ControlNet for the lines: choose 'Shapes and colours (tile)' "
            "under Keep, or start it with --controlnet auto"
        )


CANVAS_SLACK = 1.25
"""A layer up to this much larger than the model's native area is made at its size in one job."""


def wants_refine(
    settings: GenerationSettings, inputs: JobInputs, width: int, height: int, native: int, sweep: bool
) -> bool:
    """Whether a ``width`` × ``height`` target is made at its own resolution (two stages): the artist
    left "Canvas resolution" on, the model said its native side, the target is well above its area,
    and the job is one a refine can run (not a sweep; live jobs stay small)."""
    return (
        settings.auto_size
        and settings.canvas_resolution
        and native > 0
        and width * height > CANVAS_SLACK * native * native
        and not sweep
    )


def job_mode(kind: JobKind, inputs: JobInputs) -> protocol.Mode:
    """Stylize is img2img, or inpaint inside a selection; keep-lines is ControlNet (a selection still
    limits where its result shows, through the result's alpha); a new image is txt2img."""
    if kind is JobKind.STYLIZE:
        return protocol.Mode.INPAINT if inputs.mask is not None else protocol.Mode.IMG2IMG
    if kind is JobKind.KEEP_LINES:
        return protocol.Mode.CONTROL
    return protocol.Mode.TXT2IMG


DECIDED_PER_JOB = frozenset(
    {"job_id", "style_images", "mode", "init_image", "mask", "width", "height", "seed", "batch"}
    | {"live", "regions", "sweep", "preview_side", "preset", "block_scales", "sampler", "loras"}
    | {"refine", "control", "auto"}
)
"""Message fields the settings do not carry as they are: sizes, seeds and inputs of this job, and
settings that need converting (enums, JSON, LoRA rows)."""


def message_fields(settings: GenerationSettings) -> dict[str, object]:
    """The settings that travel as they are (named alike in the settings and the message: a new one
    needs no line here), and the ones converted on the way."""
    try:
        block_scales = settings.custom_block_scales()
    except ValueError as error:
        raise SubmitError(str(error)) from None
    shared = {f.name for f in fields(protocol.Generate)} & {f.name for f in fields(settings)}
    as_they_are = {name: getattr(settings, name) for name in sorted(shared - DECIDED_PER_JOB)}
    return {
        **as_they_are,
        "preset": protocol.BlockPreset(settings.preset),
        "control": chosen_control(settings),
        "block_scales": block_scales,
        "sampler": protocol.Sampler(settings.sampler) if settings.sampler else None,
        "loras": [protocol.LoraWeight(lora.name, lora.weight) for lora in settings.loras],
    }


def build_message(
    settings: GenerationSettings,
    inputs: JobInputs,
    shape: JobShape,
    content_subtraction: bool = True,
    family: protocol.ModelFamily = protocol.ModelFamily.SDXL,
) -> tuple[protocol.Generate, dict[int, Image]]:
    """The message and its INPUT images by index. Without ``content_subtraction`` (the backend's
    adapter cannot: a plus one) the artist's content text stays in the settings but is not sent; nor
    is a CFG rescale to a pipeline without one (keep-lines; SD1.5's img2img and inpaint)."""
    try:
        sweep_axes = settings.sweep_values() if shape.sweep else []
    except ValueError as error:
        raise SubmitError(str(error)) from None
    mode = job_mode(settings.kind, inputs)
    slots: protocol.InputSlots[Image] = protocol.InputSlots()
    styles = slots.styles(inputs.styles)
    init_image = slots.add_optional(inputs.init_image if mode is not protocol.Mode.TXT2IMG else None)
    mask = slots.add_optional(inputs.mask if mode is protocol.Mode.INPAINT else None)
    regions = [slots.region(region.name, region.mask, region.styles) for region in inputs.regions]
    message = protocol.Generate(
        job_id=shape.job_id,
        style_images=styles,
        mode=mode,
        init_image=init_image,
        mask=mask,
        width=shape.width,
        height=shape.height,
        seed=shape.seed,
        batch=1 if sweep_axes else settings.batch,
        live=shape.live,
        regions=regions,
        sweep=sweep_axes,
        preview_side=shape.preview_side,
        refine=shape.refine,
        auto=shape.auto,
        **message_fields(settings),  # type: ignore[arg-type]
    )
    no_rescale = mode is protocol.Mode.CONTROL or (
        family is protocol.ModelFamily.SD15 and mode in (protocol.Mode.IMG2IMG, protocol.Mode.INPAINT)
    )
    if no_rescale:  # those pipelines have no CFG rescale (the server would refuse the job)
        message = replace(message, guidance_rescale=None)
    if mode is not protocol.Mode.CONTROL:  # what keep-lines keeps means nothing to the other modes
        message = replace(message, control=protocol.ControlKind.EDGES)
    if not content_subtraction:
        message = replace(message, content_text="")
    return message, slots.images
