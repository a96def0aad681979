"""Content subtraction for the ViT-H IP-Adapters through the image encoder's own CLIP text tower (as the
official InstantStyle SD1.5 script does with laion's ViT-H-14): loaded only when a job asks for content,
from a folder or the hub, equal to raw CLIP calls; one line when it cannot be loaded."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from backend.engine.content_text import ContentTextUnavailable
from backend.engine.engine import InstantStyleEngine
from backend.engine.request import GenerationRequest, StyleReference
from backend.engine.style_embedding import EmbeddingSpaceMismatch
from backend.tiny.layouts import TinyAdapter
from tests.conftest import REPO, noise_image

STYLE = noise_image(61)
VIT_H = TinyAdapter.SDXL_VIT_H


def job(**fields) -> GenerationRequest:
    base = {"prompt": "a harbour", "style_images": [StyleReference(STYLE)], "width": 64, "height": 64}
    return GenerationRequest(**{**base, "steps": 2, "seed": 4, **fields})


@pytest.fixture(scope="module")
def vit_h_engine(tiny_paths) -> InstantStyleEngine:
    return InstantStyleEngine.load(tiny_paths.spec("diffusers", VIT_H), device="cpu")


def test_the_text_tower_loads_with_the_first_job_that_asks_for_content(tiny_paths):
    engine = InstantStyleEngine.load(tiny_paths.spec("diffusers", VIT_H), device="cpu")
    assert engine.features.content_subtraction and engine.encoder.content_tower is not None
    assert not engine.encoder.content_tower.loaded  # not at start (the real one is a 3.9 GB download)
    result = engine.generate(job())
    assert not engine.encoder.content_tower.loaded and result.scores[0].prompt is None  # nor to score
    engine.generate(job(content_text="a cat", content_scale=0.6))
    assert engine.encoder.content_tower.loaded and engine.encoder.counts.texts == 1
    # Loaded, it scores prompts in its space too.
    assert engine.generate(job()).scores[0].prompt is not None


def test_the_style_fed_is_the_image_embedding_minus_the_scaled_clip_text_embedding(vit_h_engine, tiny_paths):
    """Computed without the engine: laion's layout loaded as the whole CLIPModel, its two towers."""
    from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    unet = vit_h_engine.pipeline.unet
    captured: list[torch.Tensor] = []
    hook = unet.encoder_hid_proj.register_forward_hook(lambda _m, args, _o: captured.append(args[0][0]))
    try:
        vit_h_engine.generate(job(content_text="a lighthouse", content_scale=0.7, steps=1))
    finally:
        hook.remove()
    clip = CLIPModel.from_pretrained(str(tiny_paths.clip_vit_h))
    tokenizer = CLIPTokenizer.from_pretrained(str(tiny_paths.clip_vit_h))
    processor = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    with torch.no_grad():
        pixels = processor(images=STYLE, return_tensors="pt").pixel_values
        image = clip.get_image_features(pixel_values=pixels)
        ids = tokenizer(
            "a lighthouse", padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        )
        text = clip.get_text_features(input_ids=ids.input_ids)
    image, text = (getattr(x, "pooler_output", x) for x in (image, text))
    expected = image - 0.7 * text
    fed = captured[0]
    assert fed.shape[-1] == expected.shape[-1] == 24  # ViT-H-like: not text_encoder_2's 32
    torch.testing.assert_close(fed[-1].reshape(-1), expected.reshape(-1), rtol=0, atol=1e-6)
    assert torch.count_nonzero(fed[0]) == 0


def test_content_changes_the_picture_and_scale_zero_is_the_plain_job(vit_h_engine):
    plain = vit_h_engine.generate(job()).images[0]
    assert np.array_equal(
        vit_h_engine.generate(job(content_text="a cat", content_scale=0.0)).images[0], plain
    )
    assert not np.array_equal(
        vit_h_engine.generate(job(content_text="a cat", content_scale=0.8)).images[0], plain
    )


