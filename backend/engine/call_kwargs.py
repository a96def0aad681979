"""Everything a job's diffusers pipeline is called with, except the step callback.

The family decides what a mode's pipeline takes: SD1.5's img2img, inpaint and ControlNet pipelines
(and SDXL's ControlNet one) have no ``guidance_rescale`` and would swallow it silently through
``**kwargs``, so it is only sent where it works, and a job that asks for it elsewhere is refused.
"""

from __future__ import annotations

from typing import Protocol

import torch
from PIL import Image

from protocol.enums import Mode, ModelFamily

from .control import control_image
from .decode import encode_canvas
from .family import FamilyTraits
from .loras import LoraSet
from .prediction import default_guidance_rescale
from .prompt_cache import PromptCache, PromptKey
from .regions import style_and_masks
from .request import GenerationRequest, RequestError
from .samplers import JobSchedulers
from .style_embedding import StyleEncoder, ip_adapter_embeds


class EngineParts(Protocol):
    """What the call's arguments are made from (an ``InstantStyleEngine``)."""

    family: FamilyTraits
    encoder: StyleEncoder
    prompts: PromptCache
    loras: LoraSet
    schedulers: JobSchedulers
    pipeline: object

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...


def check_family_request(engine: EngineParts, request: GenerationRequest) -> None:
    """What the model's family cannot do with this job, in one line (checked once for the job as asked:
    a canvas's refining stage on SD1.5 goes without the CFG rescale its img2img pipeline lacks)."""
    family = engine.family
    no_rescale = family.no_guidance_rescale - {Mode.CONTROL}  # keep-lines: the request's own check says it
    if request.guidance_rescale and request.mode in no_rescale:
        raise RequestError(f"guidance_rescale is not available with {family.label} {request.mode.value} jobs")
    if request.regions and min(request.width, request.height) < family.min_region_side:
        raise RequestError(
            f"regions need a picture at least {family.min_region_side} px a side on {family.label} (its "
            f"deepest attention sees 1/{family.min_region_side} of it), got {request.width}x{request.height}"
        )


def pipeline_kwargs(engine: EngineParts, request: GenerationRequest) -> dict[str, object]:
    """The call's arguments: the cached prompt encodings, the style embedding, the sizes and seeds,
    and what the mode adds (the init picture or its latents, the mask, the ControlNet's condition)."""
    style, masks = style_and_masks(engine.encoder, request)
    guidance = request.guidance_scale > 1.0
    prompt = PromptKey(
        request.prompt, request.negative_prompt, guidance, engine.loras.text_state(request.loras)
    )
    kwargs: dict[str, object] = {
        **engine.prompts.encodings(engine.pipeline, prompt).as_kwargs(),
        "ip_adapter_image_embeds": ip_adapter_embeds(
            style.to(device=engine.device, dtype=engine.dtype),
            guidance,
            engine.encoder.negative_features() if guidance else None,
        ),
        "num_inference_steps": request.steps,
        "guidance_scale": request.guidance_scale,
        "num_images_per_prompt": request.batch,
        # CPU generators: the same seed gives the same noise on every device.
        "generator": [torch.Generator("cpu").manual_seed(request.seed + i) for i in range(request.batch)],
        "width": request.width,
        "height": request.height,
        # The engine decodes itself (decode.py): the VAE's dtype survives a failed decode.
        "output_type": "latent",
    }
    if request.mode not in engine.family.no_guidance_rescale:
        kwargs["guidance_rescale"] = (
            default_guidance_rescale(engine.schedulers.model_scheduler)
            if request.guidance_rescale is None
            else request.guidance_rescale
        )
    if masks is not None:
        kwargs["cross_attention_kwargs"] = {"ip_adapter_masks": [m.to(engine.device) for m in masks]}
    size = (request.width, request.height)
    if request.mode is Mode.CONTROL:
        kwargs["image"] = control_image(request)  # the edges, or the picture itself (tile)
        kwargs["controlnet_conditioning_scale"] = request.control_scale
        return kwargs
    if request.mode is not Mode.TXT2IMG:
        assert request.init_image is not None
        picture = request.init_image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        # A canvas (the refining stage) is encoded tile by tile from host memory.
        vae = engine.pipeline.vae  # type: ignore[attr-defined]
        generator = kwargs["generator"][0]  # type: ignore[index]
        latents = (
            encode_canvas(vae, picture, generator, engine.family.upcast_vae) if request.batch == 1 else None
        )
        kwargs["image"] = picture if latents is None else latents
        kwargs["strength"] = request.strength
    if request.mode is Mode.IMG2IMG:
        del kwargs["width"], kwargs["height"]
    if request.mode is Mode.INPAINT:
        assert request.mask is not None
        kwargs["mask_image"] = request.mask.convert("L").resize(size, Image.Resampling.NEAREST)
        if latents is not None and engine.family.family is ModelFamily.SD15:
            # SD1.5's inpaint pipeline masks the init *picture* unless given the masked latents, which
            # its 4-channel UNet never reads: the canvas's latents stand in (SDXL's needs nothing).
            kwargs["masked_image_latents"] = latents
    return kwargs
