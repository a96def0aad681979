"""Which model scores style: CSD where the server has its checkpoint, else the IP-Adapter's CLIP.

``--csd`` (``ModelSpec.csd``):

- ``auto`` (the default): the hub copy (``tomg-group-umd/CSD-ViT-L``, a 2.4 GB training checkpoint)
  when it is already in the cache, never downloaded for it: scoring is worth no 2.4 GB surprise;
- ``none``: CLIP;
- a file or ``owner/repo/file``: loaded (downloaded if need be) at start, an error there if it fails.

Where it runs: with the model (fp16/bf16) in the ``full`` memory tier; in the offloading tiers on the
CPU in fp32 (a ViT-L at 224² a picture: scoring does not take GPU memory a low card lacks).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .csd import CsdLoadError, CsdModel, load_csd
from .loading import ModelLoadError, ModelSpec, is_local
from .memory import MemoryTier

log = logging.getLogger(__name__)


def cached_hub_file(source: str, cache_dir: str | None) -> str | None:
    """The local path of ``owner/repo/file`` if the hub cache holds it, else None (no network)."""
    from huggingface_hub import try_to_load_from_cache

    owner, name, *rest = source.split("/")
    found = try_to_load_from_cache(f"{owner}/{name}", "/".join(rest), cache_dir=cache_dir)
    return found if isinstance(found, str) else None


def hub_file(source: str, spec: ModelSpec) -> str:
    """``owner/repo/file`` fetched into ``spec``'s hub cache (offline: only from it)."""
    from huggingface_hub import hf_hub_download

    parts = source.split("/")
    if len(parts) < 3 or is_local(source):
        raise CsdLoadError(f"{source}: no such CSD checkpoint file")
    try:
        return hf_hub_download(
            "/".join(parts[:2]),
            "/".join(parts[2:]),
            cache_dir=spec.cache_dir,
            local_files_only=spec.local_files_only,
        )
    except Exception as error:  # offline, no such repo or file: one line, at start
        raise CsdLoadError(
            f"{source}: not in the hub cache and not fetched ({type(error).__name__})"
        ) from None


def csd_source(spec: ModelSpec) -> str | None:
    """What ``spec.csd`` loads: a file or hub path, or None for CLIP."""
    choice = spec.csd.strip()
    if choice.lower() == "none":
        return None
    if choice.lower() != "auto":
        return choice
    default = spec.csd_default
    if default is None:
        return None
    if is_local(default):
        return default if Path(default).is_file() else None
    found = cached_hub_file(default, spec.cache_dir)
    if found is None:
        log.info("style scores: CLIP (no CSD checkpoint in the cache; --csd %s loads it)", default)
    return found


def load_style_metric(
    spec: ModelSpec, tier: MemoryTier, device: torch.device, dtype: torch.dtype
) -> CsdModel | None:
    """The CSD ``spec`` asks for, placed by ``tier``; None: style is scored with CLIP."""
    source = csd_source(spec)
    if source is None:
        return None
    where, kind = (device, dtype) if tier is MemoryTier.FULL else (torch.device("cpu"), torch.float32)
    try:
        if not Path(source).expanduser().is_file():  # owner/repo/file, into the spec's own cache
            source = hub_file(source, spec)
        model = load_csd(source, kind, where)
    except CsdLoadError as error:
        expected = "a CSD checkpoint (checkpoint.pth or a safetensors copy)"
        raise ModelLoadError(source, expected, str(error)) from None
    log.info("style scores: CSD from %s (%s, %s)", source, where, str(kind).removeprefix("torch."))
    return model
