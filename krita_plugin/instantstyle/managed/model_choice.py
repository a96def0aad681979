"""What the managed backend serves, as the artist chooses it in the docker, and the ``serve``
arguments that say it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum

from .installation import InstallError

TEST_MODELS_ENV = "INSTANTSTYLE_TEST_MODELS"
"""Set (to 1): the tiny random-weight test model is offered as a model choice (the plugin's tests)."""


class ManagedModel(str, Enum):
    SDXL = "sdxl"
    CHECKPOINT = "checkpoint"
    """A single-file checkpoint the artist already has (SDXL: Illustrious, Pony...; or SD1.5): the
    backend tells its family from the file."""
    TINY = "tiny"
    """The tiny random-weight test model: offered only with ``TEST_MODELS_ENV``."""


MODEL_LABELS = {
    ManagedModel.SDXL: "SDXL base 1.0 (downloaded on first start; its size shown first)",
    ManagedModel.CHECKPOINT: "A checkpoint file I already have…",
    ManagedModel.TINY: "Tiny test model (random weights)",
}


def offered_models(env: dict[str, str] | None = None) -> list[ManagedModel]:
    env = dict(os.environ) if env is None else env
    models = [ManagedModel.SDXL, ManagedModel.CHECKPOINT]
    return [*models, ManagedModel.TINY] if env.get(TEST_MODELS_ENV) else models


@dataclass(frozen=True)
class ModelChoice:
    model: ManagedModel = ManagedModel.SDXL
    checkpoint: str = ""
    """The file for ``CHECKPOINT``."""
    controlnet: bool = False
    """Also the canny and Tile ControlNets (SDXL's ~2.5 GB each, SD1.5's ~1.4 GB each): "keep the
    lines" restyles that keep the layer's edges, or its shapes and colours."""
    speed_loras: bool = False
    """Also the few-step LoRAs of the speed presets (live mode's fastest)."""

    def serve_arguments(self) -> list[str]:
        if self.model is ManagedModel.TINY:
            arguments = ["--model", "tiny"]
        elif self.model is ManagedModel.CHECKPOINT:
            if not self.checkpoint:
                raise InstallError("choose the checkpoint file first")
            arguments = ["--model", self.checkpoint]
        else:
            arguments = ["--model", "sdxl"]
        if self.controlnet:  # a checkpoint's family is known once the backend reads it: it picks
            arguments += ["--controlnet", CONTROLNET_AUTO, "--tile-controlnet", CONTROLNET_AUTO]
        if self.speed_loras:
            arguments += [argument for preset in SPEED_PRESETS for argument in ("--speed", preset)]
        return arguments


CONTROLNET_AUTO = "auto"
"""``serve --controlnet auto``: the model family's canny ControlNet (SDXL:
``diffusers/controlnet-canny-sdxl-1.0``, SD1.5: ``lllyasviel/control_v11p_sd15_canny``); with
``--tile-controlnet auto`` its Tile ControlNet (``xinsir/controlnet-tile-sdxl-1.0``,
``lllyasviel/control_v11f1e_sd15_tile``). ``models --plan`` lists both downloads."""
SPEED_PRESETS = ("hyper-8-cfg", "lightning-4", "lcm-4")
"""The backend's few-step presets (``serve --speed``), each with its LoRA."""
