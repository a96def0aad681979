"""Everything that reads from or writes to Krita documents and layers.

Rules this module keeps: it never modifies or deletes a layer it did not
create; the preview layer is one temporary layer per job, always removed on
result, cancel, failure or shutdown; all pixel work is bytes/QImage operations
(no per-pixel Python), so big canvases stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from krita import Krita  # type: ignore[import-not-found]

from .jobs import Image, Job, JobInputs, RegionInput, ResultPart, Target
from .pixels import SavedSelection, fit_generation_size, part_bgra, swap_red_blue, to_8bit, to_16bit
from .qt import QImage, Qt, image_bytes
from .settings import GenerationSettings, JobKind, RegionMaskKind, RegionSetting, StyleSource, StyleSourceKind

PREVIEW_LAYER_NAME = "InstantStyle preview"


class CanvasError(ValueError):
    """Something about the document stops the job; the message is for the artist."""


@dataclass(frozen=True)
class Area:
    x: int
    y: int
    width: int
    height: int


SUPPORTED_DEPTHS = ("U8", "U16")


def _require_rgba(node) -> None:
    if node.colorModel() != "RGBA" or node.colorDepth() not in SUPPORTED_DEPTHS:
        raise CanvasError(
            f"layer '{node.name()}' is {node.colorModel()} {node.colorDepth()}: InstantStyle works with "
            "8- and 16-bit integer RGBA for now (Image > Convert Image Color Space)"
        )


def read_rgba(node, area: Area) -> Image:
    """A layer's pixels in ``area`` as 8-bit RGBA (Krita hands out BGRA, 8 or 16 bits a channel)."""
    _require_rgba(node)
    data = bytes(node.pixelData(area.x, area.y, area.width, area.height))
    if node.colorDepth() == "U16":
        data = to_8bit(data)
    return Image(area.width, area.height, 4, swap_red_blue(data))


def write_bgra(node, bgra8: bytes, target: Target) -> None:
    """8-bit BGRA into a layer of its own depth (new layers take the document's)."""
    _require_rgba(node)
    data = to_16bit(bgra8) if node.colorDepth() == "U16" else bgra8
    node.setPixelData(data, target.x, target.y, target.width, target.height)


def read_file(path: str) -> Image:
    image = QImage(path)
    if image.isNull():
        raise CanvasError(f"cannot open the style image {path}")
    return qimage_to_rgba(image)


def qimage_to_rgba(image: QImage) -> Image:
    image = image.convertToFormat(QImage.Format.Format_RGBA8888)
    width, height = image.width(), image.height()
    data = image_bytes(image)
    stride = image.bytesPerLine()
    if stride != width * 4:
        data = b"".join(data[row * stride : row * stride + width * 4] for row in range(height))
    return Image(width, height, 4, data)


def _bgra_bytes(image: QImage) -> bytes:
    image = image.convertToFormat(QImage.Format.Format_ARGB32)  # B, G, R, A in memory on little-endian
    return image_bytes(image)


def to_bgra(image: Image, width: int, height: int) -> bytes:
    """Pixels for ``setPixelData``: BGRA at ``width`` x ``height`` (scaled smoothly if needed)."""
    if image.channels == 4 and (image.width, image.height) == (width, height):
        return swap_red_blue(image.data)
    fmt = {3: QImage.Format.Format_RGB888, 4: QImage.Format.Format_RGBA8888}[image.channels]
    qimage = QImage(image.data, image.width, image.height, image.width * image.channels, fmt)
    if (image.width, image.height) != (width, height):
        qimage = qimage.scaled(
            width, height, Qt.AspectRatioMode.IgnoreAspectRatio, Qt.TransformationMode.SmoothTransformation
        )
    return _bgra_bytes(qimage)


STYLE_SIDE = 1024
"""Style references travel at most this large: the image encoder sees 224² of them anyway."""
QIMAGE_FORMATS = {
    1: QImage.Format.Format_Grayscale8,
    3: QImage.Format.Format_RGB888,
    4: QImage.Format.Format_RGBA8888,
}


def fitted(image: Image, max_side: int, max_pixels: int) -> Image:
    """``image`` scaled down (smoothly, in Qt's C++) to fit ``max_side`` and ``max_pixels``, as the
    job's size is: a layer larger than the server's frames travels at the size it is used at."""
    if image.width <= max_side and image.height <= max_side and image.width * image.height <= max_pixels:
        return image
    width, height = fit_generation_size(image.width, image.height, max_side, max_pixels)
    row = image.width * image.channels
    qimage = QImage(image.data, image.width, image.height, row, QIMAGE_FORMATS[image.channels])
    smooth = Qt.TransformationMode.SmoothTransformation
    scaled = qimage.scaled(width, height, Qt.AspectRatioMode.IgnoreAspectRatio, smooth)
    data = image_bytes(scaled)
    stride = scaled.bytesPerLine()
    if stride != width * image.channels:  # Qt pads rows to 4 bytes
        data = b"".join(data[y * stride : y * stride + width * image.channels] for y in range(height))
    return Image(width, height, image.channels, data)


def fit_inputs(inputs: JobInputs, limits) -> JobInputs:
    """Every input within the server's frame limits: the layer and masks at the job's size (the
    first stage's, for a canvas made at its own resolution), style references at ``STYLE_SIDE``."""
    side, pixels = limits.max_side, limits.max_pixels

    def sized(image: Image | None) -> Image | None:
        return None if image is None else fitted(image, side, pixels)

    def styles(weighted: list[tuple[Image, float]]) -> list[tuple[Image, float]]:
        return [(fitted(image, STYLE_SIDE, STYLE_SIDE * STYLE_SIDE), weight) for image, weight in weighted]

    regions = [RegionInput(r.name, fitted(r.mask, side, pixels), styles(r.styles)) for r in inputs.regions]
    return JobInputs(styles(inputs.styles), sized(inputs.init_image), sized(inputs.mask), regions)


def find_layer(document, name: str):
    """The first layer called ``name``, depth first from the top."""

    def walk(node):
        for child in reversed(node.childNodes()):
            if child.name() == name:
                return child
            found = walk(child)
            if found is not None:
                return found
        return None

    return walk(document.rootNode())


def find_node(document, unique_id: str):
    """The node with this uniqueId. (Krita 5.1's ``nodeByUniqueID`` returns a bare QObject, so walk.)"""

    def walk(node):
        for child in node.childNodes():
            if child.uniqueId().toString() == unique_id:
                return child
            found = walk(child)
            if found is not None:
                return found
        return None

    return walk(document.rootNode()) if unique_id else None


def target_area(document) -> Area:
    selection = document.selection()
    if selection is not None and selection.width() > 0 and selection.height() > 0:
        return Area(selection.x(), selection.y(), selection.width(), selection.height())
    return Area(0, 0, document.width(), document.height())


def save_selection(document) -> SavedSelection:
    selection = document.selection() if document is not None else None
    if selection is None or selection.width() == 0:
        raise CanvasError("select the region's area first, then save it")
    width, height = document.width(), document.height()
    return SavedSelection(width, height, bytes(selection.pixelData(0, 0, width, height)))


def read_style(document, source, style: StyleSource) -> Image:
    """One style reference: a file, the active (source) layer or a named layer, whole."""
    if style.kind is StyleSourceKind.FILE:
        return read_file(style.path)
    node = source if style.kind is StyleSourceKind.ACTIVE_LAYER else find_layer(document, style.layer)
    if node is None:
        raise CanvasError(f"there is no layer called '{style.layer}'")
    bounds = node.bounds()
    if bounds.isEmpty():
        raise CanvasError(f"the style layer '{node.name()}' is empty")
    return read_rgba(node, Area(bounds.x(), bounds.y(), bounds.width(), bounds.height()))


