"""Live mode in Krita: watch one layer (and the selection), keep one temporary layer of results.

Rules kept here: the watched layer is only ever read; the "InstantStyle live" layer is ours alone and
is removed when live mode stops, its document closes or the backend is lost; "Apply" copies it into a
new, permanent layer. The change check hashes the layer's bytes (in C: ``hashlib``), never a Python
loop over pixels.
"""

from __future__ import annotations

import hashlib

from krita import Krita  # type: ignore[import-not-found]

from .canvas import find_node, target_area, to_bgra, write_bgra
from .jobs import Job, Target

LIVE_LAYER_NAME = "InstantStyle live"


def signature(document, node) -> bytes:
    """A digest of what a live job would read: the layer's pixels in the target area, and the selection."""
    area = target_area(document)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{area.x},{area.y},{area.width},{area.height}".encode())
    digest.update(bytes(node.pixelData(area.x, area.y, area.width, area.height)))
    selection = document.selection()
    if selection is not None and selection.width() > 0:
        digest.update(bytes(selection.pixelData(area.x, area.y, area.width, area.height)))
    return digest.digest()


class LiveLayer:
    """The live mode of one document: the watched layer and the layer that shows the results."""

    def __init__(self, document, source) -> None:
        self.document = document
        self.source_id: str = source.uniqueId().toString()
        self.source_name: str = source.name()
        self._layer_id = ""
        self._shown: Target | None = None
        self.shown_job: Job | None = None
        """The live job whose result the layer holds (what Apply copies)."""

    @property
    def open(self) -> bool:
        return self.document in Krita.instance().documents()

    def source(self):
        """The watched layer, or None once it is gone (deleted, or its document closed)."""
        return find_node(self.document, self.source_id) if self.open else None

    def show(self, job: Job) -> None:
        """Put a live job's result into the live layer (made above the watched layer on first use)."""
        if not self.open or not job.images:
            return
        target = job.target
        node = find_node(self.document, self._layer_id)
        if node is not None and self._shown is not None and self._shown != target:
            node.remove()  # the selection moved: start over rather than leave the old area behind
            node = None
        if node is None:
            node = self.document.createNode(LIVE_LAYER_NAME, "paintlayer")
            source = self.source()
            parent = source.parentNode() if source is not None else self.document.rootNode()
            parent.addChildNode(node, source)
            self._layer_id = node.uniqueId().toString()
        write_bgra(node, to_bgra(job.images[0], target.width, target.height), target)
        self._shown, self.shown_job = target, job
        self.document.refreshProjection()

    def apply(self) -> str | None:
        """Copy the live result into a new permanent layer named after its prompt and seed."""
        job, target = self.shown_job, self._shown
        node = find_node(self.document, self._layer_id) if self.open else None
        if job is None or target is None or node is None:
            return None
        name = job.layer_names[0]
        copy = self.document.createNode(name, "paintlayer")
        node.parentNode().addChildNode(copy, node)
        copy.setPixelData(node.pixelData(target.x, target.y, target.width, target.height), *_area(target))
        self.document.refreshProjection()
        return name

    def remove(self) -> None:
        """Take the live layer away (nothing else is touched)."""
        if not self.open:
            return
        node = find_node(self.document, self._layer_id)
        self._layer_id, self._shown, self.shown_job = "", None, None
        if node is not None:
            node.remove()
            self.document.refreshProjection()


def _area(target: Target) -> tuple[int, int, int, int]:
    return target.x, target.y, target.width, target.height
