"""The SD1.5 family on the tiny SD1.5 model: read from the checkpoint, its blocks, its pipelines' own
results, every mode and precision, and one-line refusals of what it cannot do."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
import torch
from PIL import Image

from backend.engine.blocks import BlockMapError
from backend.engine.engine import InstantStyleEngine
from backend.engine.family import SD15, SDXL
from backend.engine.family_detect import detect_family, resolve_spec
from backend.engine.load_plan import LoadPlan
from backend.engine.loading import LoraSource, ModelLoadError, ModelSpec
from backend.engine.precise import PreciseLayoutProcessor
from backend.engine.previews import latents_to_rgb
from backend.engine.regions import StyleRegion
from backend.engine.request import GenerationRequest, RequestError, StyleReference
from backend.engine.style_embedding import EmbeddingSpaceMismatch
from protocol import BlockPreset, Mode, ModelPhase, ModelStatus, decode_server_message, encode_message
from protocol.enums import ModelFamily
from tests.conftest import noise_image
from tests.test_half_precision import DTYPES, MATRIX, placement, run_and_check

STYLE = noise_image(21)
INIT = noise_image(22)


def job(**overrides) -> GenerationRequest:
    settings = {
        "prompt": "a lighthouse",
        "style_images": [StyleReference(STYLE)],
        "width": 64,
        "height": 64,
        "steps": 3,
        "seed": 5,
    }
    return GenerationRequest(**{**settings, **overrides})


def test_the_family_is_read_from_the_checkpoint_in_every_layout(sd15_paths, tiny_paths, tmp_path):
    for layout in ("diffusers", "single-file", "hub"):
        assert detect_family(sd15_paths.spec(layout)) is ModelFamily.SD15, layout
        assert detect_family(tiny_paths.spec(layout)) is ModelFamily.SDXL, layout
    # The tiny SDXL file lacks the OpenCLIP layer diffusers' own detection looks for: read by key family.
    assert detect_family(ModelSpec(base=str(tiny_paths.single_file))) is ModelFamily.SDXL
    from safetensors.torch import save_file

    sd2 = tmp_path / "sd21.safetensors"
    save_file({"cond_stage_model.model.token_embedding.weight": torch.zeros(2, 2)}, str(sd2))
    with pytest.raises(ModelLoadError, match="Stable Diffusion 2 checkpoint") as raised:
        detect_family(ModelSpec(base=str(sd2)))
    assert "\n" not in str(raised.value)
    odd = tmp_path / "odd.safetensors"
    save_file({"weight": torch.zeros(1)}, str(odd))
    with pytest.raises(ModelLoadError, match="neither SDXL's"):
        detect_family(ModelSpec(base=str(odd)))
    # A spec that names its family is not second-guessed.
    assert detect_family(ModelSpec(base=str(odd), family=ModelFamily.SD15)) is ModelFamily.SD15


def test_a_bare_sd15_checkpoint_gets_the_families_own_parts():
    spec = resolve_spec(ModelSpec(family=ModelFamily.SD15, controlnet="auto"))
    assert (spec.base, spec.ip_adapter, spec.image_encoder, spec.controlnet, spec.preview_vae_default) == (
        SD15.base_repo,
        "h94/IP-Adapter/models/ip-adapter_sd15.safetensors",
        "h94/IP-Adapter/models/image_encoder",
        "lllyasviel/control_v11p_sd15_canny",
        "madebyollin/taesd",
    )
    assert spec.label == "SD1.5 + ip-adapter_sd15"
    sdxl = resolve_spec(ModelSpec(controlnet="auto"))
    assert sdxl.family is ModelFamily.SDXL and sdxl.controlnet == SDXL.controlnet
    assert sdxl.ip_adapter == ModelSpec().ip_adapter  # SDXL's defaults stay
    given = resolve_spec(ModelSpec(family=ModelFamily.SD15, ip_adapter="mine/ip.safetensors"))
    assert given.ip_adapter == "mine/ip.safetensors"  # what the artist gave is kept


def test_the_features_announce_the_family_and_its_preset_blocks(sd15_engine):
    features = sd15_engine.features
    assert features.family is ModelFamily.SD15 and features.native_side == 64
    assert features.preset_blocks["style"] == [f"up_blocks.1.attentions.{i}" for i in range(3)]
    assert features.preset_blocks["style+layout"] == [
        "down_blocks.2.attentions.0",
        "down_blocks.2.attentions.1",
        "mid_block.attentions.0",
        *features.preset_blocks["style"],
    ]
    assert features.preset_blocks["layout_push"] == [
        "down_blocks.2.attentions.0",
        "down_blocks.2.attentions.1",
    ]
    assert len(features.attention_blocks) == 16 and features.content_subtraction
    status = ModelStatus(ModelPhase.READY, "ready", features=features)
    assert decode_server_message(encode_message(status)).features == features


def ip_scales(engine: InstantStyleEngine) -> dict[str, float]:
    """Each attention block's IP-Adapter scale, read back from its cross-attention processors."""
    scales = {}
    for name, processor in engine.pipeline.unet.attn_processors.items():
        inner = processor.inner if isinstance(processor, PreciseLayoutProcessor) else processor
        if name.endswith("attn2.processor"):
            block = name.split(".transformer_blocks")[0]
            scales.setdefault(block, set()).add(inner.scale[0])
    return {block: values.pop() for block, values in scales.items() if len(values) == 1}


