"""Which model family a checkpoint is, read from the checkpoint itself, and the spec completed for it.

A single file says it through its key families (read from the ``.safetensors`` header, no weight
loaded): SGM's ``conditioner.embedders.*`` is SDXL, LDM's ``cond_stage_model.transformer.*`` is SD1.5,
``cond_stage_model.model.*`` (OpenCLIP) is SD2. diffusers' own detection (``infer_diffusers_model_type``)
looks for one layer of SDXL's OpenCLIP (``resblocks.9``) and calls everything else SD1: a pruned or tiny
SDXL file would load as SD1.5, so it is not used. A folder or hub repo says it in ``model_index.json``.
"""

from __future__ import annotations

import json
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
    is_local,
    load_errors,
)

PIPELINE_FAMILIES = {
    "StableDiffusionXLPipeline": ModelFamily.SDXL,
    "StableDiffusionPipeline": ModelFamily.SD15,
}
"""``model_index.json``'s ``_class_name`` of each family's txt2img pipeline."""

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
            return family_of_index(source, json.loads(index.read_text("utf-8")))
        for known in FAMILIES.values():  # the families' own base repos: known without asking the hub
            if spec.base == known.base_repo:
                return known.family
        return family_of_index(spec.base, _hub_index(spec))


def family_of_index(source: str | Path, index: dict) -> ModelFamily:
    name = str(index.get("_class_name", ""))
    if name not in PIPELINE_FAMILIES:
        raise ModelLoadError(source, KNOWN_CHECKPOINTS, f"it is a {name or 'pipeline of no named class'}")
    return PIPELINE_FAMILIES[name]


def family_of_single_file(path: Path) -> ModelFamily:
    """SDXL or SD1.5 from the checkpoint's keys; SD2 and unknown layouts refused in one line."""
    if not path.is_file():
        raise ModelLoadError(path, "a single-file checkpoint", "file not found")
    keys = _checkpoint_keys(path)
    if any(key.startswith(("conditioner.embedders.", "model.diffusion_model.label_emb.")) for key in keys):
        return ModelFamily.SDXL
    if any(key.startswith("cond_stage_model.model.") for key in keys):
        raise ModelLoadError(
            path, KNOWN_CHECKPOINTS, "it is a Stable Diffusion 2 checkpoint (OpenCLIP text encoder)"
        )
    if any(key.startswith("cond_stage_model.transformer.") for key in keys):
        return ModelFamily.SD15
    raise ModelLoadError(path, KNOWN_CHECKPOINTS, "its keys are neither SDXL's (SGM) nor SD1.5's (LDM)")


def _checkpoint_keys(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    import torch  # a .ckpt: memory-mapped, tensors are not read

    state = torch.load(str(path), map_location="meta", weights_only=True, mmap=True)
    return list(state.get("state_dict", state))


def _hub_index(spec: ModelSpec) -> dict:
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(
        spec.base, "model_index.json", cache_dir=spec.cache_dir, local_files_only=spec.local_files_only
    )
    return json.loads(Path(path).read_text("utf-8"))


def resolve_spec(spec: ModelSpec) -> ModelSpec:
    """The spec with its family set, and the parts it left at SDXL's defaults (IP-Adapter, image
    encoder, preview autoencoder, label) and ``--controlnet auto`` made the family's."""
    family = traits(detect_family(spec))
    defaults = ModelSpec()
    changes: dict[str, object] = {"family": family.family}
    if spec.controlnet == "auto":
        changes["controlnet"] = family.controlnet
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
