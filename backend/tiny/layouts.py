"""Save the tiny model in every on-disk layout a real user has.

- ``diffusers/``: a ``save_pretrained`` pipeline folder;
- ``hub/``: a Hugging Face cache (``models--owner--name/snapshots/<rev>``) for
  ``from_pretrained(repo_id, cache_dir=..., local_files_only=True)``;
- ``tiny-sdxl.safetensors``: one original-format (SGM) checkpoint file;
- ``ip-adapter/``: the ``h94/IP-Adapter`` layout (``sdxl_models/ip-adapter_sdxl``
  in ``.safetensors`` and ``.bin``, ``sdxl_models/image_encoder/``), with the ViT-H adapters beside
  it: ``sdxl_models/ip-adapter_sdxl_vit-h`` (plain) and ``ip-adapter-plus_sdxl_vit-h`` (both formats:
  ``backend/tiny/plus_adapter.py``), and their encoder ``models/image_encoder/``;
- ``clip-vit-h/``: the whole CLIP model that encoder comes from, with its text tower, as
  ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` has it (``backend/tiny/vit_h.py``; also as a hub repo);
- ``controlnet-canny/``: a ControlNet folder, as ``diffusers/controlnet-canny-sdxl-1.0`` has, and
  ``controlnet-tile/``: a second one standing for ``xinsir/controlnet-tile-sdxl-1.0`` (both also as
  hub repos);
- ``loras/``: random LoRAs in the diffusers/PEFT and the Kohya key layouts (``backend/tiny/loras.py``),
  also as a hub repo;
- ``taesd/``: a tiny autoencoder for previews, as ``madebyollin/taesdxl`` has it (also as a hub repo), and
  ``vae_approx/taesdxl_decoder.safetensors``: its decoder in TAESD's original layout
  (``backend/tiny/preview_vae.py``).

Everything is generated from a fixed seed, so one generator version always
writes the same weights; a marker file lets callers reuse a finished folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

import torch

from backend.engine.loading import ModelSpec
from backend.tiny.components import TINY, TINY_LABEL, build_models, random_ip_adapter_state
from backend.tiny.loras import write_tiny_loras
from backend.tiny.plus_adapter import random_plus_adapter_state
from backend.tiny.preview_vae import write_tiny_autoencoder
from backend.tiny.single_file import save_single_file
from backend.tiny.vit_h import VIT_H_PROJECTION, write_clip_vit_h

GENERATOR_VERSION = "8"
TINY_REPO_ID = "instantstyle/tiny-sdxl"
TINY_IP_REPO_ID = "instantstyle/tiny-ip-adapter"
TINY_CONTROLNET_REPO_ID = "instantstyle/tiny-controlnet-canny"
TINY_TILE_CONTROLNET_REPO_ID = "instantstyle/tiny-controlnet-tile"
TINY_LORA_REPO_ID = "instantstyle/tiny-loras"
TINY_TAESD_REPO_ID = "instantstyle/tiny-taesdxl"
TINY_CLIP_VIT_H_REPO_ID = "instantstyle/tiny-clip-vit-h"
PLUS_ADAPTER_NAME = "ip-adapter-plus_sdxl_vit-h"
VIT_H_SEED, PLUS_SEED = 10, 11
"""The ViT-H pieces' own generators: the bigG model's weights stay what they were."""


class TinyAdapter(str, Enum):
    """The tiny IP-Adapters, named after the h94 files they stand for."""

    SDXL = "ip-adapter_sdxl"
    """Plain, on the ViT-bigG-like encoder: content subtraction through SDXL's text_encoder_2."""
    SDXL_VIT_H = "ip-adapter_sdxl_vit-h"
    """Plain, on the ViT-H-like encoder: content subtraction through that CLIP's own text tower."""
    PLUS_SDXL_VIT_H = PLUS_ADAPTER_NAME
    """Plus (16 tokens from the ViT-H-like encoder's patch features): no content subtraction."""

    @property
    def vit_h(self) -> bool:
        return self is not TinyAdapter.SDXL


SNAPSHOT = "0" * 39 + GENERATOR_VERSION  # a commit-hash-shaped revision name
_MARKER = "COMPLETE.json"