@pytest.mark.parametrize(
    ("preset", "targets"),
    [
        (BlockPreset.STYLE, {f"up_blocks.1.attentions.{i}" for i in range(3)}),
        (
            BlockPreset.STYLE_LAYOUT,
            {f"up_blocks.1.attentions.{i}" for i in range(3)}
            | {"down_blocks.2.attentions.0", "down_blocks.2.attentions.1", "mid_block.attentions.0"},
        ),
    ],
)
def test_each_preset_feeds_exactly_the_official_sd15_blocks(sd15_engine, preset, targets):
    sd15_engine.prepare(job(preset=preset, style_scale=0.8))
    scales = ip_scales(sd15_engine)
    assert len(scales) == 16
    assert {block for block, scale in scales.items() if scale == pytest.approx(0.8)} == targets
    assert all(scale == 0.0 for block, scale in scales.items() if block not in targets)


def test_precise_pushes_the_layout_in_both_layout_attentions_and_custom_maps_are_checked(sd15_engine):
    sd15_engine.prepare(job(preset=BlockPreset.PRECISE, layout_push=1.5))
    wrapped = {
        name.split(".transformer_blocks")[0]
        for name, processor in sd15_engine.pipeline.unet.attn_processors.items()
        if isinstance(processor, PreciseLayoutProcessor)
    }
    assert wrapped == {"down_blocks.2.attentions.0", "down_blocks.2.attentions.1"}
    sd15_engine.precise.set(None)
    # SDXL's style block has no attention on SD1.5: a clear error, not diffusers' silent no-op.
    with pytest.raises(BlockMapError, match=r"up\.block_0 is not a UNet block with attention"):
        sd15_engine.prepare(job(preset=BlockPreset.CUSTOM, block_scales={"up": {"block_0": [0.0, 1.0]}}))
    sd15_engine.prepare(job(preset=BlockPreset.CUSTOM, block_scales={"up": {"block_1": [0.0, 1.0, 0.0]}}))
    assert ip_scales(sd15_engine)["up_blocks.1.attentions.1"] == 1.0


def test_the_engine_equals_the_sd15_pipeline_called_with_its_prompt(sd15_engine):
    """Cached prompt encodings (two tensors, no pooled ones) and the engine's decode: the same pixels as
    diffusers' StableDiffusionPipeline given the prompt text and decoding itself."""
    request = job(content_text="a dog", content_scale=0.4)
    pipe, kwargs = sd15_engine.prepare(request)
    assert "pooled_prompt_embeds" not in kwargs
    direct = {key: value for key, value in kwargs.items() if "prompt_embeds" not in key}
    direct["generator"] = [torch.Generator("cpu").manual_seed(request.seed)]
    with torch.inference_mode():
        own = pipe(
            prompt=request.prompt, negative_prompt=request.negative_prompt, **{**direct, "output_type": "np"}
        ).images[0]
    got = sd15_engine.generate(request).images[0]
    assert np.abs(got.astype(int) - np.round(own * 255).astype(int)).max() <= 1


def test_an_fp16_sd15_vae_decodes_in_its_own_dtype_as_its_pipeline_does(sd15_paths):
    engine = InstantStyleEngine.load(sd15_paths.spec("diffusers"), device="cpu", dtype="fp16")
    assert engine.pipeline.vae.config.force_upcast  # what the config says; SD1.5's pipelines ignore it
    request = job()
    pipe, kwargs = engine.prepare(request)
    decoded_in = []
    hook = pipe.vae.decoder.register_forward_pre_hook(lambda _m, args: decoded_in.append(args[0].dtype))
    try:
        got = engine.generate(request).images[0]
        with torch.inference_mode():
            kwargs["generator"] = [torch.Generator("cpu").manual_seed(request.seed)]
            own = pipe(**{**kwargs, "output_type": "np"}).images[0]
    finally:
        hook.remove()
    assert decoded_in == [torch.float16, torch.float16]
    assert np.abs(got.astype(int) - np.round(own * 255).astype(int)).max() <= 1


@pytest.mark.parametrize("family", ["sdxl", "sd15"])
def test_every_modes_call_arguments_are_parameters_of_its_pipeline(engine, sd15_engine, family):
    """SD pipelines take ``**kwargs`` and drop what they do not know: an argument sent to the wrong
    pipeline (SD1.5's img2img has no guidance_rescale) would be ignored without a word."""
    chosen = engine if family == "sdxl" else sd15_engine
    for mode in Mode:
        extra = {} if mode is Mode.TXT2IMG else {"init_image": INIT, "strength": 0.6}
        if mode is Mode.INPAINT:
            extra["mask"] = Image.new("L", (64, 64), 255)
        pipe, kwargs = chosen.prepare(job(mode=mode, **extra))
        parameters = inspect.signature(pipe.__call__).parameters
        assert set(kwargs) <= set(parameters), (family, mode, set(kwargs) - set(parameters))
        assert type(pipe).__name__ == chosen.family.pipelines[mode]


def test_what_sd15_cannot_do_is_one_line_per_job(sd15_engine, sd15_plus_engine):
    with pytest.raises(RequestError, match=r"guidance_rescale is not available with SD1\.5 img2img jobs"):
        sd15_engine.generate(job(mode=Mode.IMG2IMG, init_image=INIT, guidance_rescale=0.7))
    region = StyleRegion(Image.new("L", (48, 48), 255), [StyleReference(STYLE)])
    with pytest.raises(RequestError, match=r"at least 64 px a side on SD1\.5"):
        sd15_engine.generate(job(width=48, height=48, regions=[region]))
    with pytest.raises(EmbeddingSpaceMismatch, match="'plus' IP-Adapter"):
        sd15_plus_engine.generate(job(content_text="a dog", content_scale=0.5))
    assert sd15_engine.generate(job()).images[0].shape == (64, 64, 3)  # and it serves on


def test_content_subtraction_goes_through_the_vit_h_text_tower(sd15_paths):
    engine = InstantStyleEngine.load(sd15_paths.spec("diffusers"), device="cpu")
    assert engine.encoder.content_tower is not None and not engine.encoder.content_tower.loaded
    plain = engine.generate(job()).images[0]
    assert not engine.encoder.content_tower.loaded  # loaded only when a job asks for content text
    subtracted = engine.generate(job(content_text="a dog", content_scale=1.0)).images[0]
    assert engine.encoder.content_tower.loaded
    assert np.abs(plain.astype(int) - subtracted.astype(int)).mean() > 0.5
    off = InstantStyleEngine.load(
        dataclasses.replace(sd15_paths.spec("diffusers"), content_text_encoder="none"), device="cpu"
    )
    assert not off.features.content_subtraction
    with pytest.raises(EmbeddingSpaceMismatch, match="no text tower in that space"):
        off.generate(job(content_text="a dog", content_scale=1.0))


def test_linear_previews_use_sd15s_own_factors(sd15_paths):
    engine = InstantStyleEngine.load(
        dataclasses.replace(sd15_paths.spec("diffusers"), preview_vae="none"), device="cpu"
    )
    previews = []
    engine.generate(job(steps=3, preview_share=None), on_step=previews.append)
    middle = previews[0]
    # SD1.5's PNDM sampler gives no x0 estimate: the preview shows x_t, with SD1.5's factors.
    assert np.array_equal(middle.rgb, latents_to_rgb(middle.latents, ModelFamily.SD15))
    assert not np.array_equal(middle.rgb, latents_to_rgb(middle.latents, ModelFamily.SDXL))


@pytest.mark.parametrize("dtype", ["fp32", *DTYPES])
def test_every_preset_and_mode_runs_on_sd15_in_every_precision(sd15_paths, dtype):
    spec = dataclasses.replace(
        sd15_paths.spec("diffusers"), loras=(LoraSource("ink", str(sd15_paths.lora("style-kohya"))),)
    )
    engine = InstantStyleEngine.load(spec, device="cpu", dtype=dtype)
    loaded = placement(engine)
    for name, request in MATRIX.items():
        run_and_check(engine, request, loaded, name)
    plus = InstantStyleEngine.load(sd15_paths.spec("diffusers", plus=True), device="cpu", dtype=dtype)
    for name in ("txt2img", "precise", "regions", "control"):
        run_and_check(plus, dataclasses.replace(MATRIX[name], content_text=""), placement(plus), name)


def test_a_canvas_larger_than_sd15s_side_is_refined_in_tiles(sd15_engine):
    from backend.engine.request import Refine

    steps = []
    result = sd15_engine.generate(
        job(width=192, height=128, refine=Refine(strength=0.4, tile=64, overlap=16)), on_step=steps.append
    )
    assert result.images[0].shape == (128, 192, 3)
    assert any(step.tiles > 1 for step in steps)


def test_speed_presets_follow_the_family(sd15_paths):
    """The managed backend offers every preset for any checkpoint: one the family lacks is a problem
    line, not a failed start."""
    spec = dataclasses.replace(sd15_paths.spec("diffusers"), speed_presets=("lightning-4", "hyper-8-cfg"))
    plan = LoadPlan.make(spec, device="cpu")
    assert plan.spec.speed_presets == ("hyper-8-cfg",)
    assert plan.problems == (
        "speed preset lightning-4: speed preset 'lightning-4' has no LoRA for SD1.5 models: "
        "expected one of hyper-8-cfg, lcm-4",
    )
    spec = dataclasses.replace(
        spec,
        loras=(LoraSource("hyper-sd15-8steps-cfg", str(sd15_paths.lora("style-peft"))),),
    )
    engine = InstantStyleEngine.load(spec, device="cpu")
    assert plan.problems[0] in engine.features.problems
    (offered,) = engine.features.speed_presets
    assert (offered.name, offered.lora, offered.steps) == ("hyper-8-cfg", "hyper-sd15-8steps-cfg", 8)
    result = engine.generate(job(loras=(("hyper-sd15-8steps-cfg", 1.0),), steps=2))
    assert result.images[0].shape == (64, 64, 3)


def test_generate_from_an_sd15_single_file_on_the_command_line(sd15_paths, sd15_engine, tmp_path):
    """An artist's SD1.5 .safetensors: the family is read from the file, the speed preset's LoRA is
    SD1.5's, and the pixels are the engine's."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    style = tmp_path / "style.png"
    STYLE.save(style)
    common = [
        sys.executable, "-m", "backend", "generate",
        "--model", str(sd15_paths.single_file), "--base-config", str(sd15_paths.diffusers_folder),
        "--ip-adapter", str(sd15_paths.ip_adapter()), "--image-encoder", str(sd15_paths.image_encoder),
        "--content-text-encoder", str(sd15_paths.clip_vit_h), "--preview-vae", "none",
        "--style", str(style), "--prompt", "a lighthouse", "--content", "stripes",
        "--width", "64", "--height", "64", "--steps", "3", "--seed", "5", "--device", "cpu",
    ]  # fmt: skip
    plain = subprocess.run(
        [*common, "--out", str(tmp_path / "plain.png")], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert plain.returncode == 0, plain.stderr
    expected = sd15_engine.generate(job(content_text="stripes", content_scale=0.5)).images[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "plain.png").convert("RGB")), expected)
    lora = f"hyper-sd15-8steps-cfg={sd15_paths.lora('style-peft')}"
    fast = subprocess.run(
        [
            *common,
            "--lora",
            lora,
            "--speed",
            "hyper-8-cfg",
            "--speed",
            "lightning-4",
            "--out",
            str(tmp_path / "f.png"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )
    assert fast.returncode == 0, fast.stderr
    assert Image.open(tmp_path / "f.png").size == (64, 64)
    assert "'lightning-4' has no LoRA for SD1.5 models" in fast.stderr + fast.stdout
    # Asked to apply a preset SD1.5 has no LoRA for: one line, no traceback.
    lightning = subprocess.run(
        [*common, "--speed", "lightning-4", "--out", str(tmp_path / "l.png")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert lightning.returncode == 2 and "Traceback" not in lightning.stderr, lightning.stderr
    assert "--speed lightning-4: speed preset 'lightning-4' has no LoRA for SD1.5 models" in lightning.stderr


@pytest.mark.parametrize(
    "case", ["xl adapter, sd15 model", "sd15 adapter, xl model", "sd15 cn, xl", "xl cn, sd15"]
)
def test_parts_of_another_family_are_refused_at_start_in_one_line(sd15_paths, tiny_paths, case):
    sd15, xl = sd15_paths.spec("diffusers"), tiny_paths.spec("diffusers")
    spec, wanted = {
        "xl adapter, sd15 model": (
            dataclasses.replace(
                sd15,
                ip_adapter=str(tiny_paths.ip_adapter_safetensors),
                image_encoder=str(tiny_paths.image_encoder),
            ),
            "an IP-Adapter for this SD1.5 model",
        ),
        "sd15 adapter, xl model": (
            dataclasses.replace(
                xl, ip_adapter=str(sd15_paths.ip_adapter()), image_encoder=str(sd15_paths.image_encoder)
            ),
            "an IP-Adapter for this SDXL model",
        ),
        "sd15 cn, xl": (
            dataclasses.replace(xl, controlnet=str(sd15_paths.controlnet)),
            "a ControlNet for this SDXL",
        ),
        "xl cn, sd15": (
            dataclasses.replace(sd15, controlnet=str(tiny_paths.controlnet)),
            "lllyasviel/control_v11p",
        ),
    }[case]
    with pytest.raises(ModelLoadError) as raised:
        InstantStyleEngine.load(spec, device="cpu")
    assert wanted in str(raised.value) and "\n" not in str(raised.value)


def test_the_hub_sd15_pipelines_safety_checker_is_never_downloaded():
    """stable-diffusion-v1-5's model_index names a safety checker (1.2 GB) and a feature extractor that
    the backend never loads: the download plan leaves them out."""
    import torch as _torch

    from backend.engine.downloads import pipeline_folders, wanted_from_hub

    index = {
        "_class_name": "StableDiffusionPipeline",
        "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"],
    }
    folders, singles = wanted_from_hub(resolve_spec(ModelSpec(family=ModelFamily.SD15)), _torch.float16)
    folder = folders[0]
    assert folder.repo_id == SD15.base_repo and folder.variant == "fp16" and folder.pipeline
    assert singles == [("h94/IP-Adapter", "models/ip-adapter_sd15.safetensors")]
    assert pipeline_folders(index, folder.skip) == ["text_encoder", "unet"]
    assert len(pipeline_folders(index)) == 4  # SDXL's plan takes every part its index names


def test_a_canvas_inpainted_from_host_encoded_latents_and_cfg_rescale_on_a_refined_canvas(sd15_paths):
    """A canvas larger than the tier's VAE tile is encoded tile by tile and handed over as latents:
    SD1.5's inpaint pipeline then needs them as its masked latents too (it masked the picture with a
    mask of another size). A refined txt2img with CFG rescale refines without it (SD1.5's img2img has
    none), rather than failing after its first stage."""
    from backend.engine.request import Refine

    engine = InstantStyleEngine.load(sd15_paths.spec("diffusers"), device="cpu", memory_tier="encoders-off")
    mask = Image.new("L", (576, 576), 0)
    mask.paste(255, (0, 0, 288, 576))
    init = noise_image(23, 576)
    result = engine.generate(
        job(mode=Mode.INPAINT, init_image=init, mask=mask, width=576, height=576, steps=2)
    )
    picture = result.images[0]
    assert picture.shape == (576, 576, 3)
    refined = engine.generate(
        job(
            width=128,
            height=64,
            steps=2,
            guidance_rescale=0.5,
            refine=Refine(strength=0.4, tile=64, overlap=16),
        )
    )
    assert refined.images[0].shape == (64, 128, 3)


def test_detection_edge_cases_are_one_line_each(sd15_paths, tiny_paths, engine, sd15_engine, tmp_path):
    """A folder saved from an img2img pipeline is still its family; an SD2 folder (SD1.5's pipeline
    class, 1024-d text) and an inpainting file (9-channel UNet) are refused; a truncated file says so;
    a .ckpt is read without loading its tensors; a hub repo that cannot be reached now is planned as
    SDXL and left to the load to report."""
    import json as _json
    import shutil

    from safetensors.torch import save_file

    from backend.engine.family_detect import family_of_index

    assert family_of_index("x", {"_class_name": "StableDiffusionXLImg2ImgPipeline"}) is ModelFamily.SDXL
    assert family_of_index("x", {"_class_name": "StableDiffusionInpaintPipeline"}) is ModelFamily.SD15
    sd2 = tmp_path / "sd2"
    shutil.copytree(sd15_paths.diffusers_folder, sd2, ignore=shutil.ignore_patterns("*.safetensors"))
    config = _json.loads((sd2 / "unet" / "config.json").read_text())
    (sd2 / "unet" / "config.json").write_text(_json.dumps({**config, "cross_attention_dim": 1024}))
    with pytest.raises(ModelLoadError, match="1024-d text"):
        detect_family(ModelSpec(base=str(sd2)))
    inpainting = tmp_path / "inpainting.safetensors"
    key = "model.diffusion_model.input_blocks.0.0.weight"
    save_file(
        {key: torch.zeros(4, 9, 3, 3), "cond_stage_model.transformer.x": torch.zeros(1)}, str(inpainting)
    )
    with pytest.raises(ModelLoadError, match="inpainting checkpoint"):
        detect_family(ModelSpec(base=str(inpainting)))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(sd15_paths.single_file.read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        detect_family(ModelSpec(base=str(truncated)))
    from safetensors.torch import load_file

    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(sd15_paths.single_file))}, ckpt)
    assert detect_family(ModelSpec(base=str(ckpt))) is ModelFamily.SD15
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint\nat all\n")
    with pytest.raises(ModelLoadError) as raised:
        detect_family(ModelSpec(base=str(garbage)))
    assert "\n" not in str(raised.value)
    unreachable = ModelSpec(
        base="someone/sd15-finetune", cache_dir=str(tmp_path / "empty"), local_files_only=True
    )
    plan = LoadPlan.make(unreachable, device="cpu")
    assert plan.spec.family is None and plan.spec.ip_adapter == ModelSpec().ip_adapter


def test_the_plugins_known_blocks_are_the_engines(engine, sd15_engine):
    """The plugin keeps each family's preset blocks for servers that do not announce them (it cannot
    import the backend): they are the engine's own."""
    from krita_plugin.instantstyle.model_family import KNOWN_PRESET_BLOCKS

    for running in (engine, sd15_engine):
        assert KNOWN_PRESET_BLOCKS[running.family.family] == running.features.preset_blocks


