"""Save the tiny SD1.5 model in every on-disk layout a real SD1.5 user has (issue 23).

- ``diffusers/``: a ``save_pretrained`` ``StableDiffusionPipeline`` folder (no safety checker);
- ``hub/``: a Hugging Face cache with the same folders as repos (``instantstyle/tiny-sd15``...);
- ``tiny-sd15.safetensors``: one original-format (LDM) checkpoint, as SD1.5 fine-tunes ship;
- ``ip-adapter/models/``: ``h94/IP-Adapter``'s SD1.5 layout: ``ip-adapter_sd15`` (``.safetensors``
  and ``.bin``), ``ip-adapter-plus_sd15`` and their ViT-H-like ``image_encoder/``;
- ``clip-vit-h/``: that encoder's whole CLIP model, for content subtraction (``vit_h.py``; the same
  weights as the tiny SDXL's, as both families share laion's ViT-H);
- ``controlnet-canny/``: a ControlNet for this UNet (``lllyasviel/control_v11p_sd15_canny``'s role),
  and ``controlnet-tile/``: another (``lllyasviel/control_v11f1e_sd15_tile``'s role);
- ``loras/``: random LoRAs in the PEFT and the SD1.5 Kohya key layouts (``loras.py``);
- ``taesd/``: a tiny autoencoder as ``madebyollin/taesd`` has it, and
  ``vae_approx/taesd_decoder.safetensors``: its decoder in TAESD's original layout.

Everything is drawn from fixed seeds, so one generator version writes the same bytes; a marker file
lets callers reuse a finished folder. The root is the tiny SDXL's sibling, with its own version.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from backend.engine.loading import ModelSpec
from backend.tiny.layouts import TINY_CLIP_VIT_H_REPO_ID, VIT_H_SEED, flatten, write_hub_snapshot
from backend.tiny.loras import write_tiny_loras
from backend.tiny.preview_vae import build_tiny_autoencoder, original_decoder_state
from backend.tiny.sd15 import TINY_SD15_LABEL, build_sd15_models
from backend.tiny.single_file import save_single_file
from backend.tiny.vit_h import write_clip_vit_h

SD15_GENERATOR_VERSION = "2"
TINY_SD15_REPO_ID = "instantstyle/tiny-sd15"
TINY_SD15_IP_REPO_ID = "instantstyle/tiny-ip-adapter-sd15"
TINY_SD15_CONTROLNET_REPO_ID = "instantstyle/tiny-controlnet-canny-sd15"
TINY_SD15_TILE_CONTROLNET_REPO_ID = "instantstyle/tiny-controlnet-tile-sd15"
TINY_SD15_LORA_REPO_ID = "instantstyle/tiny-loras-sd15"
TINY_TAESD_REPO_ID = "instantstyle/tiny-taesd"
PLAIN_SD15, PLUS_SD15 = "ip-adapter_sd15", "ip-adapter-plus_sd15"
TAESD_SEED = 4
"""Not the tiny TAESD-XL's seed (3): the two preview decoders differ, as the real ones do."""
_MARKER = "COMPLETE.json"


@dataclass(frozen=True)
class TinySd15Paths:
    root: Path

    @property
    def diffusers_folder(self) -> Path:
        return self.root / "diffusers"

    @property
    def hub_cache(self) -> Path:
        return self.root / "hub"

    @property
    def single_file(self) -> Path:
        return self.root / "tiny-sd15.safetensors"

    @property
    def ip_adapter_folder(self) -> Path:
        """h94's ``models/``: the SD1.5 adapters and their image encoder."""
        return self.root / "ip-adapter" / "models"

    def ip_adapter(self, plus: bool = False, suffix: str = ".safetensors") -> Path:
        return self.ip_adapter_folder / f"{PLUS_SD15 if plus else PLAIN_SD15}{suffix}"

    @property
    def image_encoder(self) -> Path:
        return self.ip_adapter_folder / "image_encoder"

    @property
    def clip_vit_h(self) -> Path:
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

    def lora(self, name: str) -> Path:
        """``style-peft``, ``style-kohya`` (the same LoRA in two layouts) or ``other-peft``."""
        return self.loras / f"{name}.safetensors"

    @property
    def taesd(self) -> Path:
        return self.root / "taesd"

    @property
    def taesd_decoder_file(self) -> Path:
        return self.root / "vae_approx" / "taesd_decoder.safetensors"

    def spec(self, layout: str = "diffusers", plus: bool = False) -> ModelSpec:
        """A ``ModelSpec`` loading the tiny SD1.5 from one of its layouts with one of its adapters.
        It names no family: the engine must tell SD1.5 from the checkpoint itself."""
        adapter = PLUS_SD15 if plus else PLAIN_SD15
        common = {
            "label": f"{TINY_SD15_LABEL} + {adapter}",
            "is_test_model": True,
            "preview_vae_default": str(self.taesd),
            "content_text_encoder_default": str(self.clip_vit_h),
            "csd_default": None,  # CLIP scores style unless a test names a tiny CSD (--csd FILE)
        }
        local = {
            "ip_adapter": str(self.ip_adapter(plus)),
            "image_encoder": str(self.image_encoder),
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
                base=TINY_SD15_REPO_ID,
                ip_adapter=f"{TINY_SD15_IP_REPO_ID}/models/{adapter}.safetensors",
                image_encoder=f"{TINY_SD15_IP_REPO_ID}/models/image_encoder",
                controlnet=TINY_SD15_CONTROLNET_REPO_ID,
                tile_controlnet=TINY_SD15_TILE_CONTROLNET_REPO_ID,
                cache_dir=str(self.hub_cache),
                local_files_only=True,
                **{
                    **common,
                    "preview_vae_default": TINY_TAESD_REPO_ID,
                    "content_text_encoder_default": TINY_CLIP_VIT_H_REPO_ID,
                },
            )
        raise ValueError(f"unknown layout {layout!r}: expected diffusers, single-file or hub")


