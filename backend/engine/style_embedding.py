"""Style embeddings: CLIP image embeddings, blended, minus the reference's content.

InstantStyle's second idea: CLIP's image and text embeddings share one space,
so ``image_embeds - scale * text_embeds("a cat")`` removes the content "a cat"
from a reference while keeping its style. The text tower must be the one that
shares the image encoder's space (for ip-adapter_sdxl with ViT-bigG that is
SDXL's ``text_encoder_2`` projection, 1280-d). Both encodings are cached by
content so that a style image or a content text is never encoded twice.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from protocol.enums import ImageAdapter

from .content_text import LazyTextTower
from .loras import without_lora
from .memory import visiting


class EmbeddingSpaceMismatch(ValueError):
    """The image encoder and text encoder project into spaces of different sizes."""


def subtract_content(image_embeds: torch.Tensor, text_embeds: torch.Tensor, scale: float) -> torch.Tensor:
    """``image_embeds - scale * text_embeds``; no normalisation on either side, as in the paper."""
    if image_embeds.shape[-1] != text_embeds.shape[-1]:
        raise EmbeddingSpaceMismatch(
            f"cannot subtract content: the image encoder projects to {image_embeds.shape[-1]} dims but "
            f"the text encoder to {text_embeds.shape[-1]}; use the text tower that matches the image "
            "encoder (SDXL's text_encoder_2 for the ViT-bigG ip-adapter_sdxl)"
        )
    return image_embeds - scale * text_embeds.to(image_embeds.dtype)


def blend(embeds: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Weighted mean of several (1, D) style embeddings, or (1, T, H) patch features of a plus adapter
    (position by position: ComfyUI's "average"; its default concatenates them); weights need not sum
    to one."""
    if not embeds or len(embeds) != len(weights):
        raise ValueError("blend needs one weight per embedding and at least one embedding")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("style reference weights must add up to more than 0")
    stacked = torch.stack([e * (w / total) for e, w in zip(embeds, weights, strict=True)])
    return stacked.sum(dim=0)


