"""The keys of a CSD checkpoint, and their names in transformers' ``CLIPVisionModel``.

CSD (Somepalli et al. 2024, github learn2phoenix/CSD, ``CSD/model.py``) is ``CSD_CLIP``: OpenAI
CLIP's ``visual`` tower as ``backbone`` (its ``proj`` set to None, so no ``backbone.proj`` key) and
two bare ``(width, 768)`` matrices, ``last_layer_style`` and ``last_layer_content``. Its training
script saves ``model.state_dict()`` of the DistributedDataParallel wrapper, hence ``module.``;
copies on the hub drop it (``PyTorchModelHubMixin``) or nest it (``model.`` in a
``PreTrainedModel``). Whatever wraps it, the keys below ``backbone.`` are OpenAI CLIP's, which the
converter renames to transformers' so that the forward is transformers' own ViT, not one written here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

STYLE_KEY = "last_layer_style"
CONTENT_KEY = "last_layer_content"
ANCHOR = "backbone.conv1.weight"
"""The key that says a file is CSD, and (what precedes it) which wrapper saved it."""

_BLOCK = re.compile(r"backbone\.transformer\.resblocks\.(\d+)\.")
_TOP = {
    "backbone.conv1.weight": "embeddings.patch_embedding.weight",
    "backbone.class_embedding": "embeddings.class_embedding",
    "backbone.positional_embedding": "embeddings.position_embedding.weight",
    "backbone.ln_pre.weight": "pre_layrnorm.weight",
    "backbone.ln_pre.bias": "pre_layrnorm.bias",
    "backbone.ln_post.weight": "post_layernorm.weight",
    "backbone.ln_post.bias": "post_layernorm.bias",
}
_LAYER = {
    "ln_1": "layer_norm1",
    "attn.out_proj": "self_attn.out_proj",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


class CsdLoadError(RuntimeError):
    """A file that is not a CSD checkpoint (or cannot be read as one): one line that says why."""


@dataclass(frozen=True)
class CsdGeometry:
    """The shape of a CSD model, read from its tensors (the file stores no config)."""

    width: int
    layers: int
    heads: int
    patch_size: int
    image_size: int
    intermediate_size: int
    style_dim: int


def strip_wrapper(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The state dict as ``CSD_CLIP`` names it: without ``module.``, ``model.`` or any other wrapper."""
    anchors = [key for key in state if key.endswith(ANCHOR)]
    if not anchors:
        raise CsdLoadError(f"{name} is not a CSD checkpoint: it has no '{ANCHOR}' key")
    prefix = min(anchors, key=len)[: -len(ANCHOR)]
    stray = next((key for key in sorted(state) if not key.startswith(prefix)), None)
    if stray is not None:
        raise CsdLoadError(f"{name} is not a CSD checkpoint: unexpected key '{stray}'")
    return {key[len(prefix) :]: value for key, value in state.items()}


def infer_geometry(state: dict[str, torch.Tensor], name: str) -> CsdGeometry:
    """Width, depth, patch and image size from the shapes, as OpenAI CLIP's ``build_model`` does."""
    try:
        width, _, patch, _ = state["backbone.conv1.weight"].shape
        tokens = state["backbone.positional_embedding"].shape[0]
        intermediate = state["backbone.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        style_dim = state[STYLE_KEY].shape[-1]
    except KeyError as missing:
        raise CsdLoadError(f"{name} is not a CSD checkpoint: missing key {missing}") from None
    except ValueError:
        raise CsdLoadError(f"{name} is not a CSD checkpoint: backbone.conv1.weight is not 4-D") from None
    grid = round((tokens - 1) ** 0.5)
    if grid * grid + 1 != tokens:
        raise CsdLoadError(f"{name}: backbone.positional_embedding has {tokens} rows, not a square + 1")
    heads = width // 64  # OpenAI CLIP's rule (CLIP.__init__: vision_heads = vision_width // 64)
    if heads == 0 or width % 64:
        raise CsdLoadError(f"{name}: width {width} is not a multiple of CLIP's 64-wide heads")
    layers = 1 + max(int(match.group(1)) for key in state if (match := _BLOCK.match(key)))
    return CsdGeometry(width, layers, heads, patch, grid * patch, intermediate, style_dim)


def expected_keys(layers: int) -> set[str]:
    """Every key ``CSD_CLIP.state_dict()`` has for a ViT of this depth, no more."""
    keys = {*_TOP, STYLE_KEY, CONTENT_KEY}
    for index in range(layers):
        block = f"backbone.transformer.resblocks.{index}."
        keys.update(block + f"attn.in_proj_{kind}" for kind in ("weight", "bias"))
        keys.update(block + f"{part}.{kind}" for part in _LAYER for kind in ("weight", "bias"))
    return keys


def check_keys(state: dict[str, torch.Tensor], layers: int, name: str) -> None:
    """``load_state_dict(strict=True)`` on the original module: a missing or extra key is an error."""
    expected = expected_keys(layers)
    missing = sorted(expected - state.keys())
    if missing:
        raise CsdLoadError(f"{name} is not a CSD checkpoint: missing key '{missing[0]}'")
    unexpected = sorted(state.keys() - expected)
    if unexpected:
        raise CsdLoadError(f"{name} is not a CSD checkpoint: unexpected key '{unexpected[0]}'")


def to_transformers(state: dict[str, torch.Tensor], layers: int) -> dict[str, tuple[str, torch.Tensor]]:
    """transformers' name → (the CSD key it came from, the tensor), for the vision tower only.

    ``nn.MultiheadAttention`` keeps q, k and v stacked in that order in ``in_proj_weight``/``_bias``
    (rows ``[0, w)``, ``[w, 2w)``, ``[2w, 3w)``); transformers keeps three ``Linear`` layers.
    """
    out = {new: (old, state[old]) for old, new in _TOP.items()}
    for index in range(layers):
        old, new = f"backbone.transformer.resblocks.{index}.", f"encoder.layers.{index}."
        for kind in ("weight", "bias"):
            stacked = state[f"{old}attn.in_proj_{kind}"]
            if stacked.shape[0] % 3:
                raise CsdLoadError(f"{old}attn.in_proj_{kind} has {stacked.shape[0]} rows, not 3 × width")
            for part, chunk in zip(("q", "k", "v"), stacked.chunk(3, dim=0), strict=True):
                out[f"{new}self_attn.{part}_proj.{kind}"] = (f"{old}attn.in_proj_{kind}", chunk)
            for part, renamed in _LAYER.items():
                out[f"{new}{renamed}.{kind}"] = (f"{old}{part}.{kind}", state[f"{old}{part}.{kind}"])
    return out
