"""The text tower content subtraction needs when SDXL's own text encoders do not share the image space.

``ip-adapter_sdxl`` reads ViT-bigG embeddings, whose space SDXL's ``text_encoder_2`` shares (1280-d).
The ViT-H adapters (``ip-adapter_sdxl_vit-h``, SD1.5's ``ip-adapter_sd15``) read OpenCLIP ViT-H-14's
image tower (1024-d), whose text side is ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``'s: the official
InstantStyle SD1.5 script subtracts that tower's ``text_embeds`` times the content scale. The tower is
loaded on the first job that asks for a content text: its repo holds the whole CLIP model (a ~3.9 GB
download), of which transformers reads the text half (354 M parameters, 0.66 GiB in fp16).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .downloads import DownloadProgress, RemoteFile, fetch, hub_sizes
from .loading import ModelLoadError, ModelSpec, is_local, load_errors

log = logging.getLogger(__name__)
MIN_VOCABULARY = 256
"""Fewer tokens than bytes: no real tokenizer (CLIP's has 49408, the tiny one 514)."""


class ContentTextUnavailable(ValueError):
    """The text tower for content subtraction could not be loaded (the job can run without it)."""


@dataclass
class TextTower:
    """A CLIP text encoder with projection and its tokenizer."""

    encoder: torch.nn.Module
    tokenizer: object

    @property
    def projection_dim(self) -> int:
        return int(self.encoder.config.projection_dim)  # type: ignore[union-attr]


def tower_source(spec: ModelSpec) -> str | None:
    """Where the spec's separate text tower comes from; None: none (``--content-text-encoder none``)."""
    choice = spec.content_text_encoder.strip()
    if choice.lower() == "none":
        return None
    return spec.content_text_encoder_default if choice.lower() == "auto" else choice


def load_text_tower(spec: ModelSpec, source: str, dtype: torch.dtype) -> TextTower:
    """A folder or repo with a ``CLIPModel`` (laion's layout: both towers, the projection size at the top
    of its config) or a ``CLIPTextModelWithProjection`` alone, and its tokenizer."""
    from transformers import AutoConfig, CLIPConfig, CLIPTextModelWithProjection, CLIPTokenizer

    local = is_local(source)
    path = str(Path(source).expanduser()) if local else source
    hub = {} if local else {"cache_dir": spec.cache_dir, "local_files_only": spec.local_files_only}
    with load_errors(
        source, "a CLIP text tower with projection (a CLIPModel or CLIPTextModelWithProjection)"
    ):
        if local and not Path(path).is_dir():
            raise ModelLoadError(source, "a folder with a CLIP model's config.json", "not found")
        config = AutoConfig.from_pretrained(path, **hub)
        if isinstance(config, CLIPConfig):  # the text half of a whole CLIP model
            text_config = config.text_config
            text_config.projection_dim = config.projection_dim
        else:
            text_config = config
        encoder = CLIPTextModelWithProjection.from_pretrained(path, config=text_config, dtype=dtype, **hub)
        tokenizer = CLIPTokenizer.from_pretrained(path, **hub)
        if len(tokenizer) < MIN_VOCABULARY:  # transformers makes an empty one where the files are missing
            raise ModelLoadError(
                source,
                "a CLIP tokenizer beside the text tower (tokenizer.json, or vocab.json and merges.txt)",
                f"its tokenizer knows {len(tokenizer)} tokens",
            )
        # A tokenizer config without model_max_length says 1e30: pad to the tower's positions instead.
        tokenizer.model_max_length = min(tokenizer.model_max_length, text_config.max_position_embeddings)
    encoder.requires_grad_(False)
    return TextTower(encoder.eval(), tokenizer)


class LazyTextTower:
    """Loads the tower on first use; a load that failed is said in one line and tried again by the next
    job that asks (the network or the file may be back). A tower of another space is never kept."""

    def __init__(
        self, source: str, load: Callable[[], TextTower], rest_on: torch.device, dimension: int
    ) -> None:
        self.source = source
        self._load = load
        self.rest_on = rest_on
        """Where the tower's weights rest between jobs: where SDXL's text encoders rest in the tier."""
        self.dimension = dimension
        """The image encoder's embedding size: the tower must project into that space."""
        self._tower: TextTower | None = None
        self._refused = ""
        """Why a tower that loaded was not kept (another space): said again, not loaded again."""

    @property
    def loaded(self) -> bool:
        return self._tower is not None

    def get(self) -> TextTower:
        if self._refused:
            raise ContentTextUnavailable(self._refused)
        if self._tower is None:
            log.info("loading the content text tower %s", self.source)
            try:
                tower = self._load()
            except ModelLoadError as error:
                raise ContentTextUnavailable(
                    "subtracting content with this IP-Adapter needs its CLIP text tower, which could not be "
                    f"loaded ({one_line(str(error))}); leave 'subtract content' empty, or start the backend "
                    "with --content-text-encoder FOLDER"
                ) from error
            if tower.projection_dim != self.dimension:
                self._refused = (
                    f"cannot subtract content: the image encoder gives {self.dimension}-d embeddings but the "
                    f"text tower {self.source} {tower.projection_dim}-d ones; give --content-text-encoder "
                    "the CLIP model the image encoder comes from"
                )
                raise ContentTextUnavailable(self._refused)
            tower.encoder.to(self.rest_on)
            self._tower = tower
        return self._tower


def one_line(text: str) -> str:
    """A library's multi-line message as one line (the plugin shows an error's first line only)."""
    return " ".join(text.split())


TOWER_FILES = frozenset(
    {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "special_tokens_map.json",
    }
)
"""What loading the text half reads from a CLIP repo like laion's (not its OpenCLIP or other copies of
the weights, each as large)."""
CACHED_MEANS_DONE = ("config.json", "model.safetensors")


def planned_tower(spec: ModelSpec) -> str | None:
    """The hub repo of the text tower a spec's first content job loads, for the download checklist
    (``models --plan``), known before any weight is read: a plain adapter on ViT-H (its config on disk
    says so, or h94's layout does: ``models/image_encoder`` is ViT-H's folder), or any plain adapter of
    a family without a text tower in the image encoder's space (SD1.5)."""
    from .family import traits
    from .image_encoders import ImageEncoderKind, image_encoder_kind

    source = tower_source(spec)
    if source is None or is_local(source) or "plus" in Path(spec.ip_adapter).name.lower():
        return None
    folder = spec.image_encoder.rstrip("/")
    h94_vit_h = folder.endswith("models/image_encoder") and not folder.endswith("sdxl_models/image_encoder")
    vit_h = h94_vit_h or image_encoder_kind(spec) is ImageEncoderKind.VIT_H
    no_shared_tower = spec.family is not None and traits(spec.family).shared_text_tower is None
    return source if vit_h or no_shared_tower else None


def tower_files(source: str, sizes: dict[str, int]) -> list[RemoteFile]:
    """The files of a hub tower that loading it reads (its text half: the repo's other copies are not)."""
    wanted = TOWER_FILES if "model.safetensors" in sizes else TOWER_FILES | {"pytorch_model.bin"}
    return [RemoteFile(source, path, size) for path, size in sorted(sizes.items()) if path in wanted]


def prefetch_tower(spec: ModelSpec, source: str, report: Callable[[DownloadProgress], None]) -> str:
    """Download a hub tower's files at start, with the model's progress reports (loading waits for the
    first job that asks). Returns "" when done or nothing to do, else one line saying why not: content
    subtraction is optional, and the job that asks tries again."""
    from huggingface_hub import constants, try_to_load_from_cache

    if is_local(source) or spec.local_files_only or constants.HF_HUB_OFFLINE:
        return ""
    cached = [try_to_load_from_cache(source, name, cache_dir=spec.cache_dir) for name in CACHED_MEANS_DONE]
    if all(isinstance(path, str) for path in cached):
        return ""  # no network at start once it is there (an offline machine would wait for its timeout)
    try:
        sizes = hub_sizes(source, timeout=constants.HF_HUB_ETAG_TIMEOUT)
        fetch(tower_files(source, sizes), report, spec.cache_dir)
    except Exception as error:  # huggingface_hub raises many types; the model itself loaded
        log.warning("content text tower %s: %s", source, error)
        return one_line(f"content subtraction: could not download {source} ({error})")
    return ""


def content_tower_for(
    spec: ModelSpec,
    image_encoder: torch.nn.Module,
    shared: torch.nn.Module | None,
    reference: torch.nn.Module,
) -> LazyTextTower | None:
    """The separate tower, when the image encoder's space is not ``shared``'s (SDXL's text_encoder_2
    shares ViT-bigG's; SD1.5 has no such tower) and the spec does not say ``none``; it loads in
    ``reference``'s (a text encoder's) dtype and rests where it does."""
    if shared is not None and image_encoder.config.projection_dim == shared.config.projection_dim:  # type: ignore[union-attr]
        return None
    source = tower_source(spec)
    if source is None:
        return None
    weight = next(reference.parameters())
    dimension = image_encoder.config.projection_dim  # type: ignore[union-attr]
    return LazyTextTower(
        source, lambda: load_text_tower(spec, source, weight.dtype), weight.device, dimension
    )
