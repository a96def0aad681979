"""Loading a model of its family: the family's pipeline, its IP-Adapter and ControlNet checked to be
the family's, the image encoder attached (``loading.py`` has the parts' loaders and the spec)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from protocol.enums import ControlKind, Mode

from .control import CONTROL_OPTIONS
from .family import family_of, traits
from .family_detect import detect_family
from .loading import (
    SINGLE_FILE_SUFFIXES,
    ModelLoadError,
    ModelSpec,
    check_diffusers_folder,
    check_safetensors,
    from_hub_preferring_fp16,
    is_local,
    load_errors,
    load_image_encoder,
    load_ip_adapter_weights,
    load_vae,
    quiet_libraries,
)
from .prediction import configured as configured_scheduler
from .prediction import resolve as resolve_prediction

log = logging.getLogger(__name__)


def load_base_pipeline(spec: ModelSpec, dtype: torch.dtype) -> object:
    """The family's text-to-image pipeline (SDXL or SD1.5) from a folder, a single file or the hub."""
    import diffusers

    family = traits(detect_family(spec))
    pipeline_class = getattr(diffusers, family.pipelines[Mode.TXT2IMG])
    extra: dict[str, object] = dict.fromkeys(family.skip_components)  # never loaded: None
    if family.skip_components:
        extra["requires_safety_checker"] = False
    hub_kwargs = {"cache_dir": spec.cache_dir, "local_files_only": spec.local_files_only}
    source = Path(spec.base).expanduser()
    what = f"an {family.label} model"
    with load_errors(spec.base, f"{what} (diffusers folder, single file or repo id)"):
        if source.suffix in SINGLE_FILE_SUFFIXES:
            if not source.is_file():
                raise ModelLoadError(source, f"{what} single-file checkpoint", "file not found")
            if source.suffix == ".safetensors":
                check_safetensors(source, f"{what} single-file checkpoint")
            return pipeline_class.from_single_file(
                str(source), config=spec.base_config, dtype=dtype, **extra, **hub_kwargs
            )
        if is_local(spec.base):
            if not source.is_dir():
                raise ModelLoadError(
                    source, f"a diffusers {family.label} folder or a .safetensors checkpoint", "not found"
                )
            check_diffusers_folder(source)
            return pipeline_class.from_pretrained(str(source), dtype=dtype, **extra)
        return from_hub_preferring_fp16(
            pipeline_class.from_pretrained, spec.base, dtype, **extra, **hub_kwargs
        )


ADAPTER_FAMILIES = (
    "ip-adapter_sdxl, ip-adapter_sdxl_vit-h and ip-adapter-plus_sdxl_vit-h go with SDXL checkpoints, "
    "ip-adapter_sd15 and ip-adapter-plus_sd15 with SD1.5 ones"
)


def load_ip_adapter(pipe: object, spec: ModelSpec) -> None:
    """diffusers' own ``load_ip_adapter``, with the image encoder provided separately; an adapter of
    another model family (its image attention layers of other sizes) said so in one line."""
    try:
        load_ip_adapter_weights(pipe, spec)
    except ModelLoadError as error:
        if "to_k_ip" not in str(error) or "shape" not in str(error):
            raise
        raise ModelLoadError(
            spec.ip_adapter,
            f"an IP-Adapter for this {family_of(pipe).label} model",
            f"its image attention layers are sized for another model family: {ADAPTER_FAMILIES}",
        ) from error


def check_controlnet(
    controlnet: torch.nn.Module, pipe: object, spec: ModelSpec, kind: ControlKind = ControlKind.EDGES
) -> None:
    """A ControlNet made for the base model's family (an SD1.5 ControlNet beside an SDXL checkpoint
    loads, and fails at its first job with a shape error): its cross-attention and added embedding."""
    unet, config = pipe.unet.config, controlnet.config  # type: ignore[attr-defined]
    keys = ("cross_attention_dim", "addition_embed_type", "block_out_channels")
    if any(getattr(unet, key, None) != getattr(config, key, None) for key in keys):
        family = family_of(pipe)
        default = family.controlnet_for(kind)
        raise ModelLoadError(
            str(spec.controlnet_for(kind)),
            f"a ControlNet for this {family.label} model",
            f"it was made for another model family; {CONTROL_OPTIONS[kind]} auto loads {default}",
        )


def load_models(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> object:
    """The family's pipeline with the IP-Adapter loaded and the image encoder attached, still in CPU memory:
    the memory tier decides what goes to ``device``."""
    quiet_libraries()
    log.info("loading %s on %s (%s)", spec.label, device, dtype)
    pipe = load_base_pipeline(spec, dtype)
    single_file = Path(spec.base).suffix in SINGLE_FILE_SUFFIXES
    prediction = resolve_prediction(spec.prediction, spec.base, single_file)
    if prediction is not None:
        log.info("%s predicts %s", spec.label, prediction.value)
        pipe.scheduler = configured_scheduler(pipe.scheduler, prediction)  # type: ignore[attr-defined]
    vae = load_vae(spec, dtype)
    if vae is not None:
        pipe.register_modules(vae=vae)  # type: ignore[attr-defined]
    image_encoder = load_image_encoder(spec, dtype)
    pipe.register_modules(image_encoder=image_encoder)  # type: ignore[attr-defined]
    load_ip_adapter(pipe, spec)  # its kind is checked by the engine (adapters.py)
    pipe.set_progress_bar_config(disable=True)  # type: ignore[attr-defined]
    return pipe
