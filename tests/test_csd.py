"""CSD style descriptors: both layouts of a tiny random CSD give exactly what OpenAI CLIP's
``VisionTransformer`` and ``CSD_CLIP``'s style head compute from the raw keys (written out here in
plain torch, no transformers), with CSD's preprocessing; anything that is not a CSD checkpoint is one
clear ``CsdLoadError``, and a pickle that would run code is refused."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from backend.engine.csd import CLIP_MEAN, CLIP_STD, CsdLoadError, csd_from_state, csd_pixels, load_csd
from backend.tiny.csd import TINY_CSD, TinyCsdFiles, write_tiny_csd
from tests.conftest import noise_image


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TinyCsdFiles:
    return write_tiny_csd(tmp_path_factory.mktemp("csd"))


@pytest.fixture(scope="module")
def raw(tiny) -> dict[str, torch.Tensor]:
    return load_file(tiny.safetensors)


def images() -> list[Image.Image]:
    wide = Image.fromarray(np.asarray(noise_image(7, 60))[:40])  # 60 × 40: resized, then cropped
    return [noise_image(1), noise_image(2, 37), wide, Image.new("RGB", (30, 50), (200, 40, 90))]


def reference(raw: dict[str, torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
    """``CSD_CLIP.forward``'s style output: OpenAI CLIP's ``VisionTransformer.forward`` (``proj`` None)
    with ``nn.MultiheadAttention``'s own function, QuickGELU, then ``@ last_layer_style``, normalised."""
    conv = raw["backbone.conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    layers = len([k for k in raw if k.endswith(".attn.in_proj_weight")])

    def norm(x, name):
        return F.layer_norm(x, (width,), raw[f"backbone.{name}.weight"], raw[f"backbone.{name}.bias"])

    x = F.conv2d(pixels, conv, stride=patch).flatten(2).permute(0, 2, 1)
    cls = raw["backbone.class_embedding"] + torch.zeros(x.shape[0], 1, width)
    x = norm(torch.cat([cls, x], dim=1) + raw["backbone.positional_embedding"], "ln_pre")
    x = x.permute(1, 0, 2)  # NLD -> LND, as nn.MultiheadAttention wants it
    for i in range(layers):
        block = f"transformer.resblocks.{i}"
        b = f"backbone.{block}."
        h = norm(x, f"{block}.ln_1")
        attended, _ = F.multi_head_attention_forward(
            h, h, h, width, width // 64,
            raw[b + "attn.in_proj_weight"], raw[b + "attn.in_proj_bias"], None, None, False, 0.0,
            raw[b + "attn.out_proj.weight"], raw[b + "attn.out_proj.bias"],
            training=False, need_weights=False,
        )  # fmt: skip
        x = x + attended
        h = F.linear(norm(x, f"{block}.ln_2"), raw[b + "mlp.c_fc.weight"], raw[b + "mlp.c_fc.bias"])
        h = h * torch.sigmoid(1.702 * h)  # QuickGELU
        x = x + F.linear(h, raw[b + "mlp.c_proj.weight"], raw[b + "mlp.c_proj.bias"])
    feature = norm(x.permute(1, 0, 2)[:, 0, :], "ln_post")
    return F.normalize(feature @ raw["last_layer_style"], dim=1, p=2)


def variant(tmp_path: Path, raw: dict, name: str = "variant.safetensors", **changes) -> str:
    """A copy of the tiny weights with some keys changed (None drops one)."""
    state = {**raw, **changes}
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in state.items() if v is not None}, path)
    return str(path)


def load_error(source: str) -> str:
    with pytest.raises(CsdLoadError) as caught:
        load_csd(source)
    message = str(caught.value)
    assert "\n" not in message.strip()
    return message


