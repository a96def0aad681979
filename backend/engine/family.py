"""Model families as data: what differs between SDXL and SD1.5, in one record each.

The engine, loading, previews and presets read a family's traits instead of naming SDXL: its
pipeline classes per mode, the attention blocks InstantStyle targets (official InstantStyle code:
``infer_style.py`` for SDXL, ``infer_style_sd15.py`` for SD1.5), its latent-to-RGB preview factors,
whether its pipelines decode in fp32, which text tower shares the image encoder's space, and the
hub files that go with it by default. Which family a checkpoint is comes from the checkpoint itself
(``family_detect.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol.enums import BlockPreset, ControlKind, Mode, ModelFamily

from .blocks import UNetAttentionLayout


@dataclass(frozen=True)
class FamilyTraits:
    """One model family. Block names are prefixes: ``up_blocks.1`` stands for each of its attentions."""

    family: ModelFamily
    label: str
    pipelines: dict[Mode, str]
    """diffusers' pipeline class for each mode (built from the txt2img one with ``from_pipe``)."""
    style_blocks: tuple[str, ...]
    layout_blocks: tuple[str, ...]
    """Where the style+layout preset adds the image features, and where precise pushes the
    reference's layout away."""
    style_layout_blocks: tuple[str, ...]
    shared_text_tower: str | None
    """The pipeline's text encoder whose projection is the plain image encoder's space (SDXL's
    ``text_encoder_2`` with ViT-bigG); None: content subtraction needs the ViT-H text tower."""
    latent_rgb_factors: tuple[tuple[float, float, float], ...]
    latent_rgb_bias: tuple[float, float, float]
    upcast_vae: bool
    """Whether the family's own pipelines decode an fp16 VAE in fp32 (SDXL's overflows; SD1.5's
    pipeline decodes in the VAE's dtype)."""
    min_region_side: int
    """The smallest picture side regions work at: masks go down to the deepest attention level."""
    base_repo: str
    ip_adapter: str
    image_encoder: str
    controlnet: str
    """The canny ControlNet ``--controlnet auto`` loads (``control`` jobs keeping the edges)."""
    tile_controlnet: str
    """The Tile ControlNet ``--tile-controlnet auto`` loads (``control`` jobs keeping the picture)."""
    preview_vae: str
    skip_components: frozenset[str] = field(default_factory=frozenset)
    """Components of the hub pipeline that are never loaded (SD1.5's safety checker: 1.2 GB)."""
    no_guidance_rescale: frozenset[Mode] = field(default_factory=frozenset)
    """Modes whose diffusers pipeline has no ``guidance_rescale`` (they would swallow it silently)."""

    def controlnet_for(self, kind: ControlKind) -> str:
        """The family's default ControlNet (hub repo) for a kind of control."""
        return self.tile_controlnet if kind is ControlKind.TILE else self.controlnet

    def expand(self, layout: UNetAttentionLayout, prefixes: tuple[str, ...]) -> list[str]:
        """The attention names under ``prefixes`` (a name equal to one or inside it), in UNet order."""
        return [
            name
            for name in layout.attention_names()
            if any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)
        ]

    def preset_blocks(self, layout: UNetAttentionLayout) -> dict[str, list[str]]:
        """What each block preset targets on this UNet (``model_status.features.preset_blocks``)."""
        style = self.expand(layout, self.style_blocks)
        return {
            BlockPreset.STYLE.value: style,
            BlockPreset.STYLE_LAYOUT.value: self.expand(layout, self.style_layout_blocks),
            BlockPreset.PRECISE.value: style,
            "layout_push": self.expand(layout, self.layout_blocks),
        }


