"""CSD, a style metric: Contrastive Style Descriptors (Somepalli et al. 2024, arXiv 2404.01292).

CSD fine-tunes OpenAI CLIP ViT-L/14's image tower so that its class token, projected by
``last_layer_style`` and L2-normalised, is near for images in one style and far across styles
(``CSD_CLIP.forward`` in github learn2phoenix/CSD, ``CSD/model.py``): the cosine of two descriptors
is the paper's style similarity. The weights are the authors' training checkpoint (``checkpoint.pth``
on their Google Drive; ``pytorch_model.bin`` in ``tomg-group-umd/CSD-ViT-L`` is a pickle of the same
kind): ``{"model_state_dict": {"module.backbone.…": …}, "args": Namespace, …}``. Copies of the same
state dict as safetensors (with or without a wrapper prefix) load too. The tower runs as transformers'
``CLIPVisionModel``; only the key names are translated (``csd_keys``).
"""

from __future__ import annotations

import argparse
import re
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .csd_keys import (
    STYLE_KEY,
    CsdGeometry,
    CsdLoadError,
    check_keys,
    infer_geometry,
    strip_wrapper,
    to_transformers,
)

__all__ = [
    "CSD_HUB_SOURCE",
    "CsdGeometry",
    "CsdLoadError",
    "CsdModel",
    "csd_from_state",
    "csd_pixels",
    "load_csd",
]

CSD_HUB_SOURCE = "tomg-group-umd/CSD-ViT-L/pytorch_model.bin"
"""The authors' copy on the hub (2.44 GB, twice the weights: presumably with the optimiser states)."""
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PICKLE_SUFFIXES = {".pth", ".pt", ".bin", ".ckpt"}


def _numpy_scalar():
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar
    return scalar


def _checkpoint_globals() -> list:
    """What the authors' pickle holds besides tensors: training ``args`` (a Namespace), numpy scalars.

    Plain data only: allowing these lets ``weights_only`` read the file without running its code.
    The hub's pickle scan of the real file names ``numpy.core.multiarray.scalar`` (numpy 1.x's path).
    """
    scalar = _numpy_scalar()
    dtype_classes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    return [
        argparse.Namespace,
        np.dtype,
        *dtype_classes,  # a dtype's state is set on its class (numpy.dtypes.Float64DType, …)
        scalar,
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
    ]


def _unpickle(path: Path) -> object:
    """``torch.load`` with ``weights_only``: a pickle that would construct anything else is refused."""
    try:
        with torch.serialization.safe_globals(_checkpoint_globals()), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as error:
        text = str(error)
        refused = re.search(r"GLOBAL (\S+)|but got (<[^>]*>)", text)
        lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(error).__name__]
        why = f"refused to unpickle {refused.group(1) or refused.group(2)}" if refused else lines[0]
        raise CsdLoadError(f"{path.name} cannot be read as a CSD checkpoint: {why}") from None


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in the file, whichever container holds it."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError) as error:
            raise CsdLoadError(f"{path.name} cannot be read as safetensors: {error}") from None
    if path.suffix not in PICKLE_SUFFIXES:
        raise CsdLoadError(f"{path.name}: a CSD checkpoint is a .pth, .pt, .bin or .safetensors file")
    loaded = _unpickle(path)
    if isinstance(loaded, dict):
        for key in ("model_state_dict", "state_dict"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CsdLoadError(f"{path.name} is not a CSD checkpoint: it holds no state dict of tensors")
    return {str(key): value for key, value in loaded.items()}


def _resolve(source: str) -> Path:
    """A local file, else ``owner/repo/path/in/repo`` on the hub (fetched into the hub cache)."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    parts = source.split("/")
    if path.is_absolute() or len(parts) < 3 or path.exists():
        raise CsdLoadError(f"{source}: no such CSD checkpoint file")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:])))
    except Exception as error:
        why = type(error).__name__
        raise CsdLoadError(f"{source}: no such file, and not fetched from the hub ({why})") from None


def csd_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """CSD's ``transforms_branch0`` (``CSD/loss_utils.py``), without torchvision: (3, size, size).

    ``Resize(size, BICUBIC)`` (shorter side to ``size``, the longer ``int(size * long / short)``,
    PIL's bicubic), ``CenterCrop(size)``, ``ToTensor()``, ``Normalize`` with CLIP's mean and std;
    the dataset opens every image ``.convert("RGB")``.
    """
    image = image.convert("RGB")
    width, height = image.size
    short, long = sorted((width, height))
    scaled = (size, int(size * long / short))
    new_width, new_height = scaled if width <= height else scaled[::-1]
    image = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
    top, left = round((new_height - size) / 2.0), round((new_width - size) / 2.0)  # torchvision's
    image = image.crop((left, top, left + size, top + size))
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    return pixels.sub(mean).div(std)


class CsdModel:
    """A loaded CSD: images in, style descriptors out (unit vectors: their dot product is the score)."""

    def __init__(self, vision: torch.nn.Module, style: torch.Tensor, geometry: CsdGeometry) -> None:
        self.vision = vision.eval().requires_grad_(False)
        self.style = style
        self.geometry = geometry

    @property
    def image_size(self) -> int:
        return self.geometry.image_size

    @property
    def device(self) -> torch.device:
        return self.style.device

    @property
    def dtype(self) -> torch.dtype:
        return self.style.dtype

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The batch CSD's preprocessing makes (float32, on the CPU)."""
        return torch.stack([csd_pixels(image, self.image_size) for image in images])

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image], batch_size: int = 16) -> torch.Tensor:
        """(n, style_dim) float32 descriptors: ``normalize(ln_post(cls) @ last_layer_style)``."""
        if not images:
            return torch.zeros(0, self.geometry.style_dim)
        out = []
        for start in range(0, len(images), batch_size):
            batch = self.pixels(images[start : start + batch_size]).to(self.device, self.dtype)
            feature = self.vision(pixel_values=batch).pooler_output  # post_layernorm(class token)
            style = (feature @ self.style).float()
            out.append(torch.nn.functional.normalize(style, dim=1, p=2).cpu())
        return torch.cat(out)


