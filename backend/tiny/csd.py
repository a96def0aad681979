"""A tiny random CSD in the layouts real CSD weights come in: tests load it as they would ViT-L/14's.

``checkpoint.pth`` is what the authors' ``CSD/train_csd.py`` saves (and ``tomg-group-umd/CSD-ViT-L``
serves as ``pytorch_model.bin``): ``model_state_dict`` of the DistributedDataParallel wrapper (every
key under ``module.``), both optimisers' states, the iteration, the fp16 scaler and the training
``args`` (an ``argparse.Namespace``; the hub's pickle scan of the real file also lists numpy scalars).
``model.safetensors`` is the bare ``CSD_CLIP.state_dict()``, as ``PyTorchModelHubMixin`` writes it.

The keys are OpenAI CLIP's ``VisionTransformer``'s (no ``proj``: CSD sets it to None) plus
``last_layer_style`` and ``last_layer_content``. Width 128 makes two of CLIP's 64-wide heads; the
MLP is 1× wide, not CLIP's 4×, to stay under 1 MB (the width is read from the tensors anyway).
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class TinyCsdShape:
    width: int = 128
    layers: int = 2
    heads: int = 2
    patch_size: int = 4
    image_size: int = 24
    intermediate_size: int = 128
    style_dim: int = 32


TINY_CSD = TinyCsdShape()


@dataclass(frozen=True)
class TinyCsdFiles:
    folder: Path
    checkpoint: Path
    """``checkpoint.pth``: the authors' training checkpoint layout."""
    safetensors: Path
    """``model.safetensors``: the same weights, bare ``CSD_CLIP`` keys."""
    shape: TinyCsdShape = TINY_CSD


def tiny_csd_state(seed: int = 0, s: TinyCsdShape = TINY_CSD) -> OrderedDict[str, torch.Tensor]:
    """``CSD_CLIP.state_dict()`` of a tiny random CSD, in the module's own key order."""
    width, inner, patch = s.width, s.intermediate_size, s.patch_size
    tokens = (s.image_size // patch) ** 2 + 1
    generator = torch.Generator().manual_seed(seed)

    def normal(*size: int, std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(size, generator=generator) * std + mean

    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    state["backbone.class_embedding"] = normal(width, std=width**-0.5)
    state["backbone.positional_embedding"] = normal(tokens, width, std=width**-0.5)
    state["backbone.conv1.weight"] = normal(width, 3, patch, patch, std=(3 * patch * patch) ** -0.5)
    for name in ("ln_pre", *(f"transformer.resblocks.{i}" for i in range(s.layers)), "ln_post"):
        if name.startswith("ln_"):
            state[f"backbone.{name}.weight"] = normal(width, std=0.1, mean=1.0)
            state[f"backbone.{name}.bias"] = normal(width, std=0.1)
            continue
        block = f"backbone.{name}."
        state[block + "attn.in_proj_weight"] = normal(3 * width, width, std=width**-0.5)
        state[block + "attn.in_proj_bias"] = normal(3 * width, std=0.1)
        state[block + "attn.out_proj.weight"] = normal(width, width, std=width**-0.5)
        state[block + "attn.out_proj.bias"] = normal(width, std=0.1)
        state[block + "ln_1.weight"] = normal(width, std=0.1, mean=1.0)
        state[block + "ln_1.bias"] = normal(width, std=0.1)
        state[block + "mlp.c_fc.weight"] = normal(inner, width, std=width**-0.5)
        state[block + "mlp.c_fc.bias"] = normal(inner, std=0.1)
        state[block + "mlp.c_proj.weight"] = normal(width, inner, std=inner**-0.5)
        state[block + "mlp.c_proj.bias"] = normal(width, std=0.1)
        state[block + "ln_2.weight"] = normal(width, std=0.1, mean=1.0)
        state[block + "ln_2.bias"] = normal(width, std=0.1)
    state["last_layer_style"] = normal(width, s.style_dim, std=width**-0.5)
    state["last_layer_content"] = normal(width, s.style_dim, std=width**-0.5)
    return state


def _optimizer_state(parameters: list[torch.Tensor]) -> dict:
    """An optimiser's ``state_dict()`` before its first step (plain numbers and lists)."""
    return torch.optim.SGD([p.clone().requires_grad_() for p in parameters], lr=0.1).state_dict()


def write_tiny_csd(folder: Path, seed: int = 0) -> TinyCsdFiles:
    """Both files into ``folder`` (deterministic from ``seed``; ~0.9 MB each)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    files = TinyCsdFiles(folder, folder / "checkpoint.pth", folder / "model.safetensors")
    state = tiny_csd_state(seed, files.shape)
    backbone = [v for k, v in state.items() if k.startswith("backbone.")]
    heads = [v for k, v in state.items() if not k.startswith("backbone.")]
    args = argparse.Namespace(
        arch="vit_large", content_proj_head="default", lr=3e-4, lambda_s=np.float64(1.0), iters=100
    )
    checkpoint = {
        "model_state_dict": OrderedDict((f"module.{k}", v) for k, v in state.items()),
        "opt_bb": _optimizer_state(backbone),
        "opt_proj": _optimizer_state(heads),
        "iter": 100,
        "args": args,
        "fp16_scaler": {
            "scale": 65536.0,
            "growth_factor": 2.0,
            "backoff_factor": 0.5,
            "growth_interval": 2000,
        },
    }
    torch.save(checkpoint, files.checkpoint)
    save_file({k: v.contiguous() for k, v in state.items()}, files.safetensors, metadata={"format": "pt"})
    return files
