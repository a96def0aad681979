"""The docker's style references: one row each (active layer, a layer, or a file) with a weight."""

from __future__ import annotations

from krita import Krita  # type: ignore[import-not-found]

from .qt import (
    QDoubleSpinBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QImage,
    QLabel,
    QLineEdit,
    QPixmap,
    Qt,
    QToolButton,
    QWidget,
    pyqtSignal,
)
from .sections import RowList
from .settings import StyleSource, StyleSourceKind
from .widgets import ComboBox, SpinBox, narrow

THUMBNAIL = 40
SOURCES = [
    ("Active layer", StyleSourceKind.ACTIVE_LAYER),
    ("Layer", StyleSourceKind.LAYER),
    ("Image file", StyleSourceKind.FILE),
]


def paint_layer_names(document) -> list[str]:
    names: list[str] = []

    def walk(node) -> None:
        for child in reversed(node.childNodes()):
            if child.type() == "paintlayer":
                names.append(child.name())
            walk(child)

    if document is not None:
        walk(document.rootNode())
    return names


class LayerCombo(ComboBox):
    """The active document's paint layers, listed afresh each time it opens (Krita has no layer events)."""

    def __init__(self, selected: str = "") -> None:
        super().__init__()
        narrow(self)  # a long layer name elides instead of widening the docker
        self.refill(selected)

    def refill(self, selected: str = "") -> None:
        current = self.currentText() or selected
        self.clear()
        names = paint_layer_names(Krita.instance().activeDocument())
        if current and current not in names:
            names.insert(0, current)  # keep the artist's choice visible even in another document
        self.addItems(names)
        if current:
            self.setCurrentText(current)

    def showPopup(self) -> None:
        self.refill()
        super().showPopup()


class StyleRow(QWidget):
    """One style reference; ``removed`` asks the docker to drop it."""

    removed = pyqtSignal(object)

    def __init__(self, source: StyleSource) -> None:
        super().__init__()
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        self.kind = narrow(ComboBox())
        for label, kind in SOURCES:
            self.kind.addItem(label, kind)
        self.kind.setCurrentIndex(max(0, self.kind.findData(source.kind)))
        self.kind.setToolTip("where the reference comes from: the active layer, a named layer, or a file")
        self.weight = SpinBox()
        self.weight.setRange(0.0, 10.0)
        self.weight.setSingleStep(0.1)
        self.weight.setValue(source.weight)
        self.weight.setToolTip("weight of this reference in the blend")
        self.weight.setButtonSymbols(QDoubleSpinBox.ButtonSymbols.NoButtons)  # narrow: Krita's column
        remove = QToolButton()
        remove.setText("✕")
        remove.setToolTip("remove this reference")
        remove.clicked.connect(lambda: self.removed.emit(self))
        self.layer = LayerCombo(source.layer)
        self.layer.setToolTip("the layer whose look to take (any layer of the document)")
        self.file = QLineEdit(source.path)
        self.file.setPlaceholderText("image file")
        self.file.setToolTip("a picture on disk whose look to take")
        browse = QToolButton()
        browse.setText("…")
        browse.setToolTip("choose the picture")
        browse.clicked.connect(self._browse)
        self.file_row = QWidget()
        file_layout = QHBoxLayout(self.file_row)
        file_layout.setContentsMargins(0, 0, 0, 0)
        file_layout.addWidget(self.file)
        file_layout.addWidget(browse)
        self.thumbnail = QLabel()
        self.thumbnail.setFixedSize(THUMBNAIL, THUMBNAIL)
        self.thumbnail.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.thumbnail.setToolTip("the reference as it will be sent")
        grid.addWidget(self.thumbnail, 0, 0, 3, 1)
        grid.addWidget(self.kind, 0, 1)
        grid.addWidget(self.weight, 0, 2)
        grid.addWidget(remove, 0, 3)
        grid.addWidget(self.layer, 1, 1, 1, 3)
        grid.addWidget(self.file_row, 2, 1, 1, 3)
        grid.setColumnStretch(1, 1)
        self.kind.currentIndexChanged.connect(self._kind_changed)
        self.layer.currentIndexChanged.connect(self.refresh_thumbnail)
        self.file.editingFinished.connect(self.refresh_thumbnail)
        self._kind_changed()

    def value(self) -> StyleSource:
        kind = self.kind.currentData()
        return StyleSource(
            kind,
            self.layer.currentText() if kind is StyleSourceKind.LAYER else "",
            self.file.text() if kind is StyleSourceKind.FILE else "",
            self.weight.value(),
        )

    def _kind_changed(self) -> None:
        kind = self.kind.currentData()
        self.layer.setVisible(kind is StyleSourceKind.LAYER)
        self.file_row.setVisible(kind is StyleSourceKind.FILE)
        if kind is StyleSourceKind.LAYER:
            self.layer.refill()
        self.refresh_thumbnail()

    def refresh_thumbnail(self) -> None:
        """A small picture of the reference (Krita renders layer thumbnails itself, in C++)."""
        image = None
        try:
            kind = self.kind.currentData()
            if kind is StyleSourceKind.FILE:
                image = QImage(self.file.text()) if self.file.text() else None
            else:
                document = Krita.instance().activeDocument()
                node = None
                if document is not None and kind is StyleSourceKind.ACTIVE_LAYER:
                    node = document.activeNode()
                elif document is not None:
                    from .canvas import find_layer

                    node = find_layer(document, self.layer.currentText())
                image = node.thumbnail(THUMBNAIL, THUMBNAIL) if node is not None else None
        except Exception:  # a thumbnail is a nicety: never an error for the artist
            image = None
        if image is None or image.isNull():
            self.thumbnail.setText("–")
            self.thumbnail.setPixmap(QPixmap())
            return
        smooth = Qt.TransformationMode.SmoothTransformation
        scaled = image.scaled(THUMBNAIL, THUMBNAIL, Qt.AspectRatioMode.KeepAspectRatio, smooth)
        self.thumbnail.setPixmap(QPixmap.fromImage(scaled))

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Style reference", "", "Images (*.png *.jpg *.jpeg *.webp)"
        )
        if path:
            self.file.setText(path)


class StyleList(RowList):
    """The style references of the next job (at least one row: the active layer by default)."""

    def __init__(self) -> None:
        super().__init__("Add reference", "blend in one more picture whose look the result should take")

    def make_row(self, value: object) -> StyleRow:
        return StyleRow(value)  # type: ignore[arg-type]

    def new_value(self) -> StyleSource:
        return StyleSource()

    def set_values(self, values: list) -> None:
        super().set_values(values or [StyleSource()])

    def values(self) -> list[StyleSource]:
        return [row.value() for row in self.rows]

    def refresh(self, refill: bool = False) -> None:
        """Thumbnails (and layer lists) afresh: what is about to be sent, as the artist sees it."""
        for row in self.rows:
            if refill:
                row.layer.refill()
            row.refresh_thumbnail()
