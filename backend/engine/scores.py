"""Scores that make the style/content balance visible, in the CLIP space InstantStyle itself works in.

For a result image, with the image encoder and ``text_encoder_2``'s projection (ip-adapter_sdxl's
ViT-bigG shares its space with it):

- **style**: cosine of the result's and the reference's image embeddings (several references: their
  weighted blend, before any content subtraction);
- **content**: cosine of the result's image embedding with the content description's text embedding:
  the leakage that content subtraction is meant to lower (None without a content description);
- **prompt**: cosine with the prompt's text embedding.

With an IP-Adapter whose image space is not the text encoder's (ViT-H), only the style score exists.
Where the server has a CSD checkpoint (``csd.py``: a ViT-L/14 with a head trained to match styles,
not subjects) the style score is the cosine of CSD descriptors instead, and says so (``style_metric``).
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from protocol.enums import StyleMetric

from .style_embedding import StyleEncoder, blend


@dataclass(frozen=True)
class ImageScores:
    style: float
    content: float | None
    prompt: float | None
    style_metric: StyleMetric = StyleMetric.CLIP


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float().reshape(1, -1), b.float().reshape(1, -1))[0])


class StyleDescriber(Protocol):
    """A style metric's model (``csd.CsdModel``): images in, unit style descriptors out."""

    def embed(self, images: Sequence[Image.Image]) -> torch.Tensor: ...


REFERENCE_DESCRIPTORS: weakref.WeakKeyDictionary[object, OrderedDict[str, torch.Tensor]] = (
    weakref.WeakKeyDictionary()
)
"""Each describer's descriptors of recent references (by pixel digest): an auto search scores every
cell against the same references, and a CPU-resident CSD takes a ViT-L pass for each."""
MAX_REFERENCE_DESCRIPTORS = 16


def reference_descriptor(describer: StyleDescriber, image: Image.Image) -> torch.Tensor:
    """``describer``'s descriptor of ``image``, computed once for the same pixels."""
    digest = hashlib.sha1(image.tobytes() + repr((image.size, image.mode)).encode()).hexdigest()
    known = REFERENCE_DESCRIPTORS.setdefault(describer, OrderedDict())
    if digest not in known:
        known[digest] = describer.embed([image])[0]
        while len(known) > MAX_REFERENCE_DESCRIPTORS:
            known.popitem(last=False)
    known.move_to_end(digest)
    return known[digest]


def score_images(
    encoder: StyleEncoder,
    results: Sequence[np.ndarray],
    references: Sequence[Image.Image],
    weights: Sequence[float],
    content_text: str,
    prompt: str,
    describer: StyleDescriber | None = None,
) -> list[ImageScores]:
    """The three scores of each result (uint8 RGB arrays); results are never cached (each is new).
    With a ``describer`` (CSD) the style score is its descriptors' cosine, else the CLIP one."""
    reference = blend([encoder.encode_image(image) for image in references], weights)
    csd_reference = (
        blend([reference_descriptor(describer, image) for image in references], weights)
        if describer is not None
        else None
    )
    shared_space = encoder.shared_space and encoder.text_ready  # no tower loaded just to score
    content = (
        encoder.encode_text(content_text, scoring=True) if shared_space and content_text.strip() else None
    )
    text = encoder.encode_text(prompt, scoring=True) if shared_space else None
    scores = []
    for pixels in results:
        picture = Image.fromarray(pixels)
        embedding = encoder.encode_image(picture, cache=False)
        style, metric = cosine(embedding, reference), StyleMetric.CLIP
        if describer is not None:
            style, metric = cosine(describer.embed([picture])[0], csd_reference), StyleMetric.CSD  # type: ignore[arg-type]
        scores.append(
            ImageScores(
                style=style,
                content=cosine(embedding, content) if content is not None else None,
                prompt=cosine(embedding, text) if text is not None else None,
                style_metric=metric,
            )
        )
    return scores
