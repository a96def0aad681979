"""Write an SDXL or SD1.5 pipeline as one original-format (SGM/LDM) ``.safetensors`` file.

Artists mostly have single-file checkpoints in Stability's original key layout
(``model.diffusion_model.*``, ``first_stage_model.*``, and ``conditioner.embedders.*`` for SDXL's
SGM files or ``cond_stage_model.transformer.*`` for SD1.5's LDM files).
This is the inverse of the key mapping in diffusers' ``single_file_utils``, so
that the tiny test model can be loaded back through diffusers' real
``from_single_file`` code path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
LDM_CLIP_PREFIX = "cond_stage_model.transformer."
"""SD1.5's one text encoder (CLIP ViT-L/14's text half) in an LDM file."""
Layout = Literal["sgm", "ldm"]
OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}


def _replace_first(key: str, mapping: dict[str, str]) -> str:
    for new, old in mapping.items():
        if key.startswith(new + "."):
            return old + key[len(new) :]
    return key


def _unet_key(key: str, layers_per_block: int) -> str:
    parts = key.split(".")
    top = _replace_first(key, _UNET_TOP)
    if top != key:
        return top
    per_level = layers_per_block + 1
    if parts[0] == "down_blocks":
        level, kind, index, rest = int(parts[1]), parts[2], parts[3], ".".join(parts[4:])
        if kind == "downsamplers":
            return f"input_blocks.{per_level * (level + 1)}.0.op.{'.'.join(parts[5:])}"
        block = per_level * level + int(index) + 1
        if kind == "resnets":
            return f"input_blocks.{block}.0.{_replace_first(rest, _RESNET)}"
        return f"input_blocks.{block}.1.{rest}"
    if parts[0] == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "resnets":
            return f"middle_block.{2 * index}.{_replace_first(rest, _RESNET)}"
        return f"middle_block.1.{rest}"
    if parts[0] == "up_blocks":
        level, kind, index, rest = int(parts[1]), parts[2], parts[3], ".".join(parts[4:])
        if kind == "upsamplers":
            # The upsampler follows the resnet (and the attention, if the level has one).
            return f"output_blocks.{per_level * level + layers_per_block}.{{up}}.{'.'.join(parts[4:])}"
        block = per_level * level + int(index)
        if kind == "resnets":
            return f"output_blocks.{block}.0.{_replace_first(rest, _RESNET)}"
        return f"output_blocks.{block}.1.{rest}"
    raise KeyError(f"no original-format name for UNet key {key}")


def unet_to_original(state: dict[str, torch.Tensor], config: dict[str, object]) -> dict[str, torch.Tensor]:
    layers = int(config["layers_per_block"])  # type: ignore[arg-type]
    up_types = list(config["up_block_types"])  # type: ignore[arg-type]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = _unet_key(key, layers)
        if "{up}" in name:
            level = int(key.split(".")[1])
            name = name.replace("{up}", "2" if "CrossAttn" in up_types[level] else "1")
        out[UNET_PREFIX + name] = value
    return out


def vae_to_original(state: dict[str, torch.Tensor], config: dict[str, object]) -> dict[str, torch.Tensor]:
    levels = len(config["up_block_types"])  # type: ignore[arg-type]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        name = name.replace("mid_block.resnets.0", "mid.block_1").replace(
            "mid_block.resnets.1", "mid.block_2"
        )
        if "mid_block.attentions.0" in name:
            name = name.replace("mid_block.attentions.0", "mid.attn_1")
            name = name.replace("group_norm", "norm").replace("to_out.0", "proj_out")
            for letter in "qkv":
                name = name.replace(f"to_{letter}.", f"{letter}.")
            if value.ndim == 2:  # linear -> 1x1 conv, as the original stores it
                value = value[:, :, None, None]
        parts = name.split(".")
        if parts[1] == "down_blocks":
            kind = "downsample" if parts[3] == "downsamplers" else "block"
            tail = parts[5:] if kind == "downsample" else parts[4:]
            name = ".".join([parts[0], "down", parts[2], kind, *tail])
        elif parts[1] == "up_blocks":
            level = levels - 1 - int(parts[2])
            kind = "upsample" if parts[3] == "upsamplers" else "block"
            tail = parts[5:] if kind == "upsample" else parts[4:]
            name = ".".join([parts[0], "up", str(level), kind, *tail])
        out[VAE_PREFIX + name] = value
    return out


def clip_l_to_original(
    state: dict[str, torch.Tensor], prefix: str = CLIP_L_PREFIX
) -> dict[str, torch.Tensor]:
    return {
        prefix + (key if key.startswith("text_model.") else f"text_model.{key}"): value
        for key, value in state.items()
        if not key.endswith("position_ids")
    }


def open_clip_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' CLIPTextModelWithProjection -> OpenCLIP's text tower names."""
    state = {k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}
    out: dict[str, torch.Tensor] = {
        "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        "ln_final.weight": state.pop("final_layer_norm.weight"),
        "ln_final.bias": state.pop("final_layer_norm.bias"),
        "text_projection": state.pop("text_projection.weight").T.contiguous(),
    }
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    for i in range(len(layers)):
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [state.pop(f"{src}self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")]
            )
            out[f"{dst}attn.out_proj.{kind}"] = state.pop(f"{src}self_attn.out_proj.{kind}")
            out[f"{dst}ln_1.{kind}"] = state.pop(f"{src}layer_norm1.{kind}")
            out[f"{dst}ln_2.{kind}"] = state.pop(f"{src}layer_norm2.{kind}")
            out[f"{dst}mlp.c_fc.{kind}"] = state.pop(f"{src}mlp.fc1.{kind}")
            out[f"{dst}mlp.c_proj.{kind}"] = state.pop(f"{src}mlp.fc2.{kind}")
    if state:
        raise KeyError(f"unmapped text_encoder_2 keys: {sorted(state)[:5]}")
    return {OPEN_CLIP_PREFIX + k: v for k, v in out.items()}


def save_single_file(pipeline: object, path: Path, layout: Layout = "sgm") -> Path:
    """Save the pipeline's UNet, VAE and text towers as one file: ``sgm`` for an SDXL pipeline (both
    towers under ``conditioner.embedders``), ``ldm`` for an SD1.5 one (``cond_stage_model``)."""
    from safetensors.torch import save_file

    p = pipeline
    tensors: dict[str, torch.Tensor] = {}
    tensors.update(unet_to_original(p.unet.state_dict(), dict(p.unet.config)))  # type: ignore[attr-defined]
    tensors.update(vae_to_original(p.vae.state_dict(), dict(p.vae.config)))  # type: ignore[attr-defined]
    if layout == "ldm":
        tensors.update(clip_l_to_original(p.text_encoder.state_dict(), LDM_CLIP_PREFIX))  # type: ignore[attr-defined]
    elif layout == "sgm":
        tensors.update(clip_l_to_original(p.text_encoder.state_dict()))  # type: ignore[attr-defined]
        tensors.update(open_clip_to_original(p.text_encoder_2.state_dict()))  # type: ignore[attr-defined]
    else:
        raise ValueError(f"unknown single-file layout {layout!r}: expected sgm or ldm")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path
