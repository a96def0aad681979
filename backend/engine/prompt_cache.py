"""The prompt encodings of recent jobs, so that the same prompt never runs the text encoders twice.

Live painting sends the same prompt again and again; the text encoders are then pure waste.
The key is everything the encodings depend on: both prompts, whether classifier-free guidance needs
the negative branch, and the active LoRAs that change a text encoder (with their weights).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from .request import LoraSelection


@dataclass(frozen=True)
class PromptKey:
    prompt: str
    negative_prompt: str
    guidance: bool
    text_loras: LoraSelection = ()


@dataclass(frozen=True)
class PromptEncodings:
    """What the pipelines take instead of ``prompt`` and ``negative_prompt``: SDXL's four tensors, or
    SD1.5's two (no pooled embeddings: its pipelines would swallow them silently, so none are sent)."""

    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor | None
    negative_prompt_embeds: torch.Tensor | None
    negative_pooled_prompt_embeds: torch.Tensor | None

    @classmethod
    def of(cls, encoded: tuple[torch.Tensor | None, ...]) -> PromptEncodings:
        """From ``encode_prompt``'s tuple: SDXL's (embeds, negative, pooled, negative pooled), SD1.5's
        (embeds, negative)."""
        if len(encoded) == 2:
            embeds, negative = encoded
            assert embeds is not None
            return cls(embeds, None, negative, None)
        embeds, negative, pooled, negative_pooled = encoded
        assert embeds is not None
        return cls(embeds, pooled, negative, negative_pooled)

    def as_kwargs(self) -> dict[str, torch.Tensor | None]:
        kwargs = {"prompt_embeds": self.prompt_embeds, "negative_prompt_embeds": self.negative_prompt_embeds}
        if self.pooled_prompt_embeds is not None:
            kwargs["pooled_prompt_embeds"] = self.pooled_prompt_embeds
            kwargs["negative_pooled_prompt_embeds"] = self.negative_pooled_prompt_embeds
        return kwargs


class PromptCache:
    """A least-recently-used map of prompt encodings, bounded by count (SDXL: ~0.6 MB each in fp16)."""

    def __init__(self, capacity: int = 32) -> None:
        self.capacity = capacity
        self._items: OrderedDict[PromptKey, PromptEncodings] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def encodings(self, pipeline: object, key: PromptKey) -> PromptEncodings:
        """The cached encodings for ``key``, or the pipeline's own ``encode_prompt`` run once."""
        cached = self._items.get(key)
        if cached is not None:
            self._items.move_to_end(key)
            self.hits += 1
            return cached
        self.misses += 1
        with torch.inference_mode():
            encoded = pipeline.encode_prompt(  # type: ignore[attr-defined]
                prompt=key.prompt,
                device=pipeline._execution_device,  # type: ignore[attr-defined]
                num_images_per_prompt=1,  # the pipeline repeats them for the batch
                do_classifier_free_guidance=key.guidance,
                negative_prompt=key.negative_prompt or None,
            )
        found = PromptEncodings.of(encoded)
        if self.capacity > 0:
            self._items[key] = found
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return found

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()
