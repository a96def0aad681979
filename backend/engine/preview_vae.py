"""The tiny autoencoder (TAESD-XL) that turns each step's x0 estimate into a canvas-sized preview.

``madebyollin/taesdxl`` is diffusers' ``AutoencoderTiny``: ~10 MB, a decode costs a few percent of a
UNet step on a GPU, and it shows shapes and brushwork where the linear latent-to-RGB factors
(``previews.py``) only show blurry colour fields at 1/8 of the size.

Where it comes from (``--preview-vae``):

- ``auto`` (the default): the model's own choice (``ModelSpec.preview_vae_default``: the hub's
  ``madebyollin/taesdxl``, or the tiny model's tiny one), and when that cannot be loaded (offline and
  not cached, a broken file) one logged line and the linear previews;
- ``none``: the linear previews;
- a diffusers folder, a repo id, or one weight file: the full ``AutoencoderTiny`` state dict, or only
  the decoder in TAESD's original layout (``taesdxl_decoder.safetensors`` from ComfyUI's
  ``models/vae_approx``, or A1111's ``.pth``). An explicit source that fails is an error at start.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from protocol.enums import PreviewMethod

from .loading import (
    TAESDXL_REPO,
    ModelLoadError,
    ModelSpec,
    check_model_folder,
    check_safetensors,
    is_local,
    load_errors,
)

log = logging.getLogger(__name__)

__all__ = ["TAESDXL_REPO", "LoadedPreviewVae", "PreviewMethod", "load_preview_vae"]
PREVIEW_VAE_AUTO = "auto"
PREVIEW_VAE_NONE = "none"
_WHAT = "a tiny autoencoder (AutoencoderTiny / TAESD-XL): folder, repo id, .safetensors or .pth file"


@dataclass(frozen=True)
class LoadedPreviewVae:
    """What ``load_preview_vae`` found: the model (None: linear previews) and a line for the log."""

    vae: torch.nn.Module | None
    source: str
    note: str = ""
    """Why the linear previews are used although ``auto`` asked for a tiny autoencoder."""

    @property
    def method(self) -> PreviewMethod:
        return PreviewMethod.LINEAR if self.vae is None else PreviewMethod.TINY_VAE


def load_preview_vae(spec: ModelSpec, dtype: torch.dtype) -> LoadedPreviewVae:
    """The preview autoencoder ``spec.preview_vae`` asks for (in CPU memory; the engine places it)."""
    choice = spec.preview_vae.strip() or PREVIEW_VAE_AUTO
    if choice.lower() == PREVIEW_VAE_NONE:
        return LoadedPreviewVae(None, PREVIEW_VAE_NONE)
    if choice.lower() != PREVIEW_VAE_AUTO:
        return LoadedPreviewVae(load_tiny_autoencoder(choice, spec, dtype), choice)
    source = spec.preview_vae_default
    if not source:
        return LoadedPreviewVae(None, PREVIEW_VAE_NONE)
    try:
        return LoadedPreviewVae(load_tiny_autoencoder(source, spec, dtype), source)
    except ModelLoadError as error:
        note = f"linear previews: the tiny autoencoder could not be loaded ({one_line(str(error))})"
        log.warning("%s", note)
        return LoadedPreviewVae(None, source, note)


def load_tiny_autoencoder(source: str, spec: ModelSpec, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import AutoencoderTiny

    with load_errors(source, _WHAT):
        if not is_local(source):
            vae = AutoencoderTiny.from_pretrained(
                source, dtype=dtype, cache_dir=spec.cache_dir, local_files_only=spec.local_files_only
            )
        else:
            path = Path(source).expanduser()
            if not path.exists():
                raise ModelLoadError(path, _WHAT, "not found")
            if path.is_dir():
                vae = AutoencoderTiny.from_pretrained(str(check_model_folder(source, "tiny autoencoder")))
            else:
                vae = from_weight_file(path)
    return vae.to(dtype=dtype).eval().requires_grad_(False)


def from_weight_file(path: Path) -> torch.nn.Module:
    """An ``AutoencoderTiny`` from one file, its decoder's shape read from the weights themselves."""
    from diffusers import AutoencoderTiny

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        check_safetensors(path, _WHAT)
        state = load_file(str(path))
    elif path.suffix in (".pth", ".pt"):
        if not path.is_file():
            raise ModelLoadError(path, _WHAT, "file not found")
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    else:
        raise ModelLoadError(path, _WHAT, "not a folder, .safetensors or .pth file")
    decoder = decoder_weights(state)
    if not decoder:
        raise ModelLoadError(path, _WHAT, "no decoder weights in it")
    vae = AutoencoderTiny(**decoder_config(decoder))
    missing, unexpected = vae.decoder.load_state_dict(decoder, strict=False)
    if missing or unexpected:
        raise ModelLoadError(
            path, _WHAT, f"decoder weights do not fit: {len(missing)} missing, {len(unexpected)} unexpected"
        )
    return vae


def decoder_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The decoder's tensors keyed as diffusers' ``DecoderTiny`` names them.

    diffusers' own files say ``decoder.layers.N``; ComfyUI's combined files ``taesd_decoder.N``; TAESD's
    original decoder files plain ``N``. The original ``nn.Sequential`` starts with a parameter-free clamp
    (diffusers clamps in ``forward``), so its layer N is diffusers' layer N-1.
    """
    if any(key.startswith("decoder.layers.") for key in state):
        return {key[len("decoder.") :]: value for key, value in state.items() if key.startswith("decoder.")}
    prefix = "taesd_decoder." if any(key.startswith("taesd_decoder.") for key in state) else ""
    decoder: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = re.fullmatch(rf"{re.escape(prefix)}(\d+)\.(.+)", key)
        if match:
            decoder[f"layers.{int(match[1]) - 1}.{match[2]}"] = value
    return decoder


def decoder_config(decoder: dict[str, torch.Tensor]) -> dict[str, object]:
    """``AutoencoderTiny`` arguments for these decoder weights: TAESD's layer sequence is conv, then per
    stage some blocks (``.conv.0``) closed by a plain conv, so counting them gives the shape."""
    layers: dict[int, set[str]] = {}
    for key in decoder:
        index, rest = key.split(".", 2)[1:]
        layers.setdefault(int(index), set()).add(rest)
    first = decoder["layers.0.weight"]
    blocks: list[int] = []
    channels: list[int] = []
    count = 0
    for index in sorted(layers)[1:]:
        if "conv.0.weight" in layers[index]:
            count += 1
            width = int(decoder[f"layers.{index}.conv.0.weight"].shape[0])
        elif "weight" in layers[index]:
            blocks.append(count)
            channels.append(width if count else int(decoder[f"layers.{index}.weight"].shape[1]))
            count = 0
    out_channels = int(decoder[f"layers.{max(layers)}.weight"].shape[0])
    return {
        "latent_channels": int(first.shape[1]),
        "out_channels": out_channels,
        "decoder_block_out_channels": tuple(channels),
        "num_decoder_blocks": tuple(blocks),
        # The (unused) encoder mirrors the decoder, so that the config stays one diffusers accepts.
        "encoder_block_out_channels": tuple(channels),
        "num_encoder_blocks": tuple(reversed(blocks)),
    }


def one_line(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else text
    return first if len(first) <= 300 else first[:297] + "..."