@pytest.mark.parametrize("layout", ["checkpoint", "safetensors"])
def test_both_layouts_equal_openai_clip_and_the_csd_head_from_the_raw_keys(tiny, raw, layout):
    model = load_csd(str(getattr(tiny, layout)))
    pictures = images()
    descriptors = model.embed(pictures)
    with torch.no_grad():
        expected = reference(raw, model.pixels(pictures))
    assert descriptors.dtype == torch.float32 and descriptors.shape == (4, TINY_CSD.style_dim)
    torch.testing.assert_close(descriptors, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(descriptors.norm(dim=1), torch.ones(4))


def test_the_same_image_gives_the_same_descriptor_in_both_layouts_and_others_differ(tiny):
    pictures = images()
    official = load_csd(str(tiny.checkpoint)).embed(pictures)
    hub = load_csd(str(tiny.safetensors)).embed(pictures)
    assert torch.equal(official, hub)
    alone = load_csd(str(tiny.checkpoint)).embed(pictures[1:2])
    torch.testing.assert_close(alone, official[1:2], atol=1e-6, rtol=1e-6)  # the batch does not matter
    cosines = official @ official.T
    assert (cosines - torch.eye(4)).abs().max() > 0.01 and cosines.fill_diagonal_(0).max() < 0.9999


def test_the_geometry_comes_from_the_tensors(tiny):
    model = load_csd(str(tiny.safetensors))
    g = model.geometry
    assert (g.width, g.layers, g.heads, g.patch_size, g.image_size) == (128, 2, 2, 4, 24)
    assert (g.intermediate_size, g.style_dim) == (TINY_CSD.intermediate_size, TINY_CSD.style_dim)
    assert model.vision.config.hidden_act == "quick_gelu" and model.vision.config.layer_norm_eps == 1e-5


@pytest.mark.parametrize("prefix", ["module.", "model.", "module.model."])
def test_a_wrapper_prefix_is_the_same_checkpoint(tiny, raw, tmp_path, prefix):
    path = tmp_path / "wrapped.safetensors"
    save_file({prefix + k: v for k, v in raw.items()}, path)
    pictures = images()[:2]
    assert torch.equal(load_csd(str(path)).embed(pictures), load_csd(str(tiny.safetensors)).embed(pictures))


def test_the_descriptor_uses_last_layer_style_and_ignores_last_layer_content(tiny, raw, tmp_path):
    pictures = images()
    base = load_csd(str(tiny.safetensors)).embed(pictures)
    content = variant(tmp_path, raw, "content.safetensors", last_layer_content=torch.randn(128, 32))
    style = variant(tmp_path, raw, "style.safetensors", last_layer_style=torch.randn(128, 32))
    assert torch.equal(load_csd(content).embed(pictures), base)
    assert (load_csd(style).embed(pictures) - base).abs().max() > 0.1


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"backbone.ln_post.bias": None}, "missing key 'backbone.ln_post.bias'"),
        ({"last_layer_content": None}, "missing key 'last_layer_content'"),
        ({"backbone.transformer.resblocks.1.mlp.c_fc.bias": None}, "resblocks.1.mlp.c_fc.bias"),
        ({"backbone.proj": torch.zeros(128, 32)}, "unexpected key 'backbone.proj'"),
        ({"module.backbone.conv1.weight": torch.zeros(1)}, "unexpected key"),
        ({"backbone.ln_pre.weight": torch.zeros(64)}, "'backbone.ln_pre.weight' has shape (64,)"),
        ({"last_layer_style": torch.zeros(64, 32)}, "'last_layer_style' has shape (64, 32), not (128, n)"),
        ({"backbone.positional_embedding": torch.zeros(36, 128)}, "36 rows, not a square + 1"),
    ],
)
def test_a_wrong_or_missing_key_is_one_clear_line(raw, tmp_path, change, named):
    message = load_error(variant(tmp_path, raw, **change))
    assert named in message and message.startswith("variant.safetensors")


def test_files_that_are_not_csd_are_refused_in_one_line(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"vision_model.embeddings.patch_embedding.weight": torch.zeros(8, 3, 4, 4)}, other)
    assert "not a CSD checkpoint: it has no 'backbone.conv1.weight' key" in load_error(str(other))
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    assert "cannot be read as safetensors" in load_error(str(tmp_path / "junk.safetensors"))
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    assert "junk.pth cannot be read as a CSD checkpoint" in load_error(str(tmp_path / "junk.pth"))
    torch.save({"model_state_dict": {"a": 1}}, tmp_path / "numbers.pt")
    assert "no state dict of tensors" in load_error(str(tmp_path / "numbers.pt"))
    assert "no such CSD checkpoint file" in load_error(str(tmp_path / "absent.pth"))
    (tmp_path / "weights.onnx").write_bytes(b"")
    assert ".pth, .pt, .bin or .safetensors" in load_error(str(tmp_path / "weights.onnx"))


