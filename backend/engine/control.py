"""What a ``control`` job keeps of its init image, and the ControlNet that keeps it (issue 24).

Two kinds, each with its own optional ControlNet: ``edges`` keeps the Canny edges (a canny
ControlNet, ``--controlnet``: the lines stay, everything else is restyled), ``tile`` keeps the
picture itself (a Tile ControlNet, ``--tile-controlnet``: shapes and colour layout stay, the style
repaints the surface; no preprocessor, the init image is the condition). The engine stays a hub:
which ControlNet a job uses, its condition image and the one-line refusal live here.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from PIL import Image

from protocol.enums import ControlKind, Mode

from .canny import canny
from .family import FamilyTraits
from .request import GenerationRequest, RequestError

CONTROL_OPTIONS: dict[ControlKind, str] = {
    ControlKind.EDGES: "--controlnet",
    ControlKind.TILE: "--tile-controlnet",
}
"""The command-line option that loads each kind's ControlNet (said in every refusal)."""
CONTROL_PURPOSE: dict[ControlKind, str] = {
    ControlKind.EDGES: "restyle while keeping the lines",
    ControlKind.TILE: "keep the picture and change its style",
}


def offered_modes(controls: Iterable[ControlKind]) -> list[Mode]:
    """Every mode, ``control`` only when some ControlNet is loaded (either kind)."""
    loaded = bool(list(controls))
    return [mode for mode in Mode if mode is not Mode.CONTROL or loaded]


def missing_control(kind: ControlKind, family: FamilyTraits) -> RequestError:
    """The one line a job asking for a ControlNet the server did not load gets: the flag to start with."""
    name = "Tile ControlNet" if kind is ControlKind.TILE else "ControlNet (canny)"
    return RequestError(
        f"control {kind.value}: this backend has no {name} loaded: start it with {CONTROL_OPTIONS[kind]} "
        f"auto (for this {family.label} model: {family.controlnet_for(kind)}) to {CONTROL_PURPOSE[kind]}"
    )


class ControlNets:
    """The loaded ControlNets by the kind of control each gives (none, one or both)."""

    def __init__(self, edges: torch.nn.Module | None = None, tile: torch.nn.Module | None = None) -> None:
        self.loaded: dict[ControlKind, torch.nn.Module] = {
            kind: module
            for kind, module in ((ControlKind.EDGES, edges), (ControlKind.TILE, tile))
            if module is not None
        }

    @property
    def kinds(self) -> list[ControlKind]:
        """What ``features.controls`` lists, in the protocol's order."""
        return [kind for kind in ControlKind if kind in self.loaded]

    def for_kind(self, kind: ControlKind, family: FamilyTraits) -> torch.nn.Module:
        """The ControlNet of ``kind``; a clear one-line ``RequestError`` when it was not loaded."""
        if kind not in self.loaded:
            raise missing_control(kind, family)
        return self.loaded[kind]

    def visitor(self, request: GenerationRequest) -> torch.nn.Module | None:
        """The ControlNet a job runs beside the UNet (below the full tier it visits the GPU for it)."""
        return self.loaded.get(request.control) if request.mode is Mode.CONTROL else None


def pipeline_key(mode: Mode, control: ControlKind) -> tuple[Mode, ControlKind | None]:
    """Which cached pipeline a job runs on: one per mode, and per control kind for ``control``."""
    return (mode, control if mode is Mode.CONTROL else None)


def control_image(request: GenerationRequest) -> Image.Image:
    """The ControlNet's condition at the job's size: the init image's Canny edges (``edges``), or the
    init image itself in RGB (``tile``: a Tile ControlNet takes the picture with no preprocessor)."""
    assert request.init_image is not None
    size = (request.width, request.height)
    picture = request.init_image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    return picture if request.control is ControlKind.TILE else canny(picture)