def load_csd(source: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> CsdModel:
    """The CSD in ``source`` (a local file or ``owner/repo/file`` on the hub), strictly: any key the
    original module would not load is a ``CsdLoadError`` naming it."""
    path = _resolve(source)
    return csd_from_state(_read_state(path), path.name, dtype, device)


def csd_from_state(
    raw: dict[str, torch.Tensor],
    name: str,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> CsdModel:
    """A CSD from its state dict (any wrapper prefix); ``name`` says which file in errors."""
    from accelerate import init_empty_weights
    from transformers import CLIPVisionConfig, CLIPVisionModel

    state = strip_wrapper(raw, name)
    geometry = infer_geometry(state, name)
    check_keys(state, geometry.layers, name)
    style = state[STYLE_KEY]
    if style.ndim != 2 or style.shape[0] != geometry.width:
        raise CsdLoadError(f"{name}: '{STYLE_KEY}' has shape {tuple(style.shape)}, not ({geometry.width}, n)")
    config = CLIPVisionConfig(
        hidden_size=geometry.width,
        intermediate_size=geometry.intermediate_size,
        num_hidden_layers=geometry.layers,
        num_attention_heads=geometry.heads,
        image_size=geometry.image_size,
        patch_size=geometry.patch_size,
        hidden_act="quick_gelu",  # OpenAI CLIP's QuickGELU: x * sigmoid(1.702 x)
        layer_norm_eps=1e-5,  # torch's LayerNorm default, which OpenAI CLIP keeps
    )
    with init_empty_weights(include_buffers=False):  # no random init; CLIP's position ids stay real
        vision = CLIPVisionModel(config)
    wanted = vision.state_dict()
    prefix = next(key for key in wanted if key.endswith("embeddings.class_embedding"))
    prefix = prefix[: -len("embeddings.class_embedding")]  # "vision_model." in some versions
    converted = {}
    for key, (origin, tensor) in to_transformers(state, geometry.layers).items():
        shape, expected = tuple(tensor.shape), tuple(wanted[prefix + key].shape)
        if shape != expected:
            raise CsdLoadError(f"{name}: '{origin}' has shape {shape}, expected {expected}")
        converted[prefix + key] = tensor.to(dtype=dtype, copy=True)  # not a view of a mapped file
    try:
        vision.load_state_dict(converted, strict=True, assign=True)
    except RuntimeError as error:
        raise CsdLoadError(f"{name}: {str(error).splitlines()[0]}") from None
    return CsdModel(vision.to(device), style.to(device=device, dtype=dtype, copy=True), geometry)
