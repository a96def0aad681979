"""From wire messages to an engine request: decode INPUT frames into images."""

from __future__ import annotations

import io
import random
from collections.abc import Collection
from dataclasses import fields
from typing import Any

import numpy as np
from PIL import Image

from backend.engine.preview_budget import DEFAULT_PREVIEW_SHARE
from backend.engine.regions import StyleRegion
from backend.engine.request import DEFAULT_NEGATIVE_PROMPT, GenerationRequest, Refine, StyleReference
from protocol import ErrorCode, Generate, PixelFormat, PixelFrame, ProtocolError

_MODES = {PixelFormat.RGB8: "RGB", PixelFormat.RGBA8: "RGBA", PixelFormat.GRAY8: "L"}


def frame_to_image(frame: PixelFrame) -> Image.Image:
    """An INPUT frame as a PIL image; PNGs are decoded and checked against the header's size."""
    if frame.format is PixelFormat.PNG:
        try:
            with Image.open(io.BytesIO(frame.payload)) as image:
                image.load()
                decoded = image.copy()
        except Exception as error:  # Pillow raises many types for broken files
            raise ProtocolError(
                ErrorCode.BAD_FRAME, f"input {frame.index}: unreadable PNG ({error})", frame.job_id
            ) from None
        return decoded
    return Image.frombytes(_MODES[frame.format], (frame.width, frame.height), frame.payload)


def flatten(image: Image.Image) -> Image.Image:
    """RGB, with transparent areas over white (how a painter's reference reads)."""
    if image.mode in ("RGBA", "LA") or "transparency" in image.info:
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def check_inputs_arrived(message: Generate, frames: Collection[int]) -> None:
    """Every INPUT frame a ``generate`` refers to has arrived (``frames``: their indices)."""
    missing = sorted(message.input_indices() - set(frames))
    if missing:
        raise ProtocolError(
            ErrorCode.MISSING_INPUT,
            f"generate refers to input {missing[0]} but no INPUT frame with that index arrived for job "
            f"{message.job_id}",
            message.job_id,
        )


def input_images(message: Generate, frames: dict[int, PixelFrame]) -> dict[int, Image.Image]:
    """The images a ``generate`` refers to, decoded; every referenced INPUT frame must have arrived."""
    check_inputs_arrived(message, frames)
    return {index: frame_to_image(frames[index]) for index in message.input_indices()}


def region_masks(message: Generate, images: dict[int, Image.Image]) -> list[Image.Image]:
    """Each region's mask: the job's size, its init image's, or either scaled (same aspect ratio, to
    the pixel: a plugin sends masks at the canvas area's size). Any other shape is refused rather than
    guessed at."""
    sizes = {(message.width, message.height)}
    if message.init_image is not None:
        sizes.add(images[message.init_image].size)
    masks = []
    for index, region in enumerate(message.regions):
        mask = images[region.mask]
        if not any(_same_shape(mask.size, size) for size in sizes):
            expected = " or ".join(f"{w}x{h}" for w, h in sorted(sizes))
            raise ProtocolError(
                ErrorCode.BAD_FRAME,
                f"regions[{index}]'s mask is {mask.width}x{mask.height}, expected {expected} (or scaled)",
                message.job_id,
            )
        masks.append(mask.convert("L"))
    return masks


def _same_shape(size: tuple[int, int], expected: tuple[int, int]) -> bool:
    """Equal, or the same aspect ratio to within a pixel of scaling."""
    (width, height), (want_width, want_height) = size, expected
    return abs(width * want_height - height * want_width) <= max(want_width, want_height, width, height)


CONVERTED = frozenset(
    {
        "style_images",
        "negative_prompt",
        "init_image",
        "mask",
        "seed",
        "loras",
        "regions",
        "sweep",
        "refine",
        "preview_side",
    }
)
"""The message's fields that become something else in the request (images, defaults, tuples)."""


def travelling_as_they_are(message: Generate) -> dict[str, Any]:
    """The settings named alike in the message and the request, copied as they are: a new setting of
    that kind needs no line here."""
    shared = {f.name for f in fields(GenerationRequest)} & {f.name for f in fields(Generate)}
    return {name: getattr(message, name) for name in sorted(shared - CONVERTED)}


def build_request(
    message: Generate,
    images: dict[int, Image.Image],
    max_preview_side: int | None = None,
    preview_share: float | None = DEFAULT_PREVIEW_SHARE,
) -> GenerationRequest:
    """The engine request for a ``generate`` message and its input images (server and CLI alike);
    previews larger than ``max_preview_side`` are made at that size, within ``preview_share`` of the
    denoising time."""
    mask = images[message.mask].convert("L") if message.mask is not None else None
    regions = [
        StyleRegion(
            region_mask,
            [StyleReference(flatten(images[ref.input]), ref.weight) for ref in region.style_images],
            region.content_text,
            region.name,
        )
        for region, region_mask in zip(message.regions, region_masks(message, images), strict=True)
    ]
    return GenerationRequest(
        **travelling_as_they_are(message),
        style_images=[StyleReference(flatten(images[ref.input]), ref.weight) for ref in message.style_images],
        negative_prompt=DEFAULT_NEGATIVE_PROMPT
        if message.negative_prompt is None
        else message.negative_prompt,
        init_image=flatten(images[message.init_image]) if message.init_image is not None else None,
        mask=mask,
        seed=message.seed if message.seed is not None else random.randrange(2**31),
        loras=tuple((lora.name, lora.weight) for lora in message.loras),
        regions=regions,
        sweep=[(values.axis, tuple(values.values)) for values in message.sweep],
        preview_side=min(message.preview_side, max_preview_side or message.preview_side),
        preview_share=preview_share,
        step_pictures=not message.live,  # a live job's result is what the artist waits for
        refine=None
        if message.refine is None
        else Refine(message.refine.strength, message.refine.tile, message.refine.overlap),
    )


def rgba_bytes(image: np.ndarray) -> bytes:
    """uint8 RGB (H, W, 3) as opaque RGBA bytes, for RESULT frames."""
    height, width, _ = image.shape
    rgba = np.empty((height, width, 4), dtype=np.uint8)
    rgba[..., :3] = image
    rgba[..., 3] = 255
    return rgba.tobytes()