SDXL = FamilyTraits(
    family=ModelFamily.SDXL,
    label="SDXL",
    pipelines={
        Mode.TXT2IMG: "StableDiffusionXLPipeline",
        Mode.IMG2IMG: "StableDiffusionXLImg2ImgPipeline",
        Mode.INPAINT: "StableDiffusionXLInpaintPipeline",
        Mode.CONTROL: "StableDiffusionXLControlNetPipeline",
    },
    style_blocks=("up_blocks.0.attentions.1",),
    layout_blocks=("down_blocks.2.attentions.1",),
    style_layout_blocks=("down_blocks.2.attentions.1", "up_blocks.0.attentions.1"),
    shared_text_tower="text_encoder_2",
    latent_rgb_factors=(
        (0.3651, 0.4232, 0.4341),
        (-0.2533, -0.0042, 0.1068),
        (0.1076, 0.1111, -0.0362),
        (-0.3165, -0.2492, -0.2188),
    ),
    latent_rgb_bias=(0.1084, -0.0175, -0.0011),
    upcast_vae=True,
    min_region_side=32,
    base_repo="stabilityai/stable-diffusion-xl-base-1.0",
    ip_adapter="h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.safetensors",
    image_encoder="h94/IP-Adapter/sdxl_models/image_encoder",
    controlnet="diffusers/controlnet-canny-sdxl-1.0",
    tile_controlnet="xinsir/controlnet-tile-sdxl-1.0",
    preview_vae="madebyollin/taesdxl",
    no_guidance_rescale=frozenset({Mode.CONTROL}),
)

SD15 = FamilyTraits(
    family=ModelFamily.SD15,
    label="SD1.5",
    pipelines={
        Mode.TXT2IMG: "StableDiffusionPipeline",
        Mode.IMG2IMG: "StableDiffusionImg2ImgPipeline",
        Mode.INPAINT: "StableDiffusionInpaintPipeline",
        Mode.CONTROL: "StableDiffusionControlNetPipeline",
    },
    # infer_style_sd15.py: {"up": {"block_1": [1, 1, 1]}} for style; with "down": {"block_2": [1, 1]}
    # and "mid": 1 for style+layout (marked experimental there).
    style_blocks=("up_blocks.1",),
    layout_blocks=("down_blocks.2",),
    style_layout_blocks=("down_blocks.2", "mid_block", "up_blocks.1"),
    shared_text_tower=None,
    # ComfyUI's latent_formats.SD15 (scaled latents, no bias).
    latent_rgb_factors=(
        (0.3512, 0.2297, 0.3227),
        (0.3250, 0.4974, 0.2350),
        (-0.2829, 0.1762, 0.2721),
        (-0.2120, -0.2616, -0.7177),
    ),
    latent_rgb_bias=(0.0, 0.0, 0.0),
    upcast_vae=False,
    min_region_side=64,  # the mid block attends at 1/64 of the picture
    base_repo="stable-diffusion-v1-5/stable-diffusion-v1-5",
    ip_adapter="h94/IP-Adapter/models/ip-adapter_sd15.safetensors",
    image_encoder="h94/IP-Adapter/models/image_encoder",
    controlnet="lllyasviel/control_v11p_sd15_canny",
    tile_controlnet="lllyasviel/control_v11f1e_sd15_tile",
    preview_vae="madebyollin/taesd",
    skip_components=frozenset({"safety_checker", "feature_extractor"}),
    no_guidance_rescale=frozenset({Mode.IMG2IMG, Mode.INPAINT, Mode.CONTROL}),
)

FAMILIES: dict[ModelFamily, FamilyTraits] = {traits.family: traits for traits in (SDXL, SD15)}


def traits(family: ModelFamily) -> FamilyTraits:
    return FAMILIES[family]


def family_of(pipeline: object) -> FamilyTraits:
    """The family of a loaded txt2img pipeline (by its class: what the engine was handed)."""
    name = type(pipeline).__name__
    for candidate in FAMILIES.values():
        if name in candidate.pipelines.values():
            return candidate
    raise ValueError(f"{name} is not a pipeline of a model family this engine runs (SDXL, SD1.5)")
