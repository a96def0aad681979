"""The docker's settings as typed data, persisted through a small key/value store.

Inside Krita the store is ``Krita.instance().readSetting/writeSetting``; tests use
a dict. Values are kept as JSON so that a missing or corrupt entry falls back
to the default instead of breaking the plugin.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from typing import Any, Protocol

from .deps import protocol

DEFAULT_URL = "ws://127.0.0.1:8765"
SETTINGS_GROUP = "instantstyle"


class BackendMode(str, Enum):
    MANAGED = "managed"
    """The plugin installs, starts and stops its own backend on this computer."""
    REMOTE = "remote"
    """A server someone started: its address and token."""


class StyleSourceKind(str, Enum):
    ACTIVE_LAYER = "active_layer"
    LAYER = "layer"
    FILE = "file"


class JobKind(str, Enum):
    NEW_IMAGE = "new_image"
    """A new image in the style of the reference (txt2img)."""
    STYLIZE = "stylize"
    """Restyle the current layer (img2img), or only the selection (inpaint)."""
    KEEP_LINES = "keep_lines"
    """Repaint the current layer (or selection) in the style, keeping what ``GenerationSettings.control``
    says: its edges (ControlNet canny) or its shapes and colours (Tile ControlNet)."""


@dataclass
class StyleSource:
    kind: StyleSourceKind = StyleSourceKind.ACTIVE_LAYER
    layer: str = ""
    """Layer name for ``LAYER``."""
    path: str = ""
    """Image file for ``FILE``."""
    weight: float = 1.0


class RegionMaskKind(str, Enum):
    LAYER = "layer"
    """The alpha of a layer the artist painted the region on (kept across sessions)."""
    SELECTION = "selection"
    """A selection saved for the region with "Save selection" (kept while Krita runs)."""


@dataclass
class RegionSetting:
    """A part of the picture with its own style reference."""

    name: str = "region"
    mask_kind: RegionMaskKind = RegionMaskKind.LAYER
    mask_layer: str = ""
    reference: StyleSource = field(default_factory=lambda: StyleSource(StyleSourceKind.LAYER))


@dataclass
class LoraChoice:
    """A LoRA the backend offers, and how strongly it applies."""

    name: str
    weight: float = 1.0


@dataclass
class GenerationSettings:
    """Everything the docker shows; defaults follow the InstantStyle paper's examples."""

    backend_mode: BackendMode = BackendMode.MANAGED
    server_url: str = DEFAULT_URL
    """The remote server's address (``BackendMode.REMOTE``)."""
    token: str = ""
    server_pin: str = ""
    """A ``wss://`` server's certificate the artist confirmed (SHA-256 fingerprint): trusted on first
    use, and any other certificate refused until the artist forgets it (``server_trust``)."""
    server_pin_for: str = ""
    """The address (host:port) ``server_pin`` was confirmed for: another server asks again."""
    server_ca_file: str = ""
    """A studio CA's certificate (PEM) that signs the server's: no confirmation needed."""
    managed_home: str = ""
    """The managed backend's folder; empty: beside Krita's resources (``managed.platforms``)."""
    managed_model: str = "sdxl"
    """A ``managed.manager.ManagedModel`` value: what the managed backend serves."""
    managed_checkpoint: str = ""
    """The single-file checkpoint for ``managed_model`` "checkpoint"."""
    managed_controlnet: bool = False
    managed_speed_loras: bool = False
    styles: list[StyleSource] = field(default_factory=lambda: [StyleSource()])
    prompt: str = ""
    negative_prompt: str = (
        "text, watermark, lowres, low quality, worst quality, deformed, glitch, low contrast, noisy, "
        "saturation, blurry"
    )
    content_text: str = ""
    content_scale: float = 0.5
    preset: str = protocol.BlockPreset.STYLE.value
    block_scales: str = ""
    """JSON for the custom preset, e.g. ``{"up": {"block_0": [0, 1, 0]}}``."""
    style_scale: float = 1.0
    layout_push: float = 2.0
    """For the precise preset: how hard the reference's composition is pushed away."""
    kind: JobKind = JobKind.STYLIZE
    strength: float = 0.6
    control_scale: float = 0.6
    """How strictly ``KEEP_LINES`` follows the layer's edges (ControlNet scale)."""
    control: str = protocol.ControlKind.EDGES.value
    """A ``protocol.ControlKind`` value: what ``KEEP_LINES`` keeps of the layer (edges, or its shapes
    and colours through a Tile ControlNet), where the backend offers both."""
    auto_size: bool = True
    """Generate at the canvas or selection size (fitted to the server's limits)."""
    canvas_resolution: bool = True
    """With ``auto_size``: a layer larger than the model's native area is made at that area, then
    upscaled and refined in tiles at the layer's own size (``generate.refine``), not stretched."""
    width: int = 1024
    height: int = 1024
    steps: int = 30
    guidance_scale: float = 5.0
    guidance_rescale: float | None = None
    """CFG rescale (0..1) for zero-terminal-SNR v-prediction models; None: the model's default."""
    seed: int = 42
    seed_locked: bool = False
    batch: int = 1
    sampler: str = ""
    """A ``protocol.Sampler`` value; empty: the model's own scheduler."""
    loras: list[LoraChoice] = field(default_factory=list)
    regions: list[RegionSetting] = field(default_factory=list)
    """Parts of the picture with their own style; the style references then style the rest."""
    speed_preset: str = ""
    """The few-step preset last applied to the fields above (a label only: the fields are what is sent)."""
    sweep_first: str = "style_scale"
    """A ``protocol.SweepAxis`` value: the sweep's first (slowest) axis."""
    sweep_first_values: str = "0.4, 0.6, 0.8, 1.0"
    sweep_second: str = "content_scale"
    """The second axis, or empty for a one-axis sweep."""
    sweep_second_values: str = "0, 0.5, 1.0"
    auto_leakage_margin: float = protocol.Auto().leakage_margin
    """Find strength: how much more of the described content a picture may show than one without the
    style (``generate.auto``)."""
    auto_prompt_margin: float = protocol.Auto().prompt_margin
    """Find strength: how much less like the prompt a picture may be than one without the style."""
    auto_presets: bool = False
    """Find strength: also try the precise preset against the chosen Blocks preset."""
    live_preset: str = ""
    """The few-step preset live mode uses (the backend's first one when empty or not offered)."""
    live_max_side: int = 768
    """Live jobs run at most this many pixels a side (the result is scaled to the canvas)."""
    live_seed: int = 7
    """Live mode keeps one seed, so that only the painting changes the picture."""
    preview_side: int = 1024
    """Longest side of step previews from a backend with a tiny autoencoder (less for a slow link)."""

    def next_seed(self) -> int:
        """The seed for the next job: the locked one, or a fresh random one (remembered)."""
        if not self.seed_locked:
            self.seed = random.randrange(2**31)
        return self.seed

    def sweep_values(self) -> list[protocol.SweepValues]:
        """The sweep's axes, read from the docker's text ("0.4, 0.6"); ValueError says what is wrong."""
        axes = []
        for axis, text in (
            (self.sweep_first, self.sweep_first_values),
            (self.sweep_second, self.sweep_second_values),
        ):
            if not axis:
                continue
            kind = protocol.SweepAxis(axis)
            items = [item.strip() for item in text.replace(";", ",").split(",") if item.strip()]
            if not items:
                raise ValueError(f"give the {kind.value.replace('_', ' ')} values to sweep, e.g. 0.5, 1.0")
            try:
                if kind is protocol.SweepAxis.PRESET:
                    values: list[Any] = items
                elif kind is protocol.SweepAxis.SEED:
                    values = [int(item) for item in items]
                else:
                    values = [float(item) for item in items]
            except ValueError:
                raise ValueError(
                    f"the {kind.value.replace('_', ' ')} values must be numbers: {text!r}"
                ) from None
            axes.append(protocol.SweepValues(kind, values))
        return axes

    def custom_block_scales(self) -> dict[str, Any] | None:
        if self.preset != protocol.BlockPreset.CUSTOM.value:
            return None
        try:
            value = json.loads(self.block_scales or "{}")
        except ValueError as error:
            raise ValueError(f"the custom block scales are not valid JSON: {error}") from None
        if not isinstance(value, dict) or not value:
            raise ValueError(
                'custom block scales must be a JSON object such as {"up": {"block_0": [0, 1, 0]}}'
            )
        return value