@dataclass(frozen=True)
class TinyModelPaths:
    root: Path

    @property
    def diffusers_folder(self) -> Path:
        return self.root / "diffusers"

    @property
    def hub_cache(self) -> Path:
        return self.root / "hub"

    @property
    def single_file(self) -> Path:
        return self.root / "tiny-sdxl.safetensors"

    @property
    def ip_adapter_folder(self) -> Path:
        return self.root / "ip-adapter" / "sdxl_models"

    @property
    def ip_adapter_safetensors(self) -> Path:
        return self.ip_adapter_folder / "ip-adapter_sdxl.safetensors"

    @property
    def ip_adapter_bin(self) -> Path:
        return self.ip_adapter_folder / "ip-adapter_sdxl.bin"

    def plus_adapter(self, suffix: str = ".safetensors") -> Path:
        """The tiny "plus" adapter (16 tokens from the image encoder's patch features)."""
        return self.ip_adapter_folder / f"{PLUS_ADAPTER_NAME}{suffix}"

    @property
    def image_encoder(self) -> Path:
        return self.ip_adapter_folder / "image_encoder"

    @property
    def vit_h_image_encoder(self) -> Path:
        """h94's ``models/image_encoder``: the ViT-H adapters' encoder."""
        return self.root / "ip-adapter" / "models" / "image_encoder"

    @property
    def clip_vit_h(self) -> Path:
        """The whole ViT-H-like CLIP model with its tokenizer (laion's layout)."""
        return self.root / "clip-vit-h"

    @property
    def controlnet(self) -> Path:
        return self.root / "controlnet-canny"

    @property
    def tile_controlnet(self) -> Path:
        return self.root / "controlnet-tile"

    @property
    def loras(self) -> Path:
        return self.root / "loras"

    @property
    def taesd(self) -> Path:
        return self.root / "taesd"

    @property
    def taesd_decoder_file(self) -> Path:
        return self.root / "vae_approx" / "taesdxl_decoder.safetensors"

    def lora(self, name: str) -> Path:
        """``style-peft``, ``style-kohya`` (the same LoRA in two layouts) or ``other-peft``."""
        return self.loras / f"{name}.safetensors"

    def spec(self, layout: str = "diffusers", adapter: TinyAdapter = TinyAdapter.SDXL) -> ModelSpec:
        """A ``ModelSpec`` loading the tiny model from one of its layouts, with one of its adapters."""
        label = (
            TINY_LABEL if adapter is TinyAdapter.SDXL else TINY_LABEL.replace(" (", f" + {adapter.value} (")
        )
        common = {
            "label": label,
            "is_test_model": True,
            "preview_vae_default": str(self.taesd),
            "content_text_encoder_default": str(self.clip_vit_h),
            "csd_default": None,  # CLIP scores style unless a test names a tiny CSD (--csd FILE)
        }
        adapter_file = f"{adapter.value}.safetensors"
        encoder = "models/image_encoder" if adapter.vit_h else "sdxl_models/image_encoder"
        local = {
            "ip_adapter": str(self.ip_adapter_folder / adapter_file),
            "image_encoder": str(self.root / "ip-adapter" / encoder),
            "controlnet": str(self.controlnet),
            "tile_controlnet": str(self.tile_controlnet),
        }
        if layout == "diffusers":
            return ModelSpec(base=str(self.diffusers_folder), **local, **common)
        if layout == "single-file":
            return ModelSpec(
                base=str(self.single_file), base_config=str(self.diffusers_folder), **local, **common
            )
        if layout == "hub":
            return ModelSpec(
                base=TINY_REPO_ID,
                ip_adapter=f"{TINY_IP_REPO_ID}/sdxl_models/{adapter_file}",
                image_encoder=f"{TINY_IP_REPO_ID}/{encoder}",
                controlnet=TINY_CONTROLNET_REPO_ID,
                tile_controlnet=TINY_TILE_CONTROLNET_REPO_ID,
                cache_dir=str(self.hub_cache),
                local_files_only=True,
                **{
                    **common,
                    "preview_vae_default": TINY_TAESD_REPO_ID,
                    "content_text_encoder_default": TINY_CLIP_VIT_H_REPO_ID,
                },
            )
        raise ValueError(f"unknown layout {layout!r}: expected diffusers, single-file or hub")