def read_region(
    document, source, area: Area, region: RegionSetting, saved: dict[str, SavedSelection]
) -> RegionInput:
    """A region's mask over the job's area (a layer's alpha or its saved selection) and reference."""
    if region.mask_kind is RegionMaskKind.SELECTION:
        selection = saved.get(region.name)
        if selection is None:
            raise CanvasError(
                f"region '{region.name}' has no saved selection: select its area and press Save selection"
            )
        mask = selection.crop(area.x, area.y, area.width, area.height)
    else:
        node = find_layer(document, region.mask_layer)
        if node is None:
            raise CanvasError(f"region '{region.name}': there is no layer called '{region.mask_layer}'")
        mask = read_rgba(node, area).data[3::4]
    reference = read_style(document, source, region.reference)
    return RegionInput(
        region.name, Image(area.width, area.height, 1, mask), [(reference, region.reference.weight)]
    )


def capture(
    document, settings: GenerationSettings, source=None, saved: dict[str, SavedSelection] | None = None
) -> tuple[JobInputs, Target]:
    """Read the style references, regions, source layer (default: the active one) and selection."""
    if document is None:
        raise CanvasError("open a document first")
    source = source or document.activeNode()
    if source is None:
        raise CanvasError("select a layer first")
    area = target_area(document)
    styles = [(read_style(document, source, style), style.weight) for style in settings.styles]
    regions = [read_region(document, source, area, region, saved or {}) for region in settings.regions]
    init_image = mask = None
    if settings.kind is not JobKind.NEW_IMAGE:
        init_image = read_rgba(source, area)
        selection = document.selection()
        if selection is not None and selection.width() > 0:
            data = bytes(selection.pixelData(area.x, area.y, area.width, area.height))
            mask = Image(area.width, area.height, 1, data)
    target = Target(area.x, area.y, area.width, area.height, document, source.uniqueId().toString())
    return JobInputs(styles, init_image, mask, regions), target


