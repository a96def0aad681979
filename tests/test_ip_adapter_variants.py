"""IP-Adapter variants: what runs (plain adapters, ViT-H without content subtraction), what is refused at
load time in one line naming the files (a mismatched encoder, face adapters); plus adapters have their
own tests (test_plus_adapter.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from backend.engine.adapters import adapter_info
from backend.engine.engine import InstantStyleEngine
from backend.engine.loading import ModelLoadError
from backend.engine.request import GenerationRequest, StyleReference
from backend.engine.style_embedding import EmbeddingSpaceMismatch
from backend.tiny.components import TINY, build_image_encoder, random_ip_adapter_state

VIT_H_LIKE = replace(TINY, projection_dim=24)
"""Like ip-adapter_sdxl_vit-h next to SDXL: image embeddings of another size than text_encoder_2's."""


@pytest.fixture(scope="module")
def vit_h_files(engine, tmp_path_factory) -> tuple[Path, Path]:
    """A tiny ViT-H-like image encoder and a plain adapter trained (randomly) on its embeddings."""
    folder = tmp_path_factory.mktemp("vit-h")
    torch.manual_seed(7)
    build_image_encoder(VIT_H_LIKE).save_pretrained(folder / "image_encoder")
    state = random_ip_adapter_state(engine.pipeline.unet, torch.Generator().manual_seed(8), VIT_H_LIKE)
    flat = {f"{part}.{key}": value for part, tensors in state.items() for key, value in tensors.items()}
    save_file(flat, str(folder / "ip-adapter_sdxl_vit-h.safetensors"))
    return folder / "ip-adapter_sdxl_vit-h.safetensors", folder / "image_encoder"


def job(style_image, content_text: str) -> GenerationRequest:
    return GenerationRequest(
        prompt="a cat",
        style_images=[StyleReference(style_image)],
        content_text=content_text,
        width=64,
        height=64,
        steps=2,
    )


def test_a_vit_h_adapter_runs_without_content_subtraction(tiny_paths, vit_h_files, style_image):
    adapter, encoder = vit_h_files
    spec = replace(tiny_paths.spec("diffusers"), ip_adapter=str(adapter), image_encoder=str(encoder))
    engine = InstantStyleEngine.load(spec, device="cpu")
    assert not engine.encoder.content_subtraction and not engine.features.content_subtraction
    assert engine.generate(job(style_image, "")).images[0].shape == (64, 64, 3)
    with pytest.raises(EmbeddingSpaceMismatch, match="leave 'subtract content' empty"):
        engine.generate(job(style_image, "stripes"))


def test_an_adapter_with_the_wrong_image_encoder_is_refused_at_load(tiny_paths, vit_h_files):
    adapter, _ = vit_h_files
    spec = replace(tiny_paths.spec("diffusers"), ip_adapter=str(adapter))  # with the bigG-like encoder
    with pytest.raises(ModelLoadError, match="24-d embeddings") as raised:
        InstantStyleEngine.load(spec, device="cpu")
    message = str(raised.value)
    assert str(adapter) in message and spec.image_encoder in message and "32-d" in message
    assert "\n" not in message


def test_a_face_adapter_is_refused_with_the_reason(tiny_paths):
    from diffusers.models.embeddings import IPAdapterFullImageProjection

    face = IPAdapterFullImageProjection(image_embed_dim=32, cross_attention_dim=80)
    pipe = SimpleNamespace(
        unet=SimpleNamespace(encoder_hid_proj=SimpleNamespace(image_projection_layers=[face])),
        image_encoder=SimpleNamespace(config=SimpleNamespace(projection_dim=32, hidden_size=32)),
    )
    spec = replace(tiny_paths.spec(), ip_adapter="/models/ip-adapter-full-face_sd15.safetensors")
    with pytest.raises(ModelLoadError, match="a face adapter") as raised:
        adapter_info(pipe, spec)
    assert "/models/ip-adapter-full-face_sd15.safetensors" in str(raised.value)
    assert "\n" not in str(raised.value)
