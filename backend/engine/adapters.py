"""Which kind of IP-Adapter is loaded, and whether the engine can run it with its image encoder.

diffusers' ``load_ip_adapter`` builds the adapter's image projection from the weights' keys: a plain
adapter (``ip-adapter_sdxl``, ``ip-adapter_sdxl_vit-h``) projects the encoder's pooled embedding to 4
tokens, a "plus" adapter (``ip-adapter-plus_sdxl_vit-h``) reads its patch features (the penultimate
layer's hidden states) through a Resampler into 16. Face adapters need a face embedding InstantStyle
has no use for. What is loaded is read back from the projection diffusers built, once, at load time.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.enums import ImageAdapter

from .loading import ModelLoadError, ModelSpec


@dataclass(frozen=True)
class AdapterInfo:
    """What the loaded adapter reads and how many image tokens it gives each attention."""

    kind: ImageAdapter
    tokens: int


def adapter_info(pipe: object, spec: ModelSpec) -> AdapterInfo:
    """The loaded adapter's kind, or a one-line ``ModelLoadError`` naming the files when the engine
    cannot run it (a face adapter, an image encoder of the wrong size)."""
    from diffusers.models.embeddings import ImageProjection, IPAdapterPlusImageProjection

    projection = pipe.unet.encoder_hid_proj.image_projection_layers[0]  # type: ignore[attr-defined]
    config = pipe.image_encoder.config  # type: ignore[attr-defined]
    if isinstance(projection, ImageProjection):
        wanted, given = projection.image_embeds.in_features, config.projection_dim
        kind, tokens = ImageAdapter.PLAIN, projection.num_image_text_embeds
        what = "embeddings"
    elif isinstance(projection, IPAdapterPlusImageProjection):
        wanted, given = projection.proj_in.in_features, config.hidden_size
        kind, tokens = ImageAdapter.PLUS, projection.latents.shape[1]
        what = "hidden states"
    else:
        raise ModelLoadError(
            spec.ip_adapter,
            "a plain or 'plus' IP-Adapter "
            "(ip-adapter_sdxl, ip-adapter_sdxl_vit-h, ip-adapter-plus_sdxl_vit-h)",
            f"it is a {type(projection).__name__} (a face adapter), which needs a face embedding rather "
            "than a style image's",
        )
    if wanted != given:
        raise ModelLoadError(
            spec.ip_adapter,
            f"an image encoder with {wanted}-d {what}",
            f"{spec.image_encoder} gives {given}-d ones: ip-adapter_sdxl goes with the ViT-bigG encoder "
            "(1280-d embeddings, sdxl_models/image_encoder), ip-adapter_sdxl_vit-h and "
            "ip-adapter-plus_sdxl_vit-h with ViT-H (1024-d embeddings, 1280-d hidden states, "
            "models/image_encoder)",
        )
    return AdapterInfo(kind, tokens)
