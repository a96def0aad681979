"""IP-Adapter variants refused at load time in one line naming the files: a mismatched encoder, face
adapters. The ViT-H adapters (test_vit_h_content.py) and plus adapters (test_plus_adapter.py) run."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from backend.engine.adapters import adapter_info
from backend.engine.engine import InstantStyleEngine
from backend.engine.loading import ModelLoadError
from backend.tiny.layouts import TinyAdapter


def test_an_adapter_with_the_wrong_image_encoder_is_refused_at_load(tiny_paths):
    vit_h = tiny_paths.spec("diffusers", TinyAdapter.SDXL_VIT_H)
    spec = replace(tiny_paths.spec("diffusers"), ip_adapter=vit_h.ip_adapter)  # with the bigG-like encoder
    with pytest.raises(ModelLoadError, match="24-d embeddings") as raised:
        InstantStyleEngine.load(spec, device="cpu")
    message = str(raised.value)
    assert vit_h.ip_adapter in message and spec.image_encoder in message and "32-d" in message
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