def default_sd15_root() -> Path:
    """Where the tiny SD1.5 keeps its generated files (``INSTANTSTYLE_HOME`` overrides)."""
    home = os.environ.get("INSTANTSTYLE_HOME") or Path.home() / ".cache" / "instantstyle"
    return Path(home) / f"tiny-sd15-v{SD15_GENERATOR_VERSION}"


def ensure_tiny_sd15_model(root: Path | None = None) -> TinySd15Paths:
    """Generate the tiny SD1.5 under ``root`` unless a finished copy is already there (built in a
    staging folder and renamed, so a crash never leaves a half-written model behind the marker)."""
    paths = TinySd15Paths(Path(root) if root else default_sd15_root())
    if (paths.root / _MARKER).is_file():
        return paths
    paths.root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-sd15-", dir=paths.root.parent))
    try:
        _write_all(TinySd15Paths(staging))
        shutil.rmtree(paths.root, ignore_errors=True)
        staging.rename(paths.root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return paths


def _write_all(paths: TinySd15Paths) -> None:
    from safetensors.torch import save_file

    models = build_sd15_models(paths.root / ".scratch")
    pipe = models.pipeline
    pipe.save_pretrained(paths.diffusers_folder)  # type: ignore[attr-defined]
    save_single_file(pipe, paths.single_file, layout="ldm")

    paths.ip_adapter_folder.mkdir(parents=True, exist_ok=True)
    save_file(flatten(models.ip_adapter_state), str(paths.ip_adapter()))
    torch.save(models.ip_adapter_state, paths.ip_adapter(suffix=".bin"))
    save_file(flatten(models.plus_adapter_state), str(paths.ip_adapter(plus=True)))
    torch.manual_seed(VIT_H_SEED)
    write_clip_vit_h(paths.clip_vit_h, paths.image_encoder)
    models.controlnet.save_pretrained(paths.controlnet)  # type: ignore[attr-defined]
    models.tile_controlnet.save_pretrained(paths.tile_controlnet)  # type: ignore[attr-defined]
    write_tiny_loras(paths.loras, pipe.unet, pipe.text_encoder, names="sd15")  # type: ignore[attr-defined]
    taesd = build_tiny_autoencoder(seed=TAESD_SEED)
    taesd.save_pretrained(paths.taesd)  # type: ignore[attr-defined]
    paths.taesd_decoder_file.parent.mkdir(parents=True, exist_ok=True)
    save_file(original_decoder_state(taesd), str(paths.taesd_decoder_file))

    write_hub_snapshot(paths.hub_cache, TINY_SD15_REPO_ID, paths.diffusers_folder)
    write_hub_snapshot(paths.hub_cache, TINY_SD15_IP_REPO_ID, paths.ip_adapter_folder.parent)
    write_hub_snapshot(paths.hub_cache, TINY_SD15_CONTROLNET_REPO_ID, paths.controlnet)
    write_hub_snapshot(paths.hub_cache, TINY_SD15_TILE_CONTROLNET_REPO_ID, paths.tile_controlnet)
    write_hub_snapshot(paths.hub_cache, TINY_SD15_LORA_REPO_ID, paths.loras)
    write_hub_snapshot(paths.hub_cache, TINY_TAESD_REPO_ID, paths.taesd)
    write_hub_snapshot(paths.hub_cache, TINY_CLIP_VIT_H_REPO_ID, paths.clip_vit_h)
    shutil.rmtree(paths.root / ".scratch", ignore_errors=True)
    (paths.root / _MARKER).write_text(
        json.dumps({"label": TINY_SD15_LABEL, "generator_version": SD15_GENERATOR_VERSION}), encoding="utf-8"
    )