class Planted:
    """What a malicious pickle would carry: unpickling it would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(raw, tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model_state_dict": dict(raw), "extra": Planted(marker)}, tmp_path / "evil.pth")
    message = load_error(str(tmp_path / "evil.pth"))
    assert "refused to unpickle getattr" in message  # how a pickle reaches Path.touch
    assert not marker.exists()


def test_the_authors_pickle_written_under_numpy_1_loads(tiny, raw, tmp_path):
    """The real checkpoint names numpy's scalar ``numpy.core.multiarray.scalar`` (numpy 1.x)."""
    checkpoint = torch.load(tiny.checkpoint, weights_only=False)  # our own file
    assert isinstance(checkpoint["args"], argparse.Namespace) and checkpoint["iter"] == 100
    legacy = tmp_path / "numpy1.pth"
    torch.save(checkpoint, legacy, _use_new_zipfile_serialization=False, pickle_protocol=2)
    data = legacy.read_bytes()
    assert b"numpy._core.multiarray\nscalar" in data
    legacy.write_bytes(data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar"))
    pictures = images()[:2]
    assert torch.equal(load_csd(str(legacy)).embed(pictures), load_csd(str(tiny.safetensors)).embed(pictures))


def test_a_hub_path_is_fetched_with_hf_hub_download(tiny, monkeypatch):
    import huggingface_hub

    asked = []

    def download(repo: str, name: str) -> str:
        asked.append((repo, name))
        return str(tiny.checkpoint)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    load_csd("tomg-group-umd/CSD-ViT-L/pytorch_model.bin")
    assert asked == [("tomg-group-umd/CSD-ViT-L", "pytorch_model.bin")]


def test_preprocessing_is_resize_bicubic_center_crop_and_clip_normalisation():
    color = (200, 40, 90)
    pixels = csd_pixels(Image.new("RGB", (33, 71), color), 24)
    expected = (torch.tensor(color) / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert pixels.shape == (3, 24, 24)
    torch.testing.assert_close(pixels, expected.view(3, 1, 1).expand(3, 24, 24))
    banner = np.zeros((50, 300, 3), dtype=np.uint8)
    banner[..., 0] = 255
    banner[:, 100:200] = (0, 255, 0)  # only the middle third survives the center crop
    middle = csd_pixels(Image.fromarray(banner), 24)
    green = (torch.tensor([0.0, 1.0, 0.0]) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(middle, green.view(3, 1, 1).expand(3, 24, 24))
    assert csd_pixels(Image.new("RGBA", (24, 90)), 24).shape == (3, 24, 24)


def test_half_precision_gives_float32_descriptors_near_the_full_ones(tiny):
    pictures = images()
    full = load_csd(str(tiny.safetensors)).embed(pictures)
    half = load_csd(str(tiny.safetensors), dtype=torch.bfloat16).embed(pictures)
    assert half.dtype == torch.float32
    assert (half * full).sum(dim=1).min() > 0.98


def test_the_tiny_files_are_small_and_follow_the_seed(tmp_path):
    one, same, other = (
        write_tiny_csd(tmp_path / name, seed) for name, seed in (("a", 0), ("b", 0), ("c", 1))
    )
    assert one.safetensors.read_bytes() == same.safetensors.read_bytes()
    assert one.safetensors.read_bytes() != other.safetensors.read_bytes()
    assert max(one.checkpoint.stat().st_size, one.safetensors.stat().st_size) < 1_000_000
    loaded = torch.load(one.checkpoint, weights_only=False)
    assert set(loaded) == {"model_state_dict", "opt_bb", "opt_proj", "iter", "args", "fp16_scaler"}
    assert all(key.startswith("module.") for key in loaded["model_state_dict"])
    assert pickle.dumps(loaded["args"])  # plain data


def test_the_real_vit_l_14_shapes_make_clip_vit_l_14():
    """The authors' checkpoint's shapes (``module.`` keys, no tensor read: the meta device)."""
    width, layers, grid, patch = 1024, 24, 16, 14
    shapes = {
        "backbone.class_embedding": (width,),
        "backbone.positional_embedding": (grid * grid + 1, width),
        "backbone.conv1.weight": (width, 3, patch, patch),
        "last_layer_style": (width, 768),
        "last_layer_content": (width, 768),
        **{f"backbone.{ln}.{kind}": (width,) for ln in ("ln_pre", "ln_post") for kind in ("weight", "bias")},
    }
    for i in range(layers):
        b = f"backbone.transformer.resblocks.{i}."
        shapes |= {b + "attn.in_proj_weight": (3 * width, width), b + "attn.in_proj_bias": (3 * width,)}
        shapes |= {b + "attn.out_proj.weight": (width, width), b + "attn.out_proj.bias": (width,)}
        shapes |= {b + "mlp.c_fc.weight": (4 * width, width), b + "mlp.c_fc.bias": (4 * width,)}
        shapes |= {b + "mlp.c_proj.weight": (width, 4 * width), b + "mlp.c_proj.bias": (width,)}
        shapes |= {b + f"{ln}.{kind}": (width,) for ln in ("ln_1", "ln_2") for kind in ("weight", "bias")}
    state = {f"module.{k}": torch.empty(shape, device="meta") for k, shape in shapes.items()}
    model = csd_from_state(state, "checkpoint.pth", device="meta")
    config = model.vision.config
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (1024, 4096, 24)
    assert (config.num_attention_heads, config.patch_size, config.image_size) == (16, 14, 224)
    assert model.image_size == 224 and model.geometry.style_dim == 768
    assert (
        sum(p.numel() for p in model.vision.parameters())
        == sum(t.numel() for t in state.values()) - 2 * 1024 * 768
    )
