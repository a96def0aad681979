"""Loading the base model (SDXL or SD1.5), the IP-Adapter and its image encoder the ways artists have them.

Three sources for the base model: a diffusers folder, a single-file
``.safetensors`` checkpoint (what most artists download), or a Hugging Face repo
id resolved through the hub cache. The IP-Adapter is a local ``.bin`` or
``.safetensors`` file or a hub path; the image encoder a folder or a hub path.
Every failure names the file and what was expected instead of surfacing a
library traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from protocol.enums import ControlKind, ModelFamily

from .prediction import Prediction

log = logging.getLogger(__name__)
T = TypeVar("T")

SDXL_REPO = "stabilityai/stable-diffusion-xl-base-1.0"
IP_ADAPTER_HUB_PATH = "h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.safetensors"
IMAGE_ENCODER_HUB_PATH = "h94/IP-Adapter/sdxl_models/image_encoder"
TAESDXL_REPO = "madebyollin/taesdxl"
VIT_H_TEXT_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
"""OpenCLIP ViT-H-14's text tower: the space of the ViT-H adapters' image encoder (content_text.py)."""
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
SDXL_LABEL = "SDXL base 1.0 + ip-adapter_sdxl"


class ModelLoadError(RuntimeError):
    """A model file is missing, corrupt or of the wrong kind."""

    def __init__(self, path: str | os.PathLike[str], expected: str, cause: str = "") -> None:
        self.path = str(path)
        self.expected = expected
        message = f"cannot load {self.path}: expected {expected}"
        super().__init__(f"{message} ({cause})" if cause else message)


@dataclass(frozen=True)
class ModelSpec:
    """Where each model comes from. Local paths and hub ids are both plain strings."""

    base: str = SDXL_REPO
    """A diffusers folder, a single-file checkpoint, or a hub repo id."""
    ip_adapter: str = IP_ADAPTER_HUB_PATH
    """A local ``.bin``/``.safetensors`` file, or ``owner/repo/sub/folders/file`` on the hub."""
    image_encoder: str = IMAGE_ENCODER_HUB_PATH
    """A local folder, or ``owner/repo/subfolder`` on the hub."""
    controlnet: str | None = None
    """A canny ControlNet (folder or repo id, e.g. ``diffusers/controlnet-canny-sdxl-1.0``; ``auto``: the
    family's), optional: it enables the ``control`` mode (restyle a picture while keeping its lines)."""
    tile_controlnet: str | None = None
    """A Tile ControlNet (folder or repo id, e.g. ``xinsir/controlnet-tile-sdxl-1.0``; ``auto``: the
    family's), optional: ``control tile`` jobs keep the picture itself and change its style."""
    csd: str = "auto"
    """The style metric's checkpoint (``style_metric.py``): ``auto`` (the hub copy when cached), ``none``
    (CLIP), or a CSD file or ``owner/repo/file``."""
    csd_default: str | None = "tomg-group-umd/CSD-ViT-L/pytorch_model.bin"
    """What ``auto`` uses when it is present (the tiny test model names none: its scores stay CLIP's)."""
    vae: str | None = None
    """A VAE to use instead of the base model's own: a folder, a ``.safetensors`` file or a repo id
    (``madebyollin/sdxl-vae-fp16-fix`` decodes in fp16 without NaN and needs no fp32 upcast)."""
    base_config: str | None = None
    """For a single-file base: a diffusers folder or repo id holding the component configs."""
    loras: tuple[LoraSource, ...] = ()
    """LoRAs to load at start; jobs choose among them (``loras.py``)."""
    prediction: Prediction = Prediction.AUTO
    """What the UNet predicts (``prediction.py``); auto: a single file's marker keys say."""
    speed_presets: tuple[str, ...] = ()
    """Few-step presets to offer (``speed_presets.py``); their LoRAs load with the others."""
    content_text_encoder: str = "auto"
    """The text tower content subtraction uses when SDXL's ``text_encoder_2`` does not share the image
    encoder's space (ViT-H adapters): ``auto``, ``none``, or a folder or repo id (``content_text.py``)."""
    content_text_encoder_default: str = VIT_H_TEXT_REPO
    """What ``auto`` loads (the tiny test model names its own tiny one)."""
    preview_vae: str = "auto"
    """The tiny autoencoder for previews: ``auto``, ``none``, or a folder, repo id or file
    (``preview_vae.py``)."""
    preview_vae_default: str | None = TAESDXL_REPO
    """What ``auto`` tries (the tiny test model names its own tiny one)."""
    cache_dir: str | None = None
    local_files_only: bool = False
    label: str = SDXL_LABEL
    is_test_model: bool = False
    family: ModelFamily | None = None
    """SDXL or SD1.5; None: read from the checkpoint (``family_detect.resolve_spec`` sets it, with the
    family's default IP-Adapter, image encoder and preview autoencoder where the spec has SDXL's)."""

    def controlnet_for(self, kind: ControlKind) -> str | None:
        """Where the ControlNet of a kind of control comes from (None: not asked for)."""
        return self.tile_controlnet if kind is ControlKind.TILE else self.controlnet

    @property
    def controls(self) -> list[ControlKind]:
        """The kinds of control this spec loads a ControlNet for (``features.controls``)."""
        return [kind for kind in ControlKind if self.controlnet_for(kind)]


@dataclass(frozen=True)
class HubFile:
    """A path inside a hub repo: ``owner/repo`` plus the rest."""

    repo_id: str
    subpath: str

    @classmethod
    def parse(cls, text: str) -> HubFile:
        parts = text.strip("/").split("/")
        if len(parts) < 2:
            raise ModelLoadError(text, "a local path or a hub path of the form owner/repo[/sub/path]")
        return cls("/".join(parts[:2]), "/".join(parts[2:]))


def pick_device(preference: str | None = None) -> torch.device:
    """``cuda`` if present, then Apple ``mps``, else ``cpu``; an explicit choice wins."""
    if preference and preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
"""The precisions ``--dtype`` names (besides ``auto``)."""


def pick_dtype(device: torch.device, preference: str | None = None) -> torch.dtype:
    """Half precision on accelerators, fp32 on the CPU; an explicit choice wins.

    bf16 where the GPU computes it natively (NVIDIA Ampere and newer): fp16's range is what forces
    SDXL's VAE to decode in fp32 (+~1.9 GiB at 1024²) and what overflows to NaN on some cards; bf16 has
    fp32's range at fp16's size. fp16 on older CUDA cards and on Apple's MPS."""
    if preference and preference != "auto":
        if preference not in DTYPES:
            raise ValueError(f"unknown dtype {preference!r}: expected one of {', '.join(DTYPES)}")
        return DTYPES[preference]
    if device.type == "cpu":
        return torch.float32
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0):
        return torch.bfloat16  # that card's own compute capability, not the current device's
    return torch.float16


