"""The tiny random SD1.5 (issue 23): SD1.5's real topology in every on-disk layout, each loadable by
diffusers' own loaders, and seeded (the same generator version writes the same bytes)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from backend.tiny.sd15 import SD15, SD15_SCHEDULER_CONFIG, build_sd15_text_encoder, build_sd15_unet
from backend.tiny.sd15 import build_sd15_vae as build_vae
from backend.tiny.sd15_layouts import (
    PLAIN_SD15,
    PLUS_SD15,
    TINY_SD15_CONTROLNET_REPO_ID,
    TINY_SD15_IP_REPO_ID,
    TINY_SD15_REPO_ID,
    TinySd15Paths,
    ensure_tiny_sd15_model,
)

CROSS, PROJECTION, IMAGE_HIDDEN = 32, 24, 32


@pytest.fixture(scope="session")
def sd15(tmp_path_factory: pytest.TempPathFactory) -> TinySd15Paths:
    return ensure_tiny_sd15_model(tmp_path_factory.mktemp("tiny-sd15") / "root")


def load_pipe(paths: TinySd15Paths, dtype: torch.dtype = torch.float32):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(str(paths.diffusers_folder), dtype=dtype)


def attention_layout(unet: torch.nn.Module) -> tuple[tuple[int, ...], int, tuple[int, ...]]:
    def count(block: torch.nn.Module) -> int:
        return len(getattr(block, "attentions", None) or [])

    down = tuple(count(b) for b in unet.down_blocks)
    return down, count(unet.mid_block), tuple(count(b) for b in unet.up_blocks)


def test_the_unet_has_sd15s_attention_layout(sd15: TinySd15Paths) -> None:
    pipe = load_pipe(sd15)
    unet = pipe.unet
    assert attention_layout(unet) == ((2, 2, 2, 0), 1, (0, 3, 3, 3))
    cross = [name for name in unet.attn_processors if name.endswith("attn2.processor")]
    assert len(cross) == 16
    assert unet.config.addition_embed_type is None and not unet.config.use_linear_projection
    assert isinstance(unet.down_blocks[0].attentions[0].proj_in, torch.nn.Conv2d)
    assert unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size == CROSS
    assert unet.config.sample_size * pipe.vae_scale_factor == 64
    assert pipe.vae.config.scaling_factor == 0.18215
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"
    assert {k: pipe.scheduler.config[k] for k in SD15_SCHEDULER_CONFIG} == SD15_SCHEDULER_CONFIG
    assert pipe.text_encoder.config.hidden_act == "quick_gelu"
    assert pipe.safety_checker is None and "text_encoder_2" not in pipe.components


def test_the_real_sizes_count_sd15s_published_parameters() -> None:
    with torch.device("meta"):
        counts = [sum(p.numel() for p in build(SD15).parameters()) for build in (build_sd15_unet, build_vae)]
        counts.append(sum(p.numel() for p in build_sd15_text_encoder(SD15).parameters()))
    assert counts == [859_520_964, 83_653_863, 123_060_480]


def test_the_plain_adapter_has_one_pair_for_each_cross_attention(sd15: TinySd15Paths) -> None:
    state = load_file(str(sd15.ip_adapter()))
    pairs = sorted(int(k.split(".")[1]) for k in state if k.endswith("to_k_ip.weight"))
    assert pairs == list(range(1, 32, 2))
    assert all(f"ip_adapter.{i}.to_v_ip.weight" in state for i in pairs)
    assert state["image_proj.proj.weight"].shape == (4 * CROSS, PROJECTION)
    # diffusers numbers them in attn_processors' order: down_blocks, up_blocks, then mid_block
    assert state["ip_adapter.1.to_k_ip.weight"].shape == (16, CROSS)  # down_blocks.0: 16 channels
    assert state["ip_adapter.29.to_k_ip.weight"].shape == (16, CROSS)  # up_blocks.3.attentions.2
    assert state["ip_adapter.31.to_k_ip.weight"].shape == (64, CROSS)  # mid_block: 64 channels
    bin_state = torch.load(sd15.ip_adapter(suffix=".bin"), weights_only=True)
    assert all(torch.equal(bin_state[k.split(".")[0]][k.split(".", 1)[1]], v) for k, v in state.items())
    plus = load_file(str(sd15.ip_adapter(plus=True)))
    assert plus["image_proj.latents"].shape[1] == 16
    assert plus["image_proj.proj_in.weight"].shape[1] == IMAGE_HIDDEN
    assert plus["image_proj.proj_out.weight"].shape[0] == CROSS


def image_embeds(paths: TinySd15Paths, plus: bool, dtype: torch.dtype) -> torch.Tensor:
    """What the engine feeds: the encoder's pooled projection (plain) or its penultimate hidden states
    (plus), as ``[negative, positive]`` with one image."""
    from transformers import CLIPVisionModelWithProjection

    encoder = CLIPVisionModelWithProjection.from_pretrained(str(paths.image_encoder))
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = encoder(pixels, output_hidden_states=True)
    embeds = out.hidden_states[-2] if plus else out.image_embeds
    return torch.cat([torch.zeros_like(embeds), embeds])[:, None].to(dtype)


@pytest.mark.parametrize("plus", [False, True], ids=["plain", "plus"])
def test_the_adapters_load_and_steer_the_pipeline(sd15: TinySd15Paths, plus: bool) -> None:
    pipe = load_pipe(sd15)
    name = f"{PLUS_SD15 if plus else PLAIN_SD15}.safetensors"
    pipe.load_ip_adapter(
        str(sd15.ip_adapter_folder), subfolder="", weight_name=name, image_encoder_folder=None
    )
    projection = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    kind = "IPAdapterPlusImageProjection" if plus else "ImageProjection"
    assert type(projection).__name__ == kind
    ip_processors = [p for p in pipe.unet.attn_processors.values() if hasattr(p, "to_k_ip")]
    assert len(ip_processors) == 16
    embeds = image_embeds(sd15, plus, torch.float32)
    latents = []
    for scale in (0.0, 1.0):
        pipe.set_ip_adapter_scale(scale)
        out = pipe(
            "a harbour",
            ip_adapter_image_embeds=[embeds],
            height=64,
            width=64,
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(1),
            output_type="latent",
        )
        latents.append(out.images)
    assert torch.isfinite(latents[1]).all()
    assert not torch.allclose(latents[0], latents[1], atol=1e-4), "the adapter changed nothing"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_a_pipeline_call_gives_a_finite_picture(sd15: TinySd15Paths, dtype: torch.dtype) -> None:
    pipe = load_pipe(sd15, dtype)
    pipe.load_ip_adapter(
        str(sd15.ip_adapter_folder),
        subfolder="",
        weight_name=f"{PLAIN_SD15}.safetensors",
        image_encoder_folder=None,
    )
    pipe.to(dtype=dtype)
    picture = pipe(
        "a harbour",
        ip_adapter_image_embeds=[image_embeds(sd15, False, dtype)],
        height=64,
        width=64,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(1),
        output_type="np",
    ).images
    assert picture.shape == (1, 64, 64, 3)
    assert pipe.unet.dtype == dtype
    assert np.isfinite(picture).all() and picture.std() > 0


def test_the_ldm_single_file_loads_back_identical(sd15: TinySd15Paths) -> None:
    from diffusers import StableDiffusionPipeline
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    checkpoint = load_file(str(sd15.single_file))
    assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in checkpoint)
    assert not any(k.startswith("conditioner.") or ".label_emb." in k for k in checkpoint)
    assert infer_diffusers_model_type(checkpoint) == "v1"  # what diffusers calls SD1.x
    loaded = StableDiffusionPipeline.from_single_file(
        str(sd15.single_file), config=str(sd15.diffusers_folder)
    )
    original = load_pipe(sd15)
    for name in ("unet", "vae", "text_encoder"):
        want, got = getattr(original, name).state_dict(), getattr(loaded, name).state_dict()
        assert want.keys() == got.keys(), name
        differ = [k for k in want if not torch.equal(want[k], got[k])]
        assert not differ, f"{name}: {differ[:3]}"


def test_the_hub_snapshots_load_offline(sd15: TinySd15Paths) -> None:
    from diffusers import ControlNetModel, StableDiffusionPipeline

    cache = {"cache_dir": str(sd15.hub_cache), "local_files_only": True}
    pipe = StableDiffusionPipeline.from_pretrained(TINY_SD15_REPO_ID, **cache)
    folder = load_pipe(sd15)
    assert all(torch.equal(v, folder.unet.state_dict()[k]) for k, v in pipe.unet.state_dict().items())
    pipe.load_ip_adapter(
        TINY_SD15_IP_REPO_ID,
        subfolder="models",
        weight_name=f"{PLUS_SD15}.safetensors",
        image_encoder_folder=None,
        **cache,
    )
    assert (
        type(pipe.unet.encoder_hid_proj.image_projection_layers[0]).__name__ == "IPAdapterPlusImageProjection"
    )
    controlnet = ControlNetModel.from_pretrained(TINY_SD15_CONTROLNET_REPO_ID, **cache)
    assert controlnet.config.block_out_channels == pipe.unet.config.block_out_channels
    assert controlnet.config.down_block_types == pipe.unet.config.down_block_types


def lora_outputs(paths: TinySd15Paths, lora: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The UNet's and the text encoder's outputs on fixed inputs, with ``lora`` loaded."""
    pipe = load_pipe(paths)
    if lora is not None:
        pipe.load_lora_weights(str(paths.lora(lora)))
    generator = torch.Generator().manual_seed(3)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, CROSS, generator=generator)
    ids = torch.tensor([[510, 72, 105, 511]])
    with torch.no_grad():
        unet = pipe.unet(sample, 500, encoder_hidden_states=context).sample
        text = pipe.text_encoder(ids).last_hidden_state
    return unet, text


