"""Tiny random LoRAs for the tiny model, in the two key layouts LoRAs come in.

- the diffusers/PEFT layout: ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` (and
  ``text_encoder.…``), what ``save_lora_weights`` writes;
- the Kohya layout of community SDXL LoRAs: ``lora_unet_<SGM block names>.lora_down.weight`` /
  ``lora_up.weight`` / ``alpha`` and ``lora_te1_…`` for the first text encoder; SD1.5's Kohya LoRAs
  name the UNet's modules as diffusers does (``lora_unet_down_blocks_0_attentions_0_…``: sd-scripts
  trains SD1.x on diffusers' UNet) and the one text encoder ``lora_te_…``.

``style_lora`` in both layouts holds the same LoRA (the Kohya copy's alpha halves a doubled
``lora_up``, exactly, in binary floating point), so both must load to the same pixels.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import torch

RANK = 4
KohyaNames = Literal["sdxl", "sd15"]
"""Which family's Kohya naming: SGM block names and ``lora_te1_``, or diffusers names and ``lora_te_``."""
_UNET_TARGET = re.compile(r"attentions\.\d+\.transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$")
_TEXT_TARGET = re.compile(r"encoder\.layers\.0\.self_attn\.(q_proj|k_proj|v_proj|out_proj)$")


def _targets(module: torch.nn.Module, pattern: re.Pattern[str]) -> list[tuple[str, torch.nn.Linear]]:
    return [
        (name, layer)
        for name, layer in module.named_modules()
        if pattern.search(name) and isinstance(layer, torch.nn.Linear)
    ]


def random_lora(
    unet: torch.nn.Module, text_encoder: torch.nn.Module | None, seed: int, std: float = 0.3
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{"unet.<module>" or "text_encoder.<module>": (A, B)}`` with A: (rank, in), B: (out, rank)."""
    generator = torch.Generator().manual_seed(seed)
    parts = [("unet", unet, _UNET_TARGET)]
    if text_encoder is not None:
        parts.append(("text_encoder", text_encoder, _TEXT_TARGET))
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for prefix, module, pattern in parts:
        for name, layer in _targets(module, pattern):
            if prefix == "text_encoder" and not name.startswith("text_model."):
                name = f"text_model.{name}"  # the names LoRAs use (transformers 4's module layout)
            down = torch.randn(RANK, layer.in_features, generator=generator) * std
            up = torch.randn(layer.out_features, RANK, generator=generator) * std
            lora[f"{prefix}.{name}"] = (down, up)
    return lora


def peft_layout(lora: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for module, (down, up) in lora.items():
        tensors[f"{module}.lora_A.weight"] = down.contiguous()
        tensors[f"{module}.lora_B.weight"] = up.contiguous()
    return tensors


def sgm_name(module: str, layers_per_block: int) -> str:
    """A diffusers UNet module path in the original (SGM) block naming Kohya's SDXL LoRAs use."""
    per_block = layers_per_block + 1
    if match := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", module):
        block, layer, rest = match.groups()
        return f"input_blocks.{1 + int(block) * per_block + int(layer)}.1.{rest}"
    if match := re.match(r"mid_block\.attentions\.0\.(.*)", module):
        return f"middle_block.1.{match.group(1)}"
    if match := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", module):
        block, layer, rest = match.groups()
        return f"output_blocks.{int(block) * per_block + int(layer)}.1.{rest}"
    raise ValueError(f"no SGM name for {module}")


def kohya_layout(
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]], layers_per_block: int, names: KohyaNames = "sdxl"
) -> dict[str, torch.Tensor]:
    """The same LoRA as Kohya writes it: alpha = rank / 2 scales by 0.5, so ``lora_up`` is doubled."""
    tensors: dict[str, torch.Tensor] = {}
    for module, (down, up) in lora.items():
        prefix, path = module.split(".", 1)
        if prefix == "unet":
            unet_path = sgm_name(path, layers_per_block) if names == "sdxl" else path
            name = "lora_unet_" + unet_path.replace(".", "_")
        else:
            name = ("lora_te1_" if names == "sdxl" else "lora_te_") + path.replace(".", "_")
        tensors[f"{name}.lora_down.weight"] = down.contiguous()
        tensors[f"{name}.lora_up.weight"] = (up * 2.0).contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(RANK / 2)
    return tensors


def write_tiny_loras(
    folder: Path, unet: torch.nn.Module, text_encoder: torch.nn.Module, names: KohyaNames = "sdxl"
) -> None:
    """``style-peft``/``style-kohya`` (one LoRA, UNet + first text encoder) and ``other-peft``
    (a second, UNet-only LoRA, for switching)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    style = random_lora(unet, text_encoder, seed=1)
    other = random_lora(unet, None, seed=2)
    layers_per_block = unet.config.layers_per_block  # type: ignore[attr-defined]
    save_file(peft_layout(style), str(folder / "style-peft.safetensors"))
    save_file(kohya_layout(style, layers_per_block, names), str(folder / "style-kohya.safetensors"))
    save_file(peft_layout(other), str(folder / "other-peft.safetensors"))