def check_safetensors(path: Path, what: str) -> None:
    """Read a ``.safetensors`` header and check the file holds every byte it promises."""
    from safetensors import safe_open

    if not path.is_file():
        raise ModelLoadError(path, what, "file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception as error:  # safetensors raises its own error types, or OSError
        raise ModelLoadError(path, what, f"corrupt or truncated safetensors file: {error}") from error


def check_diffusers_folder(folder: Path) -> None:
    """A diffusers pipeline folder: ``model_index.json`` plus intact weights."""
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(
            folder, "a diffusers pipeline folder with model_index.json", "model_index.json missing"
        )
    for weights in sorted(folder.rglob("*.safetensors")):
        check_safetensors(weights, f"{weights.parent.name} weights in safetensors format")


def check_model_folder(source: str, what: str) -> Path:
    """A local model folder (one component): its ``config.json`` and intact safetensors weights."""
    folder = Path(source).expanduser()
    if not (folder / "config.json").is_file():
        raise ModelLoadError(folder, f"a {what} folder with config.json", "config.json missing")
    for weights in folder.glob("*.safetensors"):
        check_safetensors(weights, f"{what} weights")
    return folder


@contextlib.contextmanager
def load_errors(source: str, expected: str) -> Iterator[None]:
    """Turn whatever a library raises while loading ``source`` into a ``ModelLoadError``."""
    try:
        yield
    except ModelLoadError:
        raise
    except Exception as error:  # diffusers, transformers, huggingface_hub and safetensors raise many types
        raise ModelLoadError(source, expected, str(error)) from error


def is_local(text: str) -> bool:
    """A path on disk (even a missing one) rather than a hub id like ``owner/repo``."""
    path = Path(text).expanduser()
    return path.exists() or path.is_absolute() or text.startswith((".", "~"))


def variant_missing(error: Exception) -> bool:
    """Whether loading failed only because the repo has no fp16 files (not the network, not a bad file).

    diffusers says so with a ValueError for pipelines ("no such modeling files are available") and an
    OSError naming the ``.fp16.`` file for models.
    """
    text = str(error)
    if isinstance(error, ValueError):
        return "variant" in text and "no such modeling files" in text
    return isinstance(error, OSError) and "does not appear to have a file named" in text and ".fp16." in text


def from_hub_preferring_fp16(load: Callable[..., T], repo: str, dtype: torch.dtype, **kwargs: object) -> T:
    """``load(repo, ...)``, with the repo's fp16 files when loading in fp16 (half the download).

    Falls back to the full-precision files only when the fp16 ones do not exist: a network error
    during the fp16 download must not turn into a silent download twice as large.
    """
    if dtype == torch.float16:
        try:
            return load(repo, dtype=dtype, variant="fp16", **kwargs)
        except (OSError, ValueError) as error:
            if not variant_missing(error):
                raise
            log.info("no fp16 files in %s; loading the full-precision weights", repo)
    return load(repo, dtype=dtype, **kwargs)


def load_image_encoder(spec: ModelSpec, dtype: torch.dtype) -> torch.nn.Module:
    """The CLIP vision tower (with projection) whose space the IP-Adapter was trained in."""
    from transformers import CLIPVisionModelWithProjection

    with load_errors(spec.image_encoder, "a CLIP image encoder (CLIPVisionModelWithProjection)"):
        if is_local(spec.image_encoder):
            folder = check_model_folder(spec.image_encoder, "CLIP image encoder")
            return CLIPVisionModelWithProjection.from_pretrained(str(folder), dtype=dtype)
        hub = HubFile.parse(spec.image_encoder)
        return CLIPVisionModelWithProjection.from_pretrained(
            hub.repo_id,
            subfolder=hub.subpath,
            dtype=dtype,
            cache_dir=spec.cache_dir,
            local_files_only=spec.local_files_only,
        )


def load_ip_adapter_weights(pipe: object, spec: ModelSpec) -> None:
    """diffusers' own ``load_ip_adapter``, with the image encoder provided separately."""
    source = spec.ip_adapter
    with load_errors(source, "IP-Adapter weights (image_proj + ip_adapter) for this model"):
        if is_local(source):
            path = Path(source).expanduser()
            if path.suffix not in (".bin", ".safetensors"):
                raise ModelLoadError(path, "an IP-Adapter weight file (.bin or .safetensors)")
            if path.suffix == ".safetensors":
                check_safetensors(path, "IP-Adapter weights (image_proj.* and ip_adapter.* tensors)")
            elif not path.is_file():
                raise ModelLoadError(path, "IP-Adapter weights (.bin)", "file not found")
            pipe.load_ip_adapter(  # type: ignore[attr-defined]
                str(path.parent), subfolder="", weight_name=path.name, image_encoder_folder=None
            )
            return
        hub = HubFile.parse(source)
        subfolder, _, weight_name = hub.subpath.rpartition("/")
        pipe.load_ip_adapter(  # type: ignore[attr-defined]
            hub.repo_id,
            subfolder=subfolder,
            weight_name=weight_name,
            image_encoder_folder=None,
            cache_dir=spec.cache_dir,
            local_files_only=spec.local_files_only,
        )


def load_controlnet(
    spec: ModelSpec, dtype: torch.dtype, kind: ControlKind = ControlKind.EDGES
) -> torch.nn.Module | None:
    """The optional ControlNet of a kind of control (canny, or tile), from a folder or the hub."""
    source = spec.controlnet_for(kind)
    if not source:
        return None
    from diffusers import ControlNetModel

    what = "tile" if kind is ControlKind.TILE else "canny"
    with load_errors(source, f"a ControlNet ({what}) for this model's family, diffusers format"):
        if is_local(source):
            folder = check_model_folder(source, "ControlNet")
            return ControlNetModel.from_pretrained(str(folder), dtype=dtype)
        return from_hub_preferring_fp16(
            ControlNetModel.from_pretrained,
            source,
            dtype,
            cache_dir=spec.cache_dir,
            local_files_only=spec.local_files_only,
        )


def load_vae(spec: ModelSpec, dtype: torch.dtype) -> torch.nn.Module | None:
    """The separate VAE, if one is given: a diffusers folder, a single ``.safetensors`` file, or the hub."""
    if not spec.vae:
        return None
    from diffusers import AutoencoderKL

    with load_errors(spec.vae, "a VAE (AutoencoderKL): folder, .safetensors file or repo id"):
        if is_local(spec.vae):
            path = Path(spec.vae).expanduser()
            if path.suffix == ".safetensors":
                check_safetensors(path, "VAE weights")
                return AutoencoderKL.from_single_file(str(path), dtype=dtype)
            return AutoencoderKL.from_pretrained(str(check_model_folder(spec.vae, "VAE")), dtype=dtype)
        return AutoencoderKL.from_pretrained(
            spec.vae, dtype=dtype, cache_dir=spec.cache_dir, local_files_only=spec.local_files_only
        )


def quiet_libraries() -> None:
    """No download/loading progress bars or tokenizer-length chatter in a server's log."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


LORA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""What a LoRA may be called (the adapter name diffusers keys it by; shown to artists)."""


@dataclass(frozen=True)
class LoraSource:
    """Where one LoRA comes from: a local ``.safetensors`` file or ``owner/repo/path/file.safetensors``
    on the hub. ``name`` is how jobs and artists refer to it."""

    name: str
    location: str

    @classmethod
    def parse(cls, text: str) -> LoraSource:
        """``name=location`` or just ``location`` (named after the file)."""
        name, sep, location = text.partition("=")
        if not sep:
            name, location = Path(text).stem, text
        name, location = name.strip(), location.strip()
        if not LORA_NAME.match(name):
            raise ValueError(
                f"LoRA name {name!r} must be 1-64 letters, digits, '.', '_' or '-' "
                "(e.g. --lora ink=ink.safetensors)"
            )
        if not location:
            raise ValueError(f"LoRA {name!r} needs a file: --lora {name}=path/to/file.safetensors")
        return cls(name, location)

    @property
    def local(self) -> bool:
        return is_local(self.location)

    @property
    def hub_file(self) -> HubFile:
        return HubFile.parse(self.location)

    def resolve(self, cache_dir: str | None, local_files_only: bool) -> Path:
        """The file on disk (downloaded from the hub first when it is a hub path)."""
        if self.local:
            path = Path(self.location).expanduser()
            check_safetensors(path, "a LoRA .safetensors file")
            return path
        from huggingface_hub import hf_hub_download

        remote = self.hub_file
        with load_errors(self.location, "a LoRA file on the Hugging Face hub (owner/repo/file.safetensors)"):
            return Path(
                hf_hub_download(
                    remote.repo_id, remote.subpath, cache_dir=cache_dir, local_files_only=local_files_only
                )
            )
