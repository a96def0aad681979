"""Model loading through the real diffusers code paths, from every on-disk layout."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from backend.engine.engine import InstantStyleEngine
from backend.engine.loading import ModelLoadError, ModelSpec, pick_device, pick_dtype
from backend.engine.request import GenerationRequest, StyleReference
from backend.engine.style_embedding import EmbeddingSpaceMismatch, StyleEncoder


def _image(engine, style_image) -> np.ndarray:
    req = GenerationRequest(
        prompt="a boat",
        style_images=[StyleReference(style_image)],
        width=64,
        height=64,
        steps=2,
        seed=3,
        content_text="a dog",
    )
    return engine.generate(req).images[0]


@pytest.mark.parametrize("layout", ["hub", "single-file"])
def test_every_layout_loads_the_same_model(engine, tiny_paths, style_image, layout):
    other = InstantStyleEngine.load(tiny_paths.spec(layout), device="cpu")
    for component in ("unet", "vae", "text_encoder", "text_encoder_2", "image_encoder"):
        mine, theirs = (
            getattr(engine.pipeline, component).state_dict(),
            getattr(other.pipeline, component).state_dict(),
        )
        assert mine.keys() == theirs.keys(), component
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), component
    # The same bits in every weight; the pictures agree to float round-off only: safetensors' memory
    # map leaves weights at other alignments than a copy (text_encoder_2: 56 vs 0 mod 64 bytes), and
    # the CPU's BLAS then sums in another order (1e-7 in the content embedding, one level in a pixel).
    difference = np.abs(_image(other, style_image).astype(int) - _image(engine, style_image))
    assert difference.max() <= 1
    assert other.info.is_test_model and "TEST" in other.info.label


def test_ip_adapter_bin_loads_like_safetensors(engine, tiny_paths, style_image):
    spec = replace(tiny_paths.spec(), ip_adapter=str(tiny_paths.ip_adapter_bin))
    assert np.array_equal(
        _image(InstantStyleEngine.load(spec, device="cpu"), style_image), _image(engine, style_image)
    )


def test_hub_layout_needs_the_cache_when_offline(tiny_paths, tmp_path):
    spec = replace(tiny_paths.spec("hub"), cache_dir=str(tmp_path / "empty-cache"))
    with pytest.raises(ModelLoadError, match="instantstyle/tiny-sdxl"):
        InstantStyleEngine.load(spec, device="cpu")


@pytest.mark.parametrize("field", ["base", "ip_adapter", "image_encoder"])
def test_missing_files_name_the_path(tiny_paths, tmp_path, field):
    missing = tmp_path / ("nothing.safetensors" if field != "image_encoder" else "no-encoder")
    spec = replace(tiny_paths.spec(), **{field: str(missing)})
    with pytest.raises(ModelLoadError) as raised:
        InstantStyleEngine.load(spec, device="cpu")
    assert str(missing) in str(raised.value)
    assert "expected" in str(raised.value)


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_diffusers_weights_name_the_file(tiny_paths, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_paths.diffusers_folder, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    _truncate(weights)
    with pytest.raises(ModelLoadError, match="truncated") as raised:
        InstantStyleEngine.load(replace(tiny_paths.spec(), base=str(folder)), device="cpu")
    assert str(weights) in str(raised.value)


@pytest.mark.parametrize("target", ["single_file", "ip_adapter_safetensors", "ip_adapter_bin"])
def test_truncated_single_files_name_the_file(tiny_paths, tmp_path, target):
    source = getattr(tiny_paths, target)
    broken = tmp_path / source.name
    shutil.copy(source, broken)
    _truncate(broken)
    field = "base" if target == "single_file" else "ip_adapter"
    spec = replace(
        tiny_paths.spec("single-file" if target == "single_file" else "diffusers"), **{field: str(broken)}
    )
    with pytest.raises(ModelLoadError) as raised:
        InstantStyleEngine.load(spec, device="cpu")
    assert str(broken) in str(raised.value)


def test_not_a_diffusers_folder(tiny_paths, tmp_path):
    with pytest.raises(ModelLoadError, match=r"model_index\.json"):
        InstantStyleEngine.load(replace(tiny_paths.spec(), base=str(tmp_path)), device="cpu")


def test_mismatched_embedding_spaces_refuse_content_subtraction_clearly(engine, style_image):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    other_text = CLIPTextModelWithProjection(
        CLIPTextConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            projection_dim=24,
        )
    )
    encoder = StyleEncoder(engine.pipeline.image_encoder, engine.encoder.image_processor, other_text, None)
    assert not encoder.content_subtraction
    with pytest.raises(EmbeddingSpaceMismatch, match="32-d embeddings and the model's text encoder 24-d"):
        encoder.style_embedding([style_image], [1.0], "a cat", 0.5)
    assert encoder.style_embedding([style_image], [1.0]).shape == (1, 32)  # style alone works


def test_device_and_dtype_selection(monkeypatch):
    cpu = torch.device("cpu")
    assert pick_device("cpu") == cpu
    assert pick_device() == (torch.device("cuda") if torch.cuda.is_available() else pick_device())
    assert pick_dtype(cpu) == torch.float32
    # bf16 where the chosen GPU computes it natively (compute capability 8.0: Ampere and newer).
    cards = {0: (7, 5), 1: (8, 6)}  # a Turing card as the current device, an Ampere one beside it
    asked = []

    def capability(device=None):
        asked.append(device)
        return cards[device.index or 0]

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    assert pick_dtype(torch.device("cuda:1")) == torch.bfloat16
    assert pick_dtype(torch.device("cuda:0")) == torch.float16
    assert pick_dtype(torch.device("cuda:1"), "fp16") == torch.float16  # a flag wins
    assert asked == [torch.device("cuda:1"), torch.device("cuda:0")]
    assert pick_dtype(torch.device("mps")) == torch.float16
    assert pick_dtype(torch.device("cuda"), "bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        pick_dtype(cpu, "fp8")


def test_default_spec_points_at_the_real_models():
    spec = ModelSpec()
    assert spec.base == "stabilityai/stable-diffusion-xl-base-1.0"
    assert spec.ip_adapter == "h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.safetensors"
    assert spec.image_encoder == "h94/IP-Adapter/sdxl_models/image_encoder"
    assert not spec.is_test_model


def test_fp16_hub_loading_prefers_the_fp16_variant_and_falls_back(tiny_paths, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from backend.engine.model_loading import load_base_pipeline
    from backend.tiny.layouts import write_hub_snapshot

    # A repo with both precisions; the fp16 files are marked (conv_in doubled) to tell them apart.
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_paths.diffusers_folder))
    folder = tmp_path / "repo"
    pipe.save_pretrained(folder)
    original = pipe.unet.conv_in.weight.detach().clone()
    with torch.no_grad():
        pipe.unet.conv_in.weight.mul_(2)
    pipe.save_pretrained(folder, variant="fp16")
    write_hub_snapshot(tmp_path / "hub", "someone/sdxl-both", folder)
    spec = ModelSpec(base="someone/sdxl-both", cache_dir=str(tmp_path / "hub"), local_files_only=True)

    half = load_base_pipeline(spec, torch.float16)
    assert half.unet.dtype == torch.float16
    assert torch.equal(half.unet.conv_in.weight, (original * 2).half())
    full = load_base_pipeline(spec, torch.float32)
    assert torch.equal(full.unet.conv_in.weight, original)
    # The tiny hub repo has no fp16 files: fp16 loading falls back to the full-precision weights.
    fallback = load_base_pipeline(tiny_paths.spec("hub"), torch.float16)
    assert torch.equal(fallback.unet.conv_in.weight, original.half())


def test_a_separate_vae_replaces_the_models_own(engine, tiny_paths, style_image, tmp_path):
    """--vae: a folder or a single file; the same VAE gives the same picture, another VAE another one."""
    from diffusers import AutoencoderKL

    own = tiny_paths.diffusers_folder / "vae"
    same = InstantStyleEngine.load(replace(tiny_paths.spec("diffusers"), vae=str(own)), device="cpu")
    assert np.array_equal(_image(same, style_image), _image(engine, style_image))

    other = AutoencoderKL.from_pretrained(str(own))
    with torch.no_grad():
        for weight in other.decoder.parameters():
            weight.mul_(1.5)
    other.save_pretrained(str(tmp_path / "other-vae"))
    changed = InstantStyleEngine.load(
        replace(tiny_paths.spec("diffusers"), vae=str(tmp_path / "other-vae")), device="cpu"
    )
    assert changed.pipeline.vae is not engine.pipeline.vae
    assert not np.array_equal(_image(changed, style_image), _image(engine, style_image))


def test_a_missing_or_broken_vae_names_the_file(tiny_paths, tmp_path):
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    for vae, reason in [
        (tmp_path / "nowhere", "config.json missing"),
        (tmp_path / "broken.safetensors", "corrupt"),
    ]:
        spec = replace(tiny_paths.spec("diffusers"), vae=str(vae))
        with pytest.raises(ModelLoadError, match=reason) as raised:
            InstantStyleEngine.load(spec, device="cpu")
        assert str(vae) in str(raised.value)


def test_a_network_error_during_the_fp16_download_is_not_a_silent_fp32_download(monkeypatch):
    """Only missing fp16 files fall back to full precision; anything else is the error it is."""
    from backend.engine import loading

    calls: list[str | None] = []

    def flaky(repo, dtype, variant=None, **kwargs):
        calls.append(variant)
        raise OSError(
            "Connection reset by peer while downloading unet/diffusion_pytorch_model.fp16.safetensors"
        )

    with pytest.raises(OSError, match="Connection reset"):
        loading.from_hub_preferring_fp16(flaky, "someone/sdxl", torch.float16)
    assert calls == ["fp16"]  # no second, twice-as-large download

    def no_fp16(repo, dtype, variant=None, **kwargs):
        calls.append(variant)
        if variant:
            raise OSError(f"{repo} does not appear to have a file named diffusion_pytorch_model.fp16.bin.")
        return "full precision"

    calls.clear()
    assert loading.from_hub_preferring_fp16(no_fp16, "someone/controlnet", torch.float16) == "full precision"
    assert calls == ["fp16", None]
    calls.clear()
    assert loading.from_hub_preferring_fp16(no_fp16, "someone/controlnet", torch.float32) == "full precision"
    assert calls == [None]  # fp32 never asks for fp16 files


def test_the_controlnet_loads_from_the_hub_in_fp16_without_fp16_files(tiny_paths):
    from backend.engine.loading import load_controlnet

    controlnet = load_controlnet(tiny_paths.spec("hub"), torch.float16)
    assert controlnet.dtype == torch.float16
