"""Which model family a checkpoint is, read from the checkpoint itself, and the spec completed for it.

A single file says it through its key families (read from the ``.safetensors`` header, no weight
loaded): SGM's ``conditioner.embedders.*`` is SDXL, LDM's ``cond_stage_model.transformer.*`` is SD1.5,
``cond_stage_model.model.*`` (OpenCLIP) is SD2. diffusers' own detection (``infer_diffusers_model_type``)
looks for one layer of SDXL's OpenCLIP (``resblocks.9``) and calls everything else SD1: a pruned or tiny
SDXL file would load as SD1.5, so it is not used. A folder or hub repo says it in ``model_index.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from protocol.enums import ModelFamily

from .family import FAMILIES, SD15, SDXL, FamilyTraits, traits
from .loading import (
    SDXL_LABEL,
    SINGLE_FILE_SUFFIXES,
    TAESDXL_REPO,
    ModelLoadError,
    ModelSpec,
    check_safetensors,
    is_local,
    load_errors,
)

PIPELINE_FAMILIES = {name: known.family for known in FAMILIES.values() for name in known.pipelines.values()}
"""``model_index.json``'s ``_class_name`` of each family's pipelines (a folder saved from img2img too)."""
INPAINTING_KEY = "model.diffusion_model.input_blocks.0.0.weight"
"""A UNet's first convolution: 9 input channels in an inpainting checkpoint (latents, mask, masked image)."""

log = logging.getLogger(__name__)

KNOWN_CHECKPOINTS = (
    "an SDXL or SD1.5 checkpoint (Illustrious, NoobAI, Pony and other SDXL fine-tunes included)"
)


def detect_family(spec: ModelSpec) -> ModelFamily:
    """The spec's own family if it names one, else what its base checkpoint is."""
    if spec.family is not None:
        return spec.family
    source = Path(spec.base).expanduser()
    with load_errors(spec.base, KNOWN_CHECKPOINTS):
        if source.suffix in SINGLE_FILE_SUFFIXES:
            return family_of_single_file(source)
        if is_local(spec.base):
            index = source / "model_index.json"
            if not index.is_file():
                raise ModelLoadError(
                    source, "a diffusers folder with model_index.json", "model_index.json missing"
                )
            unet = source / "unet" / "config.json"
            unet_config = json.loads(unet.read_text("utf-8")) if unet.is_file() else {}
            return family_of_index(source, json.loads(index.read_text("utf-8")), unet_config)
        for known in FAMILIES.values():  # the families' own base repos: known without asking the hub
            if spec.base == known.base_repo:
                return known.family
        index = _hub_json(spec, "model_index.json")
        family = family_of_index(spec.base, index)
        if family is ModelFamily.SD15:  # SD2 repos name the same pipeline class
            return family_of_index(spec.base, index, _hub_json(spec, "unet/config.json"))
        return family


def family_of_index(source: str | Path, index: dict, unet_config: dict | None = None) -> ModelFamily:
    """The family a pipeline's ``model_index.json`` names (and its UNet's config, when given, confirms:
    SD2 has SD1.5's pipeline class with 1024-d cross-attention)."""
    name = str(index.get("_class_name", ""))
    if name not in PIPELINE_FAMILIES:
        raise ModelLoadError(source, KNOWN_CHECKPOINTS, f"it is a {name or 'pipeline of no named class'}")
    family = PIPELINE_FAMILIES[name]
    cross = (unet_config or {}).get("cross_attention_dim")
    if family is ModelFamily.SD15 and cross == 1024:  # SD1.5 attends to 768-d CLIP-L text
        raise ModelLoadError(
            source, KNOWN_CHECKPOINTS, f"its UNet attends to {cross}-d text (Stable Diffusion 2)"
        )
    return family


