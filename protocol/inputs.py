"""A job's INPUT images and the indices its ``generate`` message refers to them by.

The client sends each image as an INPUT frame numbered ``0..n-1``; the message names them by that
number (style images, init image, mask, regions' masks and references). ``InputSlots`` hands out the
numbers in the order images are added, so that the plugin and the command line number them alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

from .generate import Region, StyleImage

T = TypeVar("T")


class InputSlots(Generic[T]):
    """Images by INPUT index, numbered as they are added (any image type: the caller's own)."""

    def __init__(self) -> None:
        self.images: dict[int, T] = {}

    def add(self, image: T) -> int:
        index = len(self.images)
        self.images[index] = image
        return index

    def add_optional(self, image: T | None) -> int | None:
        return None if image is None else self.add(image)

    def styles(self, weighted: Iterable[tuple[T, float]]) -> list[StyleImage]:
        return [StyleImage(self.add(image), weight) for image, weight in weighted]

    def region(self, name: str, mask: T, weighted: Iterable[tuple[T, float]]) -> Region:
        mask_index = self.add(mask)
        return Region(mask_index, self.styles(weighted), name=name[:100])
