"""The generated models really have SDXL's topology: checked by exact parameter counts."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from backend.engine.blocks import UNetAttentionLayout
from backend.tiny.components import (
    SDXL,
    TINY,
    build_image_encoder,
    build_models,
    build_text_encoders,
    build_unet,
    build_vae,
)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_full_size_shapes_match_sdxl_base_exactly():
    """Published sizes of SDXL base 1.0's components; built on the meta device (no memory)."""
    with torch.device("meta"):
        unet = build_unet(SDXL)
        text_encoder, text_encoder_2 = build_text_encoders(SDXL)
        counts = (_count(unet), _count(build_vae(SDXL)), _count(text_encoder), _count(text_encoder_2))
        image_encoder = build_image_encoder(SDXL)
    assert counts == (2_567_463_684, 83_653_863, 123_060_480, 694_659_840)
    assert image_encoder.config.projection_dim == text_encoder_2.config.projection_dim == 1280
    # 70 cross-attention layers, as in SDXL: 2+2 + 10+10 (down), 10 (mid), 10*3 + 2*3 (up).
    cross = [n for n in unet.attn_processors if n.endswith("attn2.processor")]
    assert len(cross) == 70


def test_tiny_model_has_the_same_block_layout():
    with torch.device("meta"):
        tiny, full = build_unet(TINY), build_unet(SDXL)
    assert UNetAttentionLayout.of(tiny) == UNetAttentionLayout.of(full)


class GeneratorDeviceCheck(TorchFunctionMode):
    """Records every call that draws from a generator on another device than the tensor it makes.

    A CPU generator drawing while models are built under ``torch.device("cuda")`` fails on a GPU
    ("Expected a 'cuda' device type for generator"); on the meta device it passes silently, so the
    build path is checked here instead of trusting meta.
    """

    def __init__(self) -> None:
        super().__init__()
        self.mismatches: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        generator = kwargs.get("generator")
        if isinstance(generator, torch.Generator):
            target = kwargs.get("device")
            if target is None:
                tensor = next((a for a in args if isinstance(a, torch.Tensor)), None)
                target = tensor.device if tensor is not None else torch.get_default_device()
            if torch.device(target).type != generator.device.type:
                self.mismatches.append(f"{getattr(func, '__name__', func)}: {generator.device} -> {target}")
        return func(*args, **kwargs)


def test_building_the_full_size_models_draws_every_random_number_where_it_lands(tmp_path):
    """Build the full SDXL shapes on the meta device (as memory_budget.py counts them), every random
    number drawn where the model lands."""
    with torch.device("meta"), GeneratorDeviceCheck() as check:
        models = build_models(tmp_path, SDXL)
    assert check.mismatches == []
    assert models.pipeline.unet.device.type == "meta"
    assert {t.device.type for part in models.ip_adapter_state.values() for t in part.values()} == {"meta"}