class CanvasWriter:
    """Preview and result layers for jobs; only ever touches layers it created."""

    def __init__(self) -> None:
        self._previews: dict[int, str] = {}  # job id -> uniqueId of its preview layer
        self._groups: dict[int, str] = {}  # sweep job id -> uniqueId of the group holding its cells
        self._masks: dict[int, bytes] = {}
        self._arriving: dict[int, tuple[str, int]] = {}
        """Job id -> uniqueId of the result layer its tiles are written into, and pixels written."""

    def remember_mask(self, job: Job, mask: Image | None) -> None:
        if mask is not None:
            self._masks[job.job_id] = mask.data

    @staticmethod
    def _document(job: Job):
        """The job's document if it is still open, else None (closing it mid-job is fine)."""
        document = job.target.document_id
        return document if document is not None and document in Krita.instance().documents() else None

    def _place(self, document, job: Job, name: str):
        node = document.createNode(name, "paintlayer")
        source = find_node(document, job.target.above_layer)
        parent = source.parentNode() if source is not None else document.rootNode()
        parent.addChildNode(node, source)
        return node

    def show_preview(self, job: Job, frame: Image | None = None) -> None:
        """Paint ``frame`` (default: the job's newest preview) into the job's preview layer."""
        frame = frame if frame is not None else job.preview
        document = self._document(job)
        if document is None or frame is None:
            return
        target = job.target
        node = self._preview_node(document, job)
        if node is None:
            node = self._place(document, job, PREVIEW_LAYER_NAME)
            self._previews[job.job_id] = node.uniqueId().toString()
        write_bgra(node, to_bgra(frame, target.width, target.height), target)
        document.refreshProjection()

    def _preview_node(self, document, job: Job):
        return find_node(document, self._previews.get(job.job_id, ""))

    def remove_preview(self, job: Job) -> None:
        uid = self._previews.pop(job.job_id, None)
        document = self._document(job)
        if uid is None or document is None:
            return
        node = find_node(document, uid)
        if node is not None:
            node.remove()
            document.refreshProjection()

    def apply_sweep(self, job: Job) -> str | None:
        """Every cell of a finished sweep as a layer (named with its settings) in one new group."""
        self.remove_preview(job)
        document = self._document(job)
        if document is None:
            return None
        cells = job.result.cells if job.result is not None else []
        name = f"InstantStyle sweep: {job.label} ({len(cells)} cells)"
        group = document.createGroupLayer(name)
        source = find_node(document, job.target.above_layer)
        parent = source.parentNode() if source is not None else document.rootNode()
        parent.addChildNode(group, source)
        for index, image in enumerate(job.images):
            node = document.createNode(job.layer_names[index], "paintlayer")
            group.addChildNode(node, None)
            write_bgra(node, to_bgra(image, job.target.width, job.target.height), job.target)
        self._groups[job.job_id] = group.uniqueId().toString()
        document.refreshProjection()
        return name

    def keep_cell(self, job: Job, index: int) -> str | None:
        """Keep one cell of a sweep as a normal layer and take the sweep's group away."""
        document = self._document(job)
        group = find_node(document, self._groups.get(job.job_id, "")) if document is not None else None
        if group is None:
            return None
        name = job.layer_names[index]
        kept = document.createNode(name, "paintlayer")
        group.parentNode().addChildNode(kept, group)
        write_bgra(kept, to_bgra(job.images[index], job.target.width, job.target.height), job.target)
        group.remove()
        del self._groups[job.job_id]
        document.refreshProjection()
        return name

    def write_result_part(self, job: Job, part: ResultPart) -> None:
        """Write a tile of a canvas-sized result into its layer as it arrives: the canvas fills in
        tile by tile, and no step converts the whole canvas at once. The layer takes the preview's
        place with its first tile; ``apply_result`` finds it complete."""
        document = self._document(job)
        target, result = job.target, job.result
        if (
            document is None
            or part.index != 0
            or result is None
            or (result.width, result.height)
            != (
                target.width,
                target.height,
            )
        ):
            return  # other pictures of a batch stay in the history; a scaled result goes whole
        uid, written = self._arriving.get(job.job_id, ("", 0))
        node = find_node(document, uid)
        if node is None:
            if written:
                return  # the artist deleted the arriving layer, or it could not take pixels:
                # apply_result makes the result whole (or says why it cannot, once)
            self.remove_preview(job)
            node = self._place(document, job, job.layer_names[0])
            try:
                _require_rgba(node)
            except CanvasError:
                node.remove()
                self._arriving[job.job_id] = ("", -1)
                return
            uid = node.uniqueId().toString()
        mask = self._masks.get(job.job_id)
        mask = mask if mask is not None and len(mask) == target.width * target.height else None
        width, height = part.image.width, part.image.height
        pixels = part_bgra(part.image.data, width, height, part.x, part.y, mask, target.width)
        data = to_16bit(pixels) if node.colorDepth() == "U16" else pixels
        node.setPixelData(data, target.x + part.x, target.y + part.y, width, height)
        self._arriving[job.job_id] = (uid, written + width * height)
        document.refreshProjection()

    def remove_arriving(self, job: Job) -> None:
        """Take away a result layer whose tiles stopped arriving (the job failed on the way)."""
        uid, _ = self._arriving.pop(job.job_id, ("", 0))
        document = self._document(job)
        node = find_node(document, uid) if document is not None and uid else None
        if node is not None:
            node.remove()
            document.refreshProjection()

    def _arrived(self, document, job: Job) -> str | None:
        """The name of the layer ``write_result_part`` filled completely, else None (none, or a
        partial one, which is taken away)."""
        uid, written = self._arriving.pop(job.job_id, ("", 0))
        node = find_node(document, uid) if uid else None
        if node is not None and written == job.target.width * job.target.height:
            return node.name()
        if node is not None:
            node.remove()
        return None

    def apply_result(self, job: Job, index: int = 0) -> str | None:
        """Add image ``index`` of a finished job as a new layer; returns the layer's name."""
        self.remove_preview(job)
        document = self._document(job)
        if document is None or index >= len(job.images):
            return None
        arrived = self._arrived(document, job) if index == 0 else None
        if arrived is not None:
            document.refreshProjection()
            return arrived
        target = job.target
        pixels = to_bgra(job.images[index], target.width, target.height)
        mask = self._masks.get(job.job_id)
        if mask is not None and len(mask) * 4 == len(pixels):  # inpaint: only the selection shows
            pixels = bytearray(pixels)
            pixels[3::4] = mask
            pixels = bytes(pixels)
        name = job.layer_names[index]
        node = self._place(document, job, name)
        write_bgra(node, pixels, target)
        document.refreshProjection()
        return name