def test_both_lora_layouts_load_to_the_same_change(sd15: TinySd15Paths) -> None:
    kohya = load_file(str(sd15.lora("style-kohya")))
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in kohya
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in kohya
    assert not any(k.startswith(("lora_te1_", "lora_unet_input_blocks")) for k in kohya)
    base_unet, base_text = lora_outputs(sd15, None)
    peft_unet, peft_text = lora_outputs(sd15, "style-peft")
    kohya_unet, kohya_text = lora_outputs(sd15, "style-kohya")
    assert not torch.allclose(base_unet, peft_unet, atol=1e-4)
    assert not torch.allclose(base_text, peft_text, atol=1e-4)
    torch.testing.assert_close(kohya_unet, peft_unet, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kohya_text, peft_text, atol=1e-5, rtol=1e-5)


def test_the_spec_names_files_that_exist(sd15: TinySd15Paths) -> None:
    for layout in ("diffusers", "single-file"):
        spec = sd15.spec(layout, plus=layout == "single-file")
        assert spec.is_test_model and Path(spec.base).exists() and Path(spec.ip_adapter).is_file()
        for folder in (spec.image_encoder, spec.controlnet, spec.preview_vae_default):
            assert Path(folder, "config.json").is_file()
        assert Path(spec.content_text_encoder_default, "tokenizer.json").is_file()
    assert sd15.spec("single-file").base_config == str(sd15.diffusers_folder)
    assert sd15.spec("diffusers", plus=True).label.endswith("+ ip-adapter-plus_sd15")
    hub = sd15.spec("hub")
    repo, file = hub.ip_adapter.split("/models/")
    snapshots = Path(hub.cache_dir, "models--" + repo.replace("/", "--"), "snapshots")
    assert [p.name for p in snapshots.glob(f"*/models/{file}")] == [f"{PLAIN_SD15}.safetensors"]
    for repo_id in (hub.base, hub.controlnet, hub.preview_vae_default, hub.content_text_encoder_default):
        assert Path(hub.cache_dir, "models--" + repo_id.replace("/", "--"), "refs", "main").is_file()
    with pytest.raises(ValueError, match="unknown layout"):
        sd15.spec("ckpt")


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_generating_twice_writes_the_same_bytes(sd15: TinySd15Paths, tmp_path: Path) -> None:
    again = ensure_tiny_sd15_model(tmp_path / "again")
    first, second = digests(sd15.root), digests(again.root)
    assert len(first) > 40 and first == second


def test_the_taesd_decoder_file_is_the_folders_decoder_and_not_taesdxls(sd15: TinySd15Paths) -> None:
    from diffusers import AutoencoderTiny

    from backend.tiny.preview_vae import build_tiny_autoencoder, original_decoder_state

    taesd = AutoencoderTiny.from_pretrained(str(sd15.taesd))
    original = load_file(str(sd15.taesd_decoder_file))
    expected = original_decoder_state(taesd)
    assert original.keys() == expected.keys()
    assert all(torch.equal(original[k], expected[k]) for k in original)
    taesdxl = original_decoder_state(build_tiny_autoencoder())  # the tiny SDXL's (seed 3)
    assert any(not torch.equal(original[k], taesdxl[k]) for k in original)
