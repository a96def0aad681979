"""Each model family's weights in GiB, counted from its real shapes on the meta device.

No download and no memory: the same builders the tests check against the published parameter counts
(SDXL: ``backend/tiny/components.py``, SD1.5: ``backend/tiny/sd15_real_shapes.py``). ``memory_budget``
turns these into each tier's peak.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from protocol.enums import ModelFamily

from .image_encoders import ImageEncoderKind
from .memory import GIB

NATIVE_SIDE = {ModelFamily.SDXL: 1024, ModelFamily.SD15: 512}
"""The side of the square each family was trained at: a job's working memory is estimated there."""


def as_family(family: ModelFamily | str) -> ModelFamily:
    """A ``ModelFamily`` from a member or its value (``"sdxl"``, ``"sd15"``); anything else is refused."""
    try:
        return ModelFamily(family)
    except ValueError:
        names = ", ".join(f.value for f in ModelFamily)
        raise ValueError(f"unknown model family {family!r}: expected one of {names}") from None


@dataclass(frozen=True)
class WeightSizes:
    """GiB of each model's weights in the serving dtype."""

    unet: float
    ip_adapter: float
    text_encoder: float
    text_encoder_2: float
    """SDXL's OpenCLIP bigG text tower; 0 for SD1.5 (one text encoder)."""
    image_encoder: float
    vae: float
    controlnet: float
    preview_vae: float
    largest_layer: float
    """The largest single layer (a text encoder's token embedding): what group offload streams at once."""
    content_tower: float = 0.0
    """A ViT-H adapter's CLIP text tower (content subtraction): it rests where the text encoders rest."""

    @property
    def text_encoders(self) -> float:
        return self.text_encoder + self.text_encoder_2


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _largest(*models: torch.nn.Module) -> int:
    return max(p.numel() for model in models for p in model.parameters() if p.ndim >= 1)


@functools.cache
def sdxl_parameter_counts() -> dict[str, int]:
    """Parameters of each SDXL component, counted on the meta device (~3 s on two cores, once)."""
    from diffusers import AutoencoderTiny, ControlNetModel

    from backend.tiny.components import (
        SDXL,
        build_image_encoder,
        build_text_encoders,
        build_unet,
        build_vae,
    )

    with torch.device("meta"):
        unet = build_unet(SDXL)
        text_encoder, text_encoder_2 = build_text_encoders(SDXL)
        models = {
            "unet": unet,
            "text_encoder": text_encoder,
            "text_encoder_2": text_encoder_2,
            "image_encoder": build_image_encoder(SDXL),
            "vae": build_vae(SDXL),
            "controlnet": ControlNetModel.from_unet(unet, load_weights_from_unet=False),
            "preview_vae": AutoencoderTiny(),  # TAESD-XL's shape: diffusers' defaults
        }
    counts = {name: _count(model) for name, model in models.items()}
    # ip-adapter_sdxl: a key and a value projection of the 4 image tokens in every cross-attention
    # layer, and the image projection (1280 -> 4 x 2048, with its LayerNorm).
    cross = SDXL.cross_attention_dim
    layers = [m for name, m in unet.named_modules() if name.endswith("attn2")]
    counts["ip_adapter"] = sum(2 * cross * layer.to_k.out_features for layer in layers) + (
        SDXL.projection_dim * 4 * cross + 4 * cross + 2 * cross
    )
    counts["largest_layer"] = _largest(*models.values())
    return counts


@functools.cache
def vit_h_parameter_counts() -> dict[str, int]:
    """What the ViT-H adapters change on SDXL: their image encoder, the larger of their adapters (the
    plus one's Resampler besides the image-token projections), and ViT-H's text tower."""
    from backend.tiny.components import SDXL
    from backend.tiny.plus_adapter import SDXL_RESAMPLER_WIDTH, resampler_state
    from backend.tiny.real_shapes import VIT_H

    cross = SDXL.cross_attention_dim
    layers = sdxl_parameter_counts()["ip_adapter"] - (SDXL.projection_dim * 4 * cross + 4 * cross + 2 * cross)
    shapes = resampler_state(  # the plus adapter file's own tensors, as shapes only
        lambda size, _std: torch.empty(size, device="meta"),
        VIT_H.image_hidden,
        cross,
        width=SDXL_RESAMPLER_WIDTH,
    )
    resampler = sum(tensor.numel() for tensor in shapes.values())
    return {
        "image_encoder": image_encoder_counts(ImageEncoderKind.VIT_H)["image_encoder"],
        "ip_adapter": layers + resampler,
        "content_tower": vit_h_text_tower_count(),
    }