def test_the_hub_layout_loads_the_same_tower(tiny_paths, vit_h_engine):
    engine = InstantStyleEngine.load(tiny_paths.spec("hub", VIT_H), device="cpu")
    assert engine.encoder.content_tower.source == "instantstyle/tiny-clip-vit-h"
    request = job(content_text="a cat", content_scale=0.5)
    ours = engine.encoder.style_embedding([STYLE], [1.0], "a cat", 0.5)
    torch.testing.assert_close(ours, vit_h_engine.encoder.style_embedding([STYLE], [1.0], "a cat", 0.5))
    assert engine.generate(request).images[0].shape == (64, 64, 3)


def test_a_tower_that_cannot_load_is_one_line_and_the_engine_serves_on(tiny_paths, tmp_path):
    spec = dataclasses.replace(
        tiny_paths.spec("diffusers", VIT_H), content_text_encoder=str(tmp_path / "none")
    )
    engine = InstantStyleEngine.load(spec, device="cpu")
    with pytest.raises(ContentTextUnavailable) as raised:
        engine.generate(job(content_text="a cat", content_scale=0.5))
    message = str(raised.value)
    assert str(tmp_path / "none") in message and "--content-text-encoder" in message and "\n" not in message
    assert engine.generate(job()).images[0].shape == (64, 64, 3)


def test_a_folder_without_a_tokenizer_or_of_another_space_is_refused_in_one_line(tiny_paths, tmp_path):
    # SDXL's own text_encoder_2 folder has no tokenizer files (transformers would make an empty one).
    no_tokenizer = str(tiny_paths.diffusers_folder / "text_encoder_2")
    spec = dataclasses.replace(tiny_paths.spec("diffusers", VIT_H), content_text_encoder=no_tokenizer)
    with pytest.raises(ContentTextUnavailable, match="knows 2 tokens"):
        InstantStyleEngine.load(spec, device="cpu").generate(job(content_text="a cat", content_scale=0.5))
    # A whole CLIP model whose space is 16-d, with a tokenizer: no tower for a 24-d image encoder.
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig.from_pretrained(str(tiny_paths.clip_vit_h))
    config.projection_dim = 16
    CLIPModel(config).save_pretrained(tmp_path / "clip-16")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_paths.clip_vit_h / name, tmp_path / "clip-16" / name)
    spec = dataclasses.replace(spec, content_text_encoder=str(tmp_path / "clip-16"))
    engine = InstantStyleEngine.load(spec, device="cpu")
    with pytest.raises(ContentTextUnavailable, match=r"24-d embeddings but the text tower .* 16-d"):
        engine.generate(job(content_text="a cat", content_scale=0.5))
    # Not kept: the next job (scored without it) runs, and a content job is refused the same way again,
    # without loading the tower again.
    assert not engine.encoder.content_tower.loaded
    assert engine.generate(job()).scores[0].prompt is None
    loads = []
    load = engine.encoder.content_tower._load
    engine.encoder.content_tower._load = lambda: loads.append(1) or load()
    with pytest.raises(ContentTextUnavailable, match="16-d"):
        engine.generate(job(content_text="a cat", content_scale=0.5))
    assert loads == []


def test_a_library_error_of_several_lines_is_said_in_one(tiny_paths):
    from backend.engine.content_text import LazyTextTower
    from backend.engine.loading import ModelLoadError

    def fail():
        raise ModelLoadError("laion/CLIP", "a CLIP model", "cannot reach the hub.\nCheck your connection\n")

    tower = LazyTextTower("laion/CLIP", fail, torch.device("cpu"), 24)
    with pytest.raises(ContentTextUnavailable) as raised:
        tower.get()
    message = str(raised.value)
    assert "\n" not in message and "cannot reach the hub. Check your connection" in message
    assert "--content-text-encoder FOLDER" in message