def default_root() -> Path:
    """Where ``--model tiny`` keeps its generated files (``INSTANTSTYLE_HOME`` overrides)."""
    home = os.environ.get("INSTANTSTYLE_HOME") or Path.home() / ".cache" / "instantstyle"
    return Path(home) / f"tiny-sdxl-v{GENERATOR_VERSION}"


def ensure_tiny_model(root: Path | None = None) -> TinyModelPaths:
    """Generate the tiny model under ``root`` unless a finished copy is already there."""
    paths = TinyModelPaths(Path(root) if root else default_root())
    if (paths.root / _MARKER).is_file():
        return paths
    paths.root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=paths.root.parent))
    try:
        _write_all(TinyModelPaths(staging))
        shutil.rmtree(paths.root, ignore_errors=True)
        staging.rename(paths.root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return paths


def _write_all(paths: TinyModelPaths) -> None:
    from safetensors.torch import save_file

    models = build_models(paths.root / ".scratch")
    models.pipeline.save_pretrained(paths.diffusers_folder)  # type: ignore[attr-defined]
    save_single_file(models.pipeline, paths.single_file)

    paths.ip_adapter_folder.mkdir(parents=True, exist_ok=True)
    save_file(flatten(models.ip_adapter_state), str(paths.ip_adapter_safetensors))
    torch.save(models.ip_adapter_state, paths.ip_adapter_bin)
    unet = models.pipeline.unet  # type: ignore[attr-defined]
    torch.manual_seed(VIT_H_SEED)
    write_clip_vit_h(paths.clip_vit_h, paths.vit_h_image_encoder)
    vit_h = random_ip_adapter_state(
        unet, torch.Generator().manual_seed(VIT_H_SEED), replace(TINY, projection_dim=VIT_H_PROJECTION)
    )
    save_file(flatten(vit_h), str(paths.ip_adapter_folder / f"{TinyAdapter.SDXL_VIT_H.value}.safetensors"))
    plus = random_plus_adapter_state(unet, torch.Generator().manual_seed(PLUS_SEED))
    save_file(flatten(plus), str(paths.plus_adapter()))
    torch.save(plus, paths.plus_adapter(".bin"))
    models.image_encoder.save_pretrained(paths.image_encoder)  # type: ignore[attr-defined]
    models.controlnet.save_pretrained(paths.controlnet)  # type: ignore[attr-defined]
    models.tile_controlnet.save_pretrained(paths.tile_controlnet)  # type: ignore[attr-defined]
    write_tiny_loras(paths.loras, models.pipeline.unet, models.pipeline.text_encoder)  # type: ignore[attr-defined]
    write_tiny_autoencoder(paths.taesd, paths.taesd_decoder_file)

    write_hub_snapshot(paths.hub_cache, TINY_REPO_ID, paths.diffusers_folder)
    write_hub_snapshot(paths.hub_cache, TINY_IP_REPO_ID, paths.ip_adapter_folder.parent)
    write_hub_snapshot(paths.hub_cache, TINY_CONTROLNET_REPO_ID, paths.controlnet)
    write_hub_snapshot(paths.hub_cache, TINY_TILE_CONTROLNET_REPO_ID, paths.tile_controlnet)
    write_hub_snapshot(paths.hub_cache, TINY_LORA_REPO_ID, paths.loras)
    write_hub_snapshot(paths.hub_cache, TINY_TAESD_REPO_ID, paths.taesd)
    write_hub_snapshot(paths.hub_cache, TINY_CLIP_VIT_H_REPO_ID, paths.clip_vit_h)
    shutil.rmtree(paths.root / ".scratch", ignore_errors=True)
    (paths.root / _MARKER).write_text(
        json.dumps({"label": TINY_LABEL, "generator_version": GENERATOR_VERSION}), encoding="utf-8"
    )


def flatten(state: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """An adapter's ``{"image_proj": ..., "ip_adapter": ...}`` as the flat keys of its .safetensors."""
    return {f"{part}.{key}": value for part, tensors in state.items() for key, value in tensors.items()}


def write_hub_snapshot(cache: Path, repo_id: str, source: Path) -> None:
    """The layout ``huggingface_hub`` writes: ``refs/main`` names a snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(source, repo / "snapshots" / SNAPSHOT)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(SNAPSHOT, encoding="utf-8")
