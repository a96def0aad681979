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


@pytest.mark.parametrize("kind", ["mark1", "kataragi"])
def test_noobai_adapters_in_their_published_layouts_load_as_the_plain_kinds_they_are(
    tiny_paths, tmp_path, kind
):
    """NoobAI's IP-Adapters are plain ones (not checked against the real files: no hub here; their sizes
    match h94's layouts): NOOB-IPA MARK1 (``r3gm/noob-ipa`` ``model_G/noobIPAMARK1_mark1.safetensors``,
    fp32, with header metadata) on ViT-bigG, kataragi's ``ip_adapter_Noobtest_800000.bin`` (a torch
    pickle of ``image_proj``/``ip_adapter``) on ViT-H. The tiny adapters saved that way run the same."""
    import torch
    from safetensors.torch import load_file, save_file

    from protocol import ImageAdapter

    if kind == "mark1":
        source = tiny_paths.ip_adapter_safetensors
        target = tmp_path / "model_G" / "noobIPAMARK1_mark1.safetensors"
        target.parent.mkdir()
        save_file(load_file(str(source)), str(target), metadata={"modelspec.title": "NOOB-IPA-MARK1"})
        spec = replace(tiny_paths.spec("diffusers"), ip_adapter=str(target))
    else:
        vit_h = tiny_paths.spec("diffusers", TinyAdapter.SDXL_VIT_H)
        flat = load_file(vit_h.ip_adapter)
        nested: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
        for key, value in flat.items():
            part, _, rest = key.partition(".")
            nested[part][rest] = value
        target = tmp_path / "model_H" / "ip_adapter_Noobtest_800000.bin"
        target.parent.mkdir()
        torch.save(nested, target)
        spec = replace(vit_h, ip_adapter=str(target))
    engine = InstantStyleEngine.load(spec, device="cpu")
    reference = InstantStyleEngine.load(
        tiny_paths.spec("diffusers", TinyAdapter.SDXL if kind == "mark1" else TinyAdapter.SDXL_VIT_H),
        device="cpu",
    )
    assert engine.adapter.kind is ImageAdapter.PLAIN and engine.features.content_subtraction
    from backend.engine.request import GenerationRequest, StyleReference
    from tests.conftest import noise_image

    job = GenerationRequest(
        "a fox", [StyleReference(noise_image(3))], width=64, height=64, steps=2, content_text="a dog"
    )
    assert (engine.generate(job).images[0] == reference.generate(job).images[0]).all()