def family_of_single_file(path: Path) -> ModelFamily:
    """SDXL or SD1.5 from the checkpoint's keys; SD2 and unknown layouts refused in one line."""
    if not path.is_file():
        raise ModelLoadError(path, "a single-file checkpoint", "file not found")
    if path.suffix == ".safetensors":
        check_safetensors(path, "a single-file checkpoint")
    keys = _checkpoint_keys(path)
    if keys.get(INPAINTING_KEY, 4) != 4:
        raise ModelLoadError(
            path, KNOWN_CHECKPOINTS, "it is an inpainting checkpoint (9-channel UNet): use its base model"
        )
    keys = list(keys)
    if any(key.startswith(("conditioner.embedders.", "model.diffusion_model.label_emb.")) for key in keys):
        return ModelFamily.SDXL
    if any(key.startswith("cond_stage_model.model.") for key in keys):
        raise ModelLoadError(
            path, KNOWN_CHECKPOINTS, "it is a Stable Diffusion 2 checkpoint (OpenCLIP text encoder)"
        )
    if any(key.startswith("cond_stage_model.transformer.") for key in keys):
        return ModelFamily.SD15
    raise ModelLoadError(path, KNOWN_CHECKPOINTS, "its keys are neither SDXL's (SGM) nor SD1.5's (LDM)")


def _checkpoint_keys(path: Path) -> dict[str, int]:
    """Each key with its tensor's second dimension (input channels of a convolution; 0 if none)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
            first = handle.get_slice(INPAINTING_KEY).get_shape() if INPAINTING_KEY in keys else []
        return {**dict.fromkeys(keys, 0), **({INPAINTING_KEY: first[1]} if len(first) > 1 else {})}
    import zipfile

    import torch  # a .ckpt: on the meta device (memory-mapped when it is a zip), tensors are not read

    try:
        state = torch.load(str(path), map_location="meta", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as error:  # pickle and torch errors run over many lines
        raise ModelLoadError(path, KNOWN_CHECKPOINTS, str(error).strip().splitlines()[0][:300]) from None
    state = state.get("state_dict", state)
    return {key: (value.shape[1] if getattr(value, "ndim", 0) > 1 else 0) for key, value in state.items()}


def _hub_json(spec: ModelSpec, name: str) -> dict:
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(spec.base, name, cache_dir=spec.cache_dir, local_files_only=spec.local_files_only)
    return json.loads(Path(path).read_text("utf-8"))


def resolve_spec(spec: ModelSpec) -> ModelSpec:
    """The spec with its family set, and the parts it left at SDXL's defaults (IP-Adapter, image
    encoder, preview autoencoder, label) and ``--controlnet auto`` and ``--tile-controlnet auto`` made
    the family's."""
    try:
        family = traits(detect_family(spec))
    except ModelLoadError as error:
        if is_local(spec.base) or Path(spec.base).suffix in SINGLE_FILE_SUFFIXES or error.__cause__ is None:
            raise
        # A hub repo whose index could not be fetched now (offline, no cache): the load says why, in
        # its own time (a server reports it to its clients); planned as SDXL until then.
        log.warning("could not read %s's model_index.json (%s): planning it as SDXL", spec.base, error)
        return spec
    defaults = ModelSpec()
    changes: dict[str, object] = {"family": family.family}
    if spec.controlnet == "auto":
        changes["controlnet"] = family.controlnet
    if spec.tile_controlnet == "auto":
        changes["tile_controlnet"] = family.tile_controlnet
    if family is not SDXL:
        changes.update(_family_defaults(spec, defaults, family))
    return replace(spec, **changes)


def _family_defaults(spec: ModelSpec, defaults: ModelSpec, family: FamilyTraits) -> dict[str, object]:
    changes: dict[str, object] = {}
    if spec.ip_adapter == defaults.ip_adapter:
        changes["ip_adapter"] = family.ip_adapter
    if spec.image_encoder == defaults.image_encoder:
        changes["image_encoder"] = family.image_encoder
    if spec.preview_vae_default == TAESDXL_REPO:
        changes["preview_vae_default"] = family.preview_vae
    if spec.label == SDXL_LABEL:
        changes["label"] = f"SD1.5 + {Path(str(changes.get('ip_adapter', spec.ip_adapter))).stem}"
    if family is SD15 and spec.base == defaults.base:
        changes["base"] = family.base_repo
    return changes