def test_an_sd15_plus_backend_serves_its_features_jobs_and_one_line_refusals(sd15_plus_engine):
    """Through the server: the features say SD1.5 and plus, a content text is one error line and the
    server serves on, and a job's pixels are the engine's for the request the server builds."""
    from backend.client import InstantStyleClient, frame_image
    from backend.server.inputs import build_request
    from protocol import ImageAdapter
    from tests.server_helpers import generate_message, run, running_server

    async def scenario():
        async with (
            running_server(sd15_plus_engine) as server,
            InstantStyleClient.connect(server.url) as client,
        ):
            features = client.status.features
            await client.submit(generate_message(1, content_text="a cat"), {0: STYLE})
            refused = await client.follow(1)
            await client.submit(generate_message(2, preset=BlockPreset.STYLE_LAYOUT), {0: STYLE})
            return features, refused, await client.follow(2)

    features, refused, served = run(scenario())
    assert features.family is ModelFamily.SD15 and features.image_adapter is ImageAdapter.PLUS
    assert not features.content_subtraction
    assert refused.error is not None and "'plus' IP-Adapter" in refused.error.message
    assert "\n" not in refused.error.message
    (frame,) = served.images
    request = build_request(generate_message(2, preset=BlockPreset.STYLE_LAYOUT), {0: STYLE})
    expected = sd15_plus_engine.generate(request).images[0]
    assert np.array_equal(np.asarray(frame_image(frame).convert("RGB")), expected)