def ip_adapter_embeds(
    style: torch.Tensor, classifier_free_guidance: bool, negative: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """The ``ip_adapter_image_embeds`` layout diffusers expects for one adapter.

    ``style`` is (N, D) for N images (regional styles, each with its own mask), or (N, T, H) patch
    features for a plus adapter. With CFG the unconditional features come first: zeros for a plain
    adapter, ``negative`` (1, T, H) (an all-zero input's features) for a plus one, then the style:
    ``[2, N, ...]``; without CFG ``[1, N, ...]``. The pipeline repeats it for the batch itself.
    """
    positive = style.unsqueeze(0)
    if not classifier_free_guidance:
        return [positive]
    unconditional = (
        torch.zeros_like(positive) if negative is None else negative.unsqueeze(0).expand_as(positive)
    )
    return [torch.cat([unconditional.to(positive), positive])]


def image_key(image: Image.Image) -> str:
    """A content hash of the pixels (and their layout), the embedding cache's key."""
    digest = hashlib.sha256()
    digest.update(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class LRUCache:
    """A small least-recently-used map of tensors."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()

    def get(self, key: str) -> torch.Tensor | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: torch.Tensor) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()


@dataclass
class EncodeCounts:
    """How many times each encoder actually ran (the cache's effect, for tests and logs)."""

    images: int = 0
    texts: int = 0
    scored_images: int = 0
    """Results encoded to score them (``scores.py``), never cached."""
    scored_texts: int = 0
    """Prompts encoded for the prompt-alignment score."""


class StyleEncoder:
    """Encodes style images and content texts into the IP-Adapter's space, with caching."""

    def __init__(
        self,
        image_encoder: torch.nn.Module,
        image_processor: object,
        text_encoder: torch.nn.Module | None,
        tokenizer: object | None,
        cache_size: int = 64,
        execution_device: torch.device | None = None,
        features: ImageAdapter = ImageAdapter.PLAIN,
        content_tower: LazyTextTower | None = None,
    ) -> None:
        self.features = features
        """What the adapter reads: the pooled embedding (plain) or the patch features (plus)."""
        self.content_tower = content_tower
        """The image encoder's own CLIP text tower, loaded on first use, when ``text_encoder`` (SDXL's)
        does not share its space (ViT-H adapters; SD1.5 has no ``text_encoder`` of that kind: None);
        its size is checked once it is loaded."""
        self.image_dim = image_encoder.config.projection_dim  # type: ignore[union-attr]
        self.text_dim = (
            self.image_dim
            if content_tower is not None
            else 0
            if text_encoder is None
            else text_encoder.config.projection_dim  # type: ignore[union-attr]
        )
        """0: no text tower at all (content subtraction turned off with ``none`` on SD1.5)."""
        self.image_encoder = image_encoder
        self.execution_device = execution_device
        """Where the encoders run; None: where their weights are. The image encoder may rest elsewhere."""
        self.image_processor = image_processor
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.image_cache = LRUCache(cache_size)
        self.text_cache = LRUCache(cache_size)
        self.counts = EncodeCounts()

    @torch.inference_mode()
    def encode_image(self, image: Image.Image, cache: bool = True) -> torch.Tensor:
        """The projected CLIP image embedding, shape (1, D); ``cache=False`` for one-off images (results
        being scored), which would only push references out of the cache."""
        key = image_key(image) if cache else ""
        cached = self.image_cache.get(key) if cache else None
        if cached is not None:
            return cached
        embeds = self._run_image_encoder(self._pixels(image)).image_embeds
        if cache:
            self.counts.images += 1
            self.image_cache.put(key, embeds)
        else:
            self.counts.scored_images += 1
        return embeds

    @torch.inference_mode()
    def encode_patches(self, image: Image.Image) -> torch.Tensor:
        """What a plus adapter reads: the penultimate layer's hidden states, (1, patches + 1, H), as the
        official IP-Adapter Plus and diffusers take them."""
        key = image_key(image)
        cached = self.image_cache.get("patches:" + key)
        if cached is None:
            output = self._run_image_encoder(self._pixels(image), hidden=True)
            cached = output.hidden_states[-2]  # type: ignore[attr-defined]
            self.counts.images += 1
            self.image_cache.put("patches:" + key, cached)
            self.image_cache.put(key, output.image_embeds)  # type: ignore[attr-defined]  # scores: no 2nd pass
        return cached

    @torch.inference_mode()
    def unconditional_patches(self) -> torch.Tensor:
        """A plus adapter's "no image": the features of an all-zero input (after the processor's
        normalisation), as diffusers and the official code make them; encoded once."""
        cached = self.image_cache.get("patches:unconditional")
        if cached is None:
            size = self.image_encoder.config.image_size  # type: ignore[union-attr]
            zeros = torch.zeros(1, 3, size, size)
            cached = self._run_image_encoder(zeros, hidden=True).hidden_states[-2]
            self.image_cache.put("patches:unconditional", cached)
        return cached

    def reference_features(self, image: Image.Image) -> torch.Tensor:
        """One style image as the loaded adapter reads it."""
        return self.encode_patches(image) if self.features is ImageAdapter.PLUS else self.encode_image(image)

    def negative_features(self) -> torch.Tensor | None:
        """The unconditional features for CFG: None (zeros) for a plain adapter."""
        return self.unconditional_patches() if self.features is ImageAdapter.PLUS else None

    def _pixels(self, image: Image.Image) -> torch.Tensor:
        return self.image_processor(images=image.convert("RGB"), return_tensors="pt").pixel_values  # type: ignore[operator]

    def _run_image_encoder(self, pixels: torch.Tensor, hidden: bool = False) -> object:
        resting, dtype = _placement(self.image_encoder)
        device = self.execution_device or resting
        with visiting(self.image_encoder, device):
            return self.image_encoder(pixels.to(device=device, dtype=dtype), output_hidden_states=hidden)

    @torch.inference_mode()
    def encode_text(self, text: str, scoring: bool = False) -> torch.Tensor:
        """The projected (pooled) CLIP text embedding, shape (1, D) (``scoring``: counted apart)."""
        cached = self.text_cache.get(text)
        if cached is not None:
            return cached
        encoder, tokenizer = self._text_tower()
        device = self.execution_device or _placement(encoder)[0]
        tokens = tokenizer(  # type: ignore[operator]
            text,
            padding="max_length",
            max_length=tokenizer.model_max_length,  # type: ignore[attr-defined]
            truncation=True,
            return_tensors="pt",
        )
        if self.content_tower is not None:  # it rests where SDXL's text encoders rest in the tier
            with visiting(encoder, device):
                embeds = encoder(tokens.input_ids.to(device)).text_embeds
        else:
            with without_lora(encoder):
                embeds = encoder(tokens.input_ids.to(device)).text_embeds
        if scoring:
            self.counts.scored_texts += 1
        else:
            self.counts.texts += 1
        self.text_cache.put(text, embeds)
        return embeds

    def _text_tower(self) -> tuple[torch.nn.Module, object]:
        """SDXL's text_encoder_2 and its tokenizer, or the image encoder's own text tower (loaded now if
        it was not: ``ContentTextUnavailable`` in one line when it cannot be)."""
        if self.content_tower is None:
            assert self.text_encoder is not None, "no text tower: check shared_space first"
            return self.text_encoder, self.tokenizer
        tower = self.content_tower.get()
        return tower.encoder, tower.tokenizer

    @property
    def text_ready(self) -> bool:
        """Whether texts can be encoded without loading a model first (scores only use what is loaded)."""
        return self.content_tower is None or self.content_tower.loaded

    @property
    def shared_space(self) -> bool:
        """Whether image and text embeddings share one space (ViT-bigG's with SDXL's text_encoder_2):
        what the scores compare in."""
        return self.image_dim == self.text_dim

    @property
    def content_subtraction(self) -> bool:
        """Whether a content text can be subtracted: a shared space and an adapter reading the pooled
        embedding (a plus adapter reads patch features, which have no text counterpart)."""
        return self.shared_space and self.features is ImageAdapter.PLAIN

    def require_content_subtraction(self) -> None:
        if self.features is ImageAdapter.PLUS:
            raise EmbeddingSpaceMismatch(
                "content subtraction is not available with a 'plus' IP-Adapter: it reads the image's patch "
                "features, which have no text counterpart; leave 'subtract content' empty, or run the "
                "backend with a plain adapter (ip-adapter_sdxl, ip-adapter_sd15)"
            )
        if not self.shared_space:
            raise EmbeddingSpaceMismatch(
                f"content subtraction is not available with this IP-Adapter: its image encoder gives "
                f"{self.image_dim}-d embeddings and "
                + (
                    f"the model's text encoder {self.text_dim}-d ones (two spaces); "
                    if self.text_dim
                    else "the model has no text tower in that space; "
                )
                + "leave 'subtract content' empty, or let the backend load the image encoder's own "
                "text tower (--content-text-encoder auto)"
            )

    def style_embedding(
        self,
        images: Sequence[Image.Image],
        weights: Sequence[float],
        content_text: str = "",
        content_scale: float = 0.0,
    ) -> torch.Tensor:
        """Blend the references, then subtract the content text: the (1, D) style embedding (a plus
        adapter's: the blended (1, T, H) patch features)."""
        if content_text.strip() and content_scale != 0.0:
            self.require_content_subtraction()
        style = blend([self.reference_features(image) for image in images], weights)
        if content_text.strip() and content_scale != 0.0:
            style = subtract_content(style, self.encode_text(content_text), content_scale)
        return style


def _placement(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(module.parameters())
    return parameter.device, parameter.dtype