def test_none_turns_content_subtraction_off(tiny_paths):
    off = dataclasses.replace(tiny_paths.spec("diffusers", VIT_H), content_text_encoder="none")
    engine = InstantStyleEngine.load(off, device="cpu")
    assert not engine.features.content_subtraction and engine.encoder.content_tower is None
    with pytest.raises(EmbeddingSpaceMismatch, match="leave 'subtract content' empty"):
        engine.generate(job(content_text="a cat", content_scale=0.5))


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_loads_the_tower_in_the_text_encoders_dtype(tiny_paths, dtype):
    engine = InstantStyleEngine.load(tiny_paths.spec("diffusers", VIT_H), device="cpu", dtype=dtype)
    result = engine.generate(job(content_text="a cat", content_scale=0.5))
    tower = engine.encoder.content_tower.get().encoder
    assert {p.dtype for p in tower.parameters()} == {engine.pipeline.text_encoder_2.dtype}
    assert np.isfinite(result.images[0]).all() and result.scores[0].content is not None


LOAD_FROM_HUB = """
import json, sys
from backend.engine.engine import InstantStyleEngine
from backend.engine.loading import ModelSpec
from backend.engine.request import GenerationRequest, StyleReference
from tests.conftest import noise_image

statuses = []
spec = ModelSpec(**json.loads(sys.argv[1]))
engine = InstantStyleEngine.load(spec, device="cpu", on_status=statuses.append)
loaded_at_start = engine.encoder.content_tower.loaded
request = GenerationRequest(prompt="a harbour", style_images=[StyleReference(noise_image(61))], width=64,
                            height=64, steps=2, seed=4, content_text="a cat", content_scale=0.5)
try:
    engine.generate(request)
    job = "done"
except ValueError as error:
    job = str(error)
print(json.dumps({"phases": [s.phase.value for s in statuses], "loaded_at_start": loaded_at_start,
                  "problems": engine.features.problems, "job": job}))
"""


def test_a_hub_tower_downloads_at_start_with_the_model_and_only_its_text_half(tiny_paths, tmp_path):
    """laion's repo holds the weights several times over (OpenCLIP's copy too): the transformers files
    only, fetched with the model's progress; a repo that cannot be had is one problem line, and the
    model serves."""
    from tests.fake_hub import FakeHub
    from tests.test_watchable_loading import BASE_REPO, IP_REPO, _hub_env

    clip_repo = tmp_path / "clip-repo"
    shutil.copytree(tiny_paths.clip_vit_h, clip_repo)
    shutil.copy(clip_repo / "model.safetensors", clip_repo / "open_clip_model.safetensors")
    repos = {
        BASE_REPO: tiny_paths.diffusers_folder,
        IP_REPO: tiny_paths.root / "ip-adapter",
        "laion/clip": clip_repo,
    }
    spec = {
        "base": BASE_REPO,
        "ip_adapter": f"{IP_REPO}/sdxl_models/ip-adapter_sdxl_vit-h.safetensors",
        "image_encoder": f"{IP_REPO}/models/image_encoder",
        "content_text_encoder_default": "laion/clip",
        "preview_vae": "none",
        "label": "tiny ViT-H from the hub",
        "is_test_model": True,
    }

    def load(spec: dict, cache: str) -> dict:
        done = subprocess.run(
            [sys.executable, "-c", LOAD_FROM_HUB, json.dumps(spec)],
            env=_hub_env(hub, tmp_path / cache),
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    with FakeHub(repos) as hub:
        first = load(spec, "cache")
        fetched = [path for repo, path in hub.downloaded() if repo == "laion/clip"]
        hub.requests.clear()
        again = load(spec, "cache")  # cached: the start asks the hub nothing about the tower (the job's
        # loading still has transformers' own revision checks online)
        listed_again = [target for _method, target in hub.requests if "laion/clip?blobs" in target]
        fetched_again = [path for repo, path in hub.downloaded() if repo == "laion/clip"]
        missing = load({**spec, "content_text_encoder_default": "laion/gone"}, "cache-2")
    assert first["job"] == "done" and first["problems"] == [] and not first["loaded_at_start"]
    assert first["phases"][-1] == "downloading" and "loading" in first["phases"]
    assert sorted(fetched) == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert again["job"] == "done" and again["problems"] == [] and listed_again == fetched_again == []
    assert len(missing["problems"]) == 1 and "laion/gone" in missing["problems"][0]
    assert "\n" not in missing["problems"][0] and "could not download" in missing["problems"][0]
    assert "laion/gone" in missing["job"] and "--content-text-encoder" in missing["job"]