@functools.cache
def image_encoder_counts(kind: ImageEncoderKind) -> dict[str, int]:
    """ViT-bigG's or ViT-H's image encoder: its parameters and its largest layer."""
    from backend.tiny.components import build_image_encoder
    from backend.tiny.real_shapes import VIT_BIGG, VIT_H

    with torch.device("meta"):
        encoder = build_image_encoder(VIT_H if kind is ImageEncoderKind.VIT_H else VIT_BIGG)
    return {"image_encoder": _count(encoder), "largest_layer": _largest(encoder)}


@functools.cache
def vit_h_text_tower_count() -> int:
    """OpenCLIP ViT-H's text tower: the content subtraction of every ViT-H adapter (SDXL's and SD1.5's)."""
    from transformers import CLIPTextModelWithProjection

    from backend.tiny.real_shapes import vit_h_text_config

    with torch.device("meta"):
        return _count(CLIPTextModelWithProjection(vit_h_text_config()))


@functools.cache
def sd15_parameter_counts(kind: ImageEncoderKind) -> dict[str, int]:
    """Parameters of each SD1.5 component with ``kind``'s adapters (ViT-H: ip-adapter_sd15 and its plus;
    ViT-bigG: ip-adapter_sd15_vit-G), counted on the meta device (~3 s on two cores, once a kind).
    The content tower is ViT-H's text tower in every case: SD1.5 has no projected text tower of its own."""
    from diffusers import AutoencoderTiny, ControlNetModel

    from backend.tiny.real_shapes import VIT_BIGG, VIT_H
    from backend.tiny.sd15_real_shapes import (
        build_sd15_text_encoder,
        build_sd15_unet,
        build_sd15_vae,
        ip_adapter_counts,
    )

    with torch.device("meta"):
        unet = build_sd15_unet()
        models = {
            "unet": unet,
            "text_encoder": build_sd15_text_encoder(),
            "vae": build_sd15_vae(),
            "controlnet": ControlNetModel.from_unet(unet, load_weights_from_unet=False),
            "preview_vae": AutoencoderTiny(),  # TAESD's shape: diffusers' defaults (as TAESD-XL's)
        }
    counts = {name: _count(model) for name, model in models.items()}
    encoder = image_encoder_counts(kind)
    shape = VIT_H if kind is ImageEncoderKind.VIT_H else VIT_BIGG
    adapters = ip_adapter_counts(unet, shape.projection_dim, shape.image_hidden)
    counts.update(
        text_encoder_2=0,
        image_encoder=encoder["image_encoder"],
        ip_adapter=max(adapters.values()),  # plain or plus: the larger
        content_tower=vit_h_text_tower_count(),
        largest_layer=max(_largest(*models.values()), encoder["largest_layer"]),
    )
    return counts


def _in_gib(counts: dict[str, int], dtype: torch.dtype) -> WeightSizes:
    size = torch.finfo(dtype).bits // 8
    return WeightSizes(**{name: count * size / GIB for name, count in counts.items()})


def _worst(first: dict[str, int], second: dict[str, int]) -> dict[str, int]:
    """The larger of two counts, part by part (an image encoder not on disk yet: either kind)."""
    return {name: max(first.get(name, 0), second.get(name, 0)) for name in first.keys() | second.keys()}


def sdxl_sizes(dtype: torch.dtype, encoder: ImageEncoderKind = ImageEncoderKind.VIT_BIGG) -> WeightSizes:
    """SDXL's weights in ``dtype``, with the image encoder (and text tower) of ``encoder``'s adapters
    (unknown: the larger of each)."""
    counts = dict(sdxl_parameter_counts())
    vit_h = vit_h_parameter_counts()
    if encoder is ImageEncoderKind.VIT_H:
        counts.update(vit_h)
    elif encoder is ImageEncoderKind.UNKNOWN:  # the worst of both, part by part
        counts = _worst(counts, vit_h)
    return _in_gib(counts, dtype)


def sd15_sizes(dtype: torch.dtype, encoder: ImageEncoderKind = ImageEncoderKind.VIT_H) -> WeightSizes:
    """SD1.5's weights in ``dtype``: ViT-H's adapters by default (h94's SD1.5 adapters but one are
    ViT-H); ViT-bigG for ip-adapter_sd15_vit-G; unknown: the larger of each part."""
    if encoder is ImageEncoderKind.UNKNOWN:
        counts = _worst(
            sd15_parameter_counts(ImageEncoderKind.VIT_H), sd15_parameter_counts(ImageEncoderKind.VIT_BIGG)
        )
    else:
        counts = sd15_parameter_counts(encoder)
    return _in_gib(counts, dtype)


def family_sizes(family: ModelFamily | str, dtype: torch.dtype, encoder: ImageEncoderKind) -> WeightSizes:
    """The weights of ``family`` (a ``ModelFamily`` or its value) in ``dtype`` with ``encoder``'s
    adapters."""
    if as_family(family) is ModelFamily.SD15:
        return sd15_sizes(dtype, encoder)
    return sdxl_sizes(dtype, encoder)