class SettingsStore(Protocol):
    def read(self, key: str, default: str) -> str: ...

    def write(self, key: str, value: str) -> None: ...


class DictStore:
    """An in-memory store (tests, and a fallback outside Krita)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def read(self, key: str, default: str) -> str:
        return self.values.get(key, default)

    def write(self, key: str, value: str) -> None:
        self.values[key] = value


def load_settings(store: SettingsStore) -> GenerationSettings:
    settings = GenerationSettings()
    for spec in fields(GenerationSettings):
        raw = store.read(spec.name, "")
        if not raw:
            continue
        try:
            value = _typed(getattr(settings, spec.name), json.loads(raw), spec.name)
        except (ValueError, KeyError, TypeError):
            continue  # a corrupt entry keeps its default
        settings = replace(settings, **{spec.name: value})
    if not store.read("backend_mode", "") and store.read("server_url", ""):
        # Saved before the managed backend existed: the artist ran a server of their own.
        settings = replace(settings, backend_mode=BackendMode.REMOTE)
    return settings


def _typed(default: object, value: Any, name: str) -> Any:
    """``value`` as the type of ``default``; raises ValueError/TypeError/KeyError if it cannot be."""
    if name == "styles":
        styles = [
            StyleSource(
                StyleSourceKind(s["kind"]),
                str(s.get("layer", "")),
                str(s.get("path", "")),
                float(s.get("weight", 1.0)),
            )
            for s in value
        ]
        return styles or [StyleSource()]
    if name == "regions":
        return [
            RegionSetting(
                str(item["name"]),
                RegionMaskKind(item["mask_kind"]),
                str(item.get("mask_layer", "")),
                _typed([StyleSource()], [item["reference"]], "styles")[0],
            )
            for item in value
        ]
    if name == "loras":
        return [LoraChoice(str(item["name"]), float(item.get("weight", 1.0))) for item in value]
    if isinstance(default, Enum):
        return type(default)(value)
    if isinstance(default, bool) or isinstance(value, bool):
        if type(value) is not type(default):
            raise TypeError(name)
        return value
    if default is None and (value is None or isinstance(value, int | float)):
        return None if value is None else float(value)  # an optional number: None is "the model's"
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    if not isinstance(value, type(default)):
        raise TypeError(name)
    return value


def save_settings(store: SettingsStore, settings: GenerationSettings) -> None:
    for name, value in asdict(settings).items():
        if isinstance(value, Enum):
            value = value.value
        if name == "styles":
            value = [{**s, "kind": StyleSourceKind(s["kind"]).value} for s in value]
        if name == "regions":
            value = [
                {
                    **r,
                    "mask_kind": RegionMaskKind(r["mask_kind"]).value,
                    "reference": {**r["reference"], "kind": StyleSourceKind(r["reference"]["kind"]).value},
                }
                for r in value
            ]
        store.write(name, json.dumps(value))
