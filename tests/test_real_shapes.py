"""The real-shape lane (issue 19): SDXL's real components with random bf16 weights, through the engine.

The tiny model runs every code path at toy sizes; this runs them at SDXL's: the UNet, both text
encoders, the VAE, ViT-bigG and ViT-H image encoders with their IP-Adapters (70 layers), a canny
ControlNet, TAESD-XL and a Kohya-layout LoRA named after the real UNet's blocks, all built on the meta
device and materialised in bf16 (``backend/tiny/real_shapes.py``; ~15 GB, no download). One small job
per mode (128², 2 steps) proves that every shape, key mapping and wrapper works at real sizes; after
every job each component must still be bf16 on the CPU, and the output finite and of the right shape.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
import torch
from PIL import Image

from backend.engine.adapters import AdapterInfo, adapter_info
from backend.engine.engine import InstantStyleEngine
from backend.engine.loading import LoraSource, ModelSpec
from backend.engine.loras import LoraSet
from backend.engine.preview_vae import LoadedPreviewVae
from backend.engine.previews import StepPreview
from backend.engine.request import GenerationRequest, GenerationResult, StyleReference
from backend.engine.style_embedding import EmbeddingSpaceMismatch
from backend.tiny.components import FULL_LABEL, TINY, build_models, tiny_tokenizer
from backend.tiny.real_shapes import (
    attach_ip_adapter,
    attach_plus_adapter,
    build_real_controlnet,
    build_sdxl_pipeline,
    build_taesdxl,
    build_vit_h_text_tower,
    write_kohya_lora,
)
from protocol.enums import BlockPreset, ImageAdapter, Mode
from tests.conftest import noise_image

DTYPE, CPU = torch.bfloat16, torch.device("cpu")
SIZE, STEPS = 128, 2
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "image_encoder")
SPEC = ModelSpec(label=FULL_LABEL, is_test_model=True)


@dataclass
class Lane:
    engine: InstantStyleEngine
    lora_modules: dict[str, set[str]]
    """The modules the LoRA file names, per component: exactly these must be wrapped."""
    modes: set[Mode] = field(default_factory=set)
    """The modes run so far (their pipelines share every module with the base one)."""
    images: dict[str, np.ndarray] = field(default_factory=dict)


@pytest.fixture(scope="module")
def lane(tmp_path_factory: pytest.TempPathFactory) -> Lane:
    scratch = tmp_path_factory.mktemp("real-shapes")
    pipe = build_sdxl_pipeline(scratch)
    pipe.set_progress_bar_config(disable=True)
    controlnet = build_real_controlnet(pipe.unet)
    attach_ip_adapter(pipe, "vit-bigg")
    adapter_info(pipe, SPEC)  # a plain adapter whose input is the encoder's 1280-d embedding
    lora_modules = write_kohya_lora(scratch / "ink.safetensors", pipe)
    loras = LoraSet(pipe)
    loras.load([LoraSource("ink", str(scratch / "ink.safetensors"))], None, True)
    assert loras.failed == {}, loras.failed
    preview = LoadedPreviewVae(build_taesdxl(), "TAESD-XL shapes, random weights")
    engine = InstantStyleEngine(
        pipe, SPEC, controlnet=controlnet, device=CPU, loras=loras, preview_vae=preview
    )
    return Lane(engine, lora_modules)


def placements(module: torch.nn.Module) -> set[tuple[torch.dtype | None, torch.device]]:
    """Every parameter's and buffer's (dtype, device); integer buffers (position ids) count by device."""
    found = {(p.dtype, p.device) for p in module.parameters()}
    return found | {(b.dtype if b.is_floating_point() else None, b.device) for b in module.buffers()}


def assert_components_kept(lane: Lane) -> None:
    """Every component bf16 on the CPU, and every mode's pipeline still holding the very same modules."""
    engine = lane.engine
    base = {name: getattr(engine.pipeline, name) for name in COMPONENTS}
    modules = {**base, "controlnet": engine.controlnet, "preview_vae": engine.preview_vae.vae}
    wrong = {
        name: sorted(map(str, found))
        for name, module in modules.items()
        if (found := placements(module)) - {(DTYPE, CPU), (None, CPU)}
    }
    assert wrong == {}, f"components changed dtype or device: {wrong}"
    for mode in lane.modes:
        pipe = engine.pipeline_for(mode)
        assert all(getattr(pipe, name) is module for name, module in base.items()), mode


def job(**changes: object) -> GenerationRequest:
    settings: dict[str, object] = {
        "prompt": "a lighthouse at dusk",
        "style_images": [StyleReference(noise_image(1, 96))],
        "content_text": "a cat",
        "width": SIZE,
        "height": SIZE,
        "steps": STEPS,
        "seed": 5,
        **changes,
    }
    return GenerationRequest(**settings)  # type: ignore[arg-type]


