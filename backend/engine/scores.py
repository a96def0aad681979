"""Scores that make the style/content balance visible, in the CLIP space InstantStyle itself works in.

For a result image, with the image encoder and ``text_encoder_2``'s projection (ip-adapter_sdxl's
ViT-bigG shares its space with it):

- **style**: cosine of the result's and the reference's image embeddings (several references: their
  weighted blend, before any content subtraction);
- **content**: cosine of the result's image embedding with the content description's text embedding:
  the leakage that content subtraction is meant to lower (None without a content description);
- **prompt**: cosine with the prompt's text embedding.

With an IP-Adapter whose image space is not the text encoder's (ViT-H), only the style score exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .style_embedding import StyleEncoder, blend


@dataclass(frozen=True)
class ImageScores:
    style: float
    content: float | None
    prompt: float | None


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float().reshape(1, -1), b.float().reshape(1, -1))[0])


def score_images(
    encoder: StyleEncoder,
    results: Sequence[np.ndarray],
    references: Sequence[Image.Image],
    weights: Sequence[float],
    content_text: str,
    prompt: str,
) -> list[ImageScores]:
    """The three scores of each result (uint8 RGB arrays); results are never cached (each is new)."""
    reference = blend([encoder.encode_image(image) for image in references], weights)
    shared_space = encoder.shared_space and encoder.text_ready  # no tower loaded just to score
    content = (
        encoder.encode_text(content_text, scoring=True) if shared_space and content_text.strip() else None
    )
    text = encoder.encode_text(prompt, scoring=True) if shared_space else None
    scores = []
    for pixels in results:
        embedding = encoder.encode_image(Image.fromarray(pixels), cache=False)
        scores.append(
            ImageScores(
                style=cosine(embedding, reference),
                content=cosine(embedding, content) if content is not None else None,
                prompt=cosine(embedding, text) if text is not None else None,
            )
        )
    return scores
