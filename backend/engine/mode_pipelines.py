"""The diffusers pipeline for each job mode, made from the text-to-image one and sharing its modules."""

from __future__ import annotations

import torch

from protocol.enums import Mode

from .family import family_of


def mode_pipeline(base: object, mode: Mode, controlnet: torch.nn.Module | None, dtype: torch.dtype) -> object:
    """img2img, inpaint or ControlNet from ``base`` (txt2img), every module shared, in ``base``'s
    family (SDXL's or SD1.5's classes). A ``control`` pipeline is made for one ControlNet (canny or
    tile: ``control.ControlNets`` picks it, or refuses the job in one line).

    ``from_pipe`` casts every shared module to its ``dtype``, fp32 when none is given: without the
    model's own dtype the first img2img job doubled a half-precision model's memory."""
    import diffusers

    if mode is Mode.TXT2IMG:
        return base
    family = family_of(base)
    pipeline_class = getattr(diffusers, family.pipelines[mode])
    if mode is Mode.CONTROL:
        if controlnet is None:
            raise ValueError("a control pipeline needs its ControlNet")
        pipe = pipeline_class.from_pipe(base, controlnet=controlnet, dtype=dtype)
    else:
        pipe = pipeline_class.from_pipe(base, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe
