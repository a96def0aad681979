"""The diffusers pipeline for each job mode, made from the text-to-image one and sharing its modules."""

from __future__ import annotations

import torch

from protocol.enums import Mode

from .request import RequestError


def mode_pipeline(base: object, mode: Mode, controlnet: torch.nn.Module | None, dtype: torch.dtype) -> object:
    """img2img, inpaint or ControlNet from ``base`` (txt2img), every module shared.

    ``from_pipe`` casts every shared module to its ``dtype``, fp32 when none is given: without the
    model's own dtype the first img2img job doubled a half-precision model's memory."""
    from diffusers import (
        StableDiffusionXLControlNetPipeline,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLInpaintPipeline,
    )

    if mode is Mode.TXT2IMG:
        return base
    if mode is Mode.CONTROL:
        if controlnet is None:
            raise RequestError(
                "this backend has no ControlNet loaded: start it with --controlnet "
                "(e.g. diffusers/controlnet-canny-sdxl-1.0) to restyle while keeping the lines"
            )
        pipe = StableDiffusionXLControlNetPipeline.from_pipe(base, controlnet=controlnet, dtype=dtype)
    elif mode is Mode.IMG2IMG:
        pipe = StableDiffusionXLImg2ImgPipeline.from_pipe(base, dtype=dtype)
    else:
        pipe = StableDiffusionXLInpaintPipeline.from_pipe(base, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe
