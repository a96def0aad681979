"""What an engine is made of, loaded the way a server starts: download, load, check, place."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from protocol.enums import ControlKind, ModelPhase
from protocol.messages import ModelStatus

from .adapters import adapter_info
from .csd import CsdModel
from .downloads import prefetch
from .family_detect import detect_family
from .load_plan import LoadPlan, download_status
from .loading import load_controlnet
from .loras import LoraSet
from .memory import place, place_controlnet
from .model_loading import check_controlnet, load_models
from .preview_vae import LoadedPreviewVae, load_preview_vae
from .speed_presets import lora_sources
from .style_metric import load_style_metric

log = logging.getLogger(__name__)


@dataclass
class LoadedParts:
    """Every model of a plan, placed by its memory tier."""

    pipeline: object
    loras: LoraSet
    controlnet: torch.nn.Module | None
    preview_vae: LoadedPreviewVae
    tile_controlnet: torch.nn.Module | None = None
    """The Tile ControlNet (``--tile-controlnet``), placed like the canny one."""
    csd: CsdModel | None = None
    """The style metric's model (``--csd``); None: CLIP scores style."""


def load_parts(plan: LoadPlan, report: Callable[[ModelStatus], None]) -> LoadedParts:
    """Download what is missing, load, and place, telling ``report`` about each phase (and the bytes
    while downloading). An adapter the engine cannot run is refused before anything else loads."""
    spec, device, dtype, tier = plan.spec, plan.device, plan.dtype, plan.memory_tier
    log.info("memory tier: %s on %s, %s", tier.value, device, str(dtype).removeprefix("torch."))
    prefetch(spec, dtype, lambda progress: report(download_status(progress)))
    report(ModelStatus(ModelPhase.LOADING, f"Loading {spec.label} ({device}, {tier.value})"))
    pipeline = load_models(spec, device, dtype)
    adapter_info(pipeline, spec)
    loras = LoraSet(pipeline)
    for source in lora_sources(list(spec.speed_presets), list(spec.loras), detect_family(spec)):
        where = "" if source.local else " (downloading it first if needed)"
        report(ModelStatus(ModelPhase.LOADING, f"Loading LoRA {source.name}{where}"))
        loras.load([source], spec.cache_dir, spec.local_files_only)
    controlnet = load_checked_controlnet(pipeline, plan, ControlKind.EDGES)
    tile = load_checked_controlnet(pipeline, plan, ControlKind.TILE)
    preview_vae = load_preview_vae(spec, dtype)
    place(pipeline, controlnet, tier, device)
    if tile is not None:
        place_controlnet(tile, tier, device)
    csd = load_style_metric(spec, tier, device, dtype)
    return LoadedParts(pipeline, loras, controlnet, preview_vae, tile, csd)


def load_checked_controlnet(pipeline: object, plan: LoadPlan, kind: ControlKind) -> torch.nn.Module | None:
    """The spec's ControlNet of ``kind`` (None if it names none), checked to be the model family's."""
    controlnet = load_controlnet(plan.spec, plan.dtype, kind)
    if controlnet is not None:
        check_controlnet(controlnet, pipeline, plan.spec, kind)
    return controlnet
