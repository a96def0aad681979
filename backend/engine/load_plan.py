"""What a client is told about the model, and the plan of where and how it loads (before any weight)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from protocol.enums import Mode, ModelFamily, ModelPhase
from protocol.messages import ModelStatus

from .control import offered_modes
from .downloads import DownloadProgress
from .family import traits
from .family_detect import resolve_spec
from .image_encoders import ImageEncoderKind, image_encoder_kind
from .loading import ModelSpec, pick_device, pick_dtype
from .memory import MemoryTier
from .memory_budget import pick_tier
from .speed_presets import speed_preset
from .style_metric import csd_source


@dataclass(frozen=True)
class EngineInfo:
    """What a client is told about the loaded model."""

    label: str
    is_test_model: bool
    device: str
    dtype: str
    memory_tier: str = MemoryTier.FULL.value


def engine_info(spec: ModelSpec, device: torch.device, dtype: torch.dtype, tier: MemoryTier) -> EngineInfo:
    return EngineInfo(spec.label, spec.is_test_model, str(device), str(dtype), tier.value)


@dataclass(frozen=True)
class LoadPlan:
    """Where and how a model will be loaded, known before any weight is read: a server can announce
    it while it downloads and loads."""

    spec: ModelSpec
    device: torch.device
    dtype: torch.dtype
    memory_tier: MemoryTier
    compile: bool = False
    """``torch.compile`` the UNet's repeated blocks (opt-in: compiling costs start-up time)."""
    problems: tuple[str, ...] = ()
    """One line for each thing asked for that the model's family does not have (``features.problems``)."""

    @classmethod
    def make(
        cls,
        spec: ModelSpec,
        device: str | None = None,
        dtype: str | None = None,
        memory_tier: str | None = "auto",
        compile: bool = False,
    ) -> LoadPlan:
        spec = resolve_spec(spec)  # the family, read from the checkpoint, and its default parts
        family = spec.family or ModelFamily.SDXL  # None: a hub repo not reachable now, planned as SDXL
        spec, problems = family_speed_presets(spec, family)
        torch_device = pick_device(device)
        previews = spec.preview_vae.strip().lower() != "none"
        torch_dtype = pick_dtype(torch_device, dtype)
        encoder: ImageEncoderKind | None = image_encoder_kind(spec)
        if encoder is ImageEncoderKind.UNKNOWN and spec.image_encoder == traits(family).image_encoder:
            encoder = None  # not downloaded yet, but the family's own: its known kind (SD1.5: ViT-H)
        tier = pick_tier(
            torch_device,
            memory_tier,
            len(spec.controls),  # each loaded ControlNet rests where the tier keeps them
            previews,
            torch_dtype,
            encoder,
            family=family,
            csd=csd_source(spec) is not None,  # on the GPU in the full tier
        )
        return cls(spec, torch_device, torch_dtype, tier, compile, problems)

    @property
    def info(self) -> EngineInfo:
        return engine_info(self.spec, self.device, self.dtype, self.memory_tier)

    @property
    def modes(self) -> list[Mode]:
        """What the loaded engine will run: ``control`` needs a ControlNet (canny or tile)."""
        return offered_modes(self.spec.controls)


def family_speed_presets(spec: ModelSpec, family: ModelFamily) -> tuple[ModelSpec, tuple[str, ...]]:
    """The spec with the speed presets its family has a LoRA for (SD1.5 has no Lightning), and one line
    for each left out: a server offering presets for any checkpoint starts, and says which it lacks."""
    kept, problems = [], []
    for name in spec.speed_presets:
        try:
            speed_preset(name, family)
            kept.append(name)
        except ValueError as error:
            problems.append(f"speed preset {name}: {error}")
    return replace(spec, speed_presets=tuple(kept)), tuple(problems)


def download_status(progress: DownloadProgress) -> ModelStatus:
    """``Downloading models: 3.1 of 11.3 GB (4 of 17 files), about 6 min left`` (MB below a GB)."""
    unit, name = (1024**3, "GB") if progress.bytes_total >= 1024**3 else (1024**2, "MB")
    done, total = progress.bytes_done / unit, progress.bytes_total / unit
    left = progress.seconds_left
    eta = (
        ""
        if left is None
        else f", about {left / 60:.0f} min left"
        if left >= 90
        else f", about {left:.0f} s left"
    )
    return ModelStatus(
        ModelPhase.DOWNLOADING,
        f"Downloading models: {done:.1f} of {total:.1f} {name} "
        f"({progress.files_done} of {progress.files_total} files){eta}",
        progress.bytes_done,
        progress.bytes_total,
    )