def run(lane: Lane, request: GenerationRequest, name: str) -> tuple[GenerationResult, list[StepPreview]]:
    """One job with previews: the frames, the picture, the scores and every component checked."""
    frames: list[StepPreview] = []
    result = lane.engine.generate(request, on_step=frames.append)
    lane.modes.add(request.mode)
    assert_components_kept(lane)
    (image,) = result.images
    assert image.shape == (request.height, request.width, 3) and image.dtype == np.uint8
    levels = len(np.unique(image))
    assert levels > 16, f"a flat picture ({levels} levels): activations saturated somewhere"
    assert [frame.step for frame in frames] == list(range(1, request.effective_steps + 1))
    for frame in frames:
        if frame.rgb is None:  # a step the preview budget left without a picture
            continue
        levels = len(np.unique(frame.rgb))
        assert levels > 16, f"a flat preview at step {frame.step} ({levels} levels)"
        assert frame.latents is not None and bool(torch.isfinite(frame.latents).all())
        assert frame.latents.shape == (1, 4, request.height // 8, request.width // 8)
    score = result.scores[0]
    assert math.isfinite(score.style) and -1.0 <= score.style <= 1.0
    lane.images[name] = image
    return result, frames


def style_image_of(lane: Lane) -> np.ndarray:
    """The plain style job's picture (run here when this test runs alone), to compare others with."""
    if "style" not in lane.images:
        run(lane, job(preview_side=SIZE // 2), "style")
    return lane.images["style"]


def test_components_have_the_published_sizes(lane: Lane) -> None:
    """ViT-bigG, ControlNet canny SDXL and TAESD-XL by exact parameter counts; the IP-Adapter's 70 layers."""
    engine = lane.engine

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    assert count(engine.pipeline.image_encoder) == 1_844_907_264
    assert count(engine.controlnet) == 1_251_014_160
    assert count(engine.preview_vae.vae) == 2_445_063
    unet = engine.pipeline.unet
    ip_layers = [n for n, m in unet.named_modules() if n.endswith("attn2.processor.to_k_ip.0")]
    assert len(ip_layers) == 70
    projection = unet.encoder_hid_proj.image_projection_layers[0]
    assert (projection.image_embeds.in_features, projection.image_embeds.out_features) == (1280, 4 * 2048)
    assert len(engine.precise.names) == 10  # the layout block's 10 transformer layers
    assert_components_kept(lane)


def test_the_kohya_lora_wraps_exactly_the_modules_it_names(lane: Lane) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    pipe = lane.engine.pipeline
    wrapped = {
        name: {n for n, m in getattr(pipe, name).named_modules() if isinstance(m, BaseTunerLayer)}
        for name in ("unet", "text_encoder", "text_encoder_2")
    }
    assert wrapped == lane.lora_modules
    assert set(lane.engine.loras.loaded["ink"].components) == {"unet", "text_encoder", "text_encoder_2"}


def test_txt2img_with_content_subtraction_and_tiny_autoencoder_previews(lane: Lane) -> None:
    assert lane.engine.encoder.content_subtraction  # ViT-bigG and text_encoder_2: one 1280-d space
    # The preview budget (on, as in the server): the first step at half the asked side, the last
    # (step 2) the result itself at the asked side.
    result, frames = run(lane, job(preview_side=SIZE // 2), "style")
    assert [frame.rgb.shape for frame in frames] == [(SIZE // 4, SIZE // 4, 3), (SIZE // 2, SIZE // 2, 3)]
    assert all(frame.rgb.dtype == np.uint8 for frame in frames)
    result, frames = run(lane, job(preview_side=1024, seed=6), "style, full-size previews")
    assert [frame.rgb.shape for frame in frames] == [(SIZE // 2, SIZE // 2, 3), (SIZE, SIZE, 3)]
    assert np.array_equal(frames[-1].rgb, result.images[0])


def test_precise_preset(lane: Lane) -> None:
    style = style_image_of(lane)
    run(lane, job(preset=BlockPreset.PRECISE, guidance_scale=5.0), "precise")
    assert lane.engine.precise.installed is None  # the wrappers are out again after the job
    assert not np.array_equal(lane.images["precise"], style)


def test_lora_selected_in_the_request(lane: Lane) -> None:
    style = style_image_of(lane)
    run(lane, job(loras=(("ink", 1.0),)), "lora")
    assert not np.array_equal(lane.images["lora"], style)


@pytest.fixture(scope="module")
def from_pipe_problems(tmp_path_factory: pytest.TempPathFactory) -> dict[Mode, dict[str, str]]:
    """What ``pipeline_for`` does to the modules' dtypes, on the tiny model in bf16 first: at real size a
    cast to fp32 (issue 19, finding 1) needs ~31 GB, which would take the machine down, not fail a test."""
    models = build_models(tmp_path_factory.mktemp("tiny-bf16"), TINY)
    pipe = models.pipeline
    pipe.register_modules(image_encoder=models.image_encoder)
    pipe.load_ip_adapter(models.ip_adapter_state, subfolder="", weight_name="", image_encoder_folder=None)
    pipe.to(dtype=DTYPE)
    engine = InstantStyleEngine(pipe, SPEC, controlnet=models.controlnet.to(dtype=DTYPE), device=CPU)
    problems: dict[Mode, dict[str, str]] = {}
    for mode in (Mode.IMG2IMG, Mode.INPAINT, Mode.CONTROL):
        engine.pipeline_for(mode)
        modules = {name: getattr(pipe, name) for name in COMPONENTS} | {"controlnet": engine.controlnet}
        cast = {name: str(m.dtype) for name, m in modules.items() if m.dtype != DTYPE}
        if cast:
            problems[mode] = cast
            pipe.to(dtype=DTYPE)
            engine.controlnet.to(dtype=DTYPE)
    return problems


def run_shared_pipeline_mode(
    lane: Lane, problems: dict[Mode, dict[str, str]], request: GenerationRequest
) -> None:
    if request.mode in problems:
        pytest.fail(
            f"engine.pipeline_for({request.mode.value}) casts shared modules to fp32 (from_pipe without a "
            f"dtype), seen on the tiny model in bf16: {problems[request.mode]}; not run at real size"
        )
    run(lane, request, request.mode.value)


def test_img2img(lane: Lane, from_pipe_problems: dict[Mode, dict[str, str]]) -> None:
    init = noise_image(2, SIZE)
    run_shared_pipeline_mode(
        lane, from_pipe_problems, job(mode=Mode.IMG2IMG, init_image=init, steps=4, strength=0.5)
    )


def test_inpaint(lane: Lane, from_pipe_problems: dict[Mode, dict[str, str]]) -> None:
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (64, 64, 192, 192))
    request = job(mode=Mode.INPAINT, init_image=noise_image(3, SIZE), mask=mask, steps=4, strength=0.5)
    run_shared_pipeline_mode(lane, from_pipe_problems, request)


def test_control_with_the_controlnet(lane: Lane, from_pipe_problems: dict[Mode, dict[str, str]]) -> None:
    lines = Image.new("RGB", (SIZE, SIZE), "white")
    lines.paste((0, 0, 0), (40, 40, 216, 60))
    lines.paste((0, 0, 0), (120, 40, 136, 220))
    run_shared_pipeline_mode(lane, from_pipe_problems, job(mode=Mode.CONTROL, init_image=lines))


def test_vit_h_adapter_subtracts_content_through_its_own_text_tower(lane: Lane, tmp_path) -> None:
    """Last: swaps the bigG encoder and its adapter for ip-adapter_sdxl_vit-h's (the UNet is shared);
    content is subtracted through ViT-H's own text tower (laion's shape, from a folder, in bf16), and
    without one (``none``) refused in one line."""
    old = lane.engine
    pipe, controlnet, loras, preview = old.pipeline, old.controlnet, old.loras, old.preview_vae
    lane.engine, lane.modes = None, set()  # type: ignore[assignment]
    del old  # the bigG engine, its mode pipelines and its encoder go
    gc.collect()
    pipe.unload_ip_adapter()
    attach_ip_adapter(pipe, "vit-h")
    adapter_info(pipe, SPEC)  # 1024-d embeddings into the adapter's 1024-d projection
    projection = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    assert projection.image_embeds.in_features == pipe.image_encoder.config.projection_dim == 1024
    assert sum(p.numel() for p in pipe.image_encoder.parameters()) == 632_076_800
    none = replace(SPEC, content_text_encoder="none")
    lane.engine = InstantStyleEngine(
        pipe, none, controlnet=controlnet, device=CPU, loras=loras, preview_vae=preview
    )
    assert not lane.engine.encoder.content_subtraction
    with pytest.raises(EmbeddingSpaceMismatch, match="leave 'subtract content' empty"):
        lane.engine.generate(job())
    assert_components_kept(lane)
    result, _ = run(lane, job(content_text=""), "vit-h")
    assert result.scores[0].content is None and result.scores[0].prompt is None

    tower = build_vit_h_text_tower()
    tower.save_pretrained(tmp_path / "clip-vit-h")
    tiny_tokenizer(tmp_path / "tokenizer").save_pretrained(tmp_path / "clip-vit-h")
    del tower
    spec = replace(SPEC, content_text_encoder=str(tmp_path / "clip-vit-h"))
    lane.engine = InstantStyleEngine(
        pipe, spec, controlnet=controlnet, device=CPU, loras=loras, preview_vae=preview
    )
    assert lane.engine.features.content_subtraction and not lane.engine.encoder.content_tower.loaded
    result, _ = run(lane, job(), "vit-h with content")
    loaded = lane.engine.encoder.content_tower.get().encoder
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert loaded.config.projection_dim == 1024 and loaded.config.num_hidden_layers == 24
    assert result.scores[0].content is not None and math.isfinite(result.scores[0].content)


def test_plus_adapter_at_real_shapes(lane: Lane) -> None:
    """After the ViT-H test: ip-adapter-plus_sdxl_vit-h's Resampler and ViT-H's 257 patch features at
    their real sizes (diffusers reads the heads from the weights), every preset's job in bf16."""
    old = lane.engine
    pipe, controlnet, loras, preview = old.pipeline, old.controlnet, old.loras, old.preview_vae
    lane.engine, lane.modes = None, set()  # type: ignore[assignment]
    del old
    gc.collect()
    pipe.unload_ip_adapter()
    attach_plus_adapter(pipe)
    assert adapter_info(pipe, SPEC) == AdapterInfo(ImageAdapter.PLUS, 16)
    resampler = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    assert len(resampler.layers) == 4 and resampler.layers[0].attn.heads == 20
    assert (resampler.proj_in.in_features, resampler.proj_out.out_features) == (1280, 2048)
    parameters = sum(p.numel() for p in resampler.parameters())
    parameters += sum(
        p.numel() for name, p in pipe.unet.named_parameters() if "to_k_ip" in name or "to_v_ip" in name
    )
    assert 420e6 < parameters < 430e6  # the Resampler's 83 M and the image-token projections' 341 M
    parts = {"controlnet": controlnet, "device": CPU, "loras": loras, "preview_vae": preview}
    lane.engine = InstantStyleEngine(pipe, SPEC, **parts)
    assert not lane.engine.features.content_subtraction
    for preset in (BlockPreset.STYLE, BlockPreset.PRECISE):
        result, _ = run(lane, job(content_text="", preset=preset), f"plus {preset.value}")
        assert result.scores[0].content is None


def test_sd15_components_have_the_published_sizes() -> None:
    """SD1.5's real shapes on the meta device (what ``memory_sizes`` counts the tiers from), against the
    published counts: stable-diffusion-v1-5's UNet, CLIP ViT-L/14 text and VAE exactly; the canny
    ControlNet and h94's adapters against their fp16 files' sizes (2 bytes a parameter)."""
    from diffusers import AutoencoderTiny, ControlNetModel

    from backend.tiny.sd15_real_shapes import (
        build_sd15_text_encoder,
        build_sd15_unet,
        build_sd15_vae,
        cross_attention_widths,
        ip_adapter_counts,
    )

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    with torch.device("meta"):
        unet = build_sd15_unet()
        controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
        counts = [
            count(unet),
            count(build_sd15_text_encoder()),
            count(build_sd15_vae()),
            count(AutoencoderTiny()),
        ]
    assert counts == [859_520_964, 123_060_480, 83_653_863, 2_445_063]  # TAESD: TAESD-XL's shape
    # control_v11p_sd15_canny's diffusion_pytorch_model.fp16.safetensors: 723 MB.
    assert round(count(controlnet) * 2 / 1e6) == 723
    # 16 cross-attention layers (ids 1..31 in the files): down 320 x2, 640 x2, 1280 x2, mid 1280,
    # up 1280 x3, 640 x3, 320 x3.
    assert sorted(cross_attention_widths(unet)) == [320] * 5 + [640] * 5 + [1280] * 6
    vit_h, vit_bigg = ip_adapter_counts(unet, 1024, 1280), ip_adapter_counts(unet, 1280, 1664)
    # ip-adapter_sd15.bin 44.6 MB, ip-adapter-plus_sd15.bin 98.2 MB, ip-adapter_sd15_vit-G.bin 46.2 MB.
    assert (vit_h["plain"], vit_h["plus"], vit_bigg["plain"]) == (22_319_616, 49_087_488, 23_106_048)
    assert [round(n * 2 / 1e5) / 10 for n in (vit_h["plain"], vit_h["plus"], vit_bigg["plain"])] == [
        44.6,
        98.2,
        46.2,
    ]
