"""The docker's regions: each a name, where its mask comes from, and its style reference."""

from __future__ import annotations

from .qt import QGridLayout, QLineEdit, QPushButton, QToolButton, QWidget, pyqtSignal
from .sections import RowList
from .settings import RegionMaskKind, RegionSetting
from .style_rows import LayerCombo, StyleRow

SAVED_SELECTION = "Saved selection"


class MaskCombo(LayerCombo):
    """ "Saved selection", then the document's layers (listed afresh when it opens)."""

    def refill(self, selected: str = "") -> None:
        current = self.currentText() or selected or SAVED_SELECTION
        super().refill("")
        names = [self.itemText(i) for i in range(self.count()) if self.itemText(i) != SAVED_SELECTION]
        if current not in names and current != SAVED_SELECTION:
            names.insert(0, current)
        self.clear()
        self.addItems([SAVED_SELECTION, *names])
        self.setCurrentText(current)


class RegionRow(QWidget):
    """One region; ``removed`` asks the list to drop it, ``save_selection`` to keep the selection."""

    removed = pyqtSignal(object)
    save_selection = pyqtSignal(object)

    def __init__(self, region: RegionSetting) -> None:
        super().__init__()
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 4)
        self.name = QLineEdit(region.name)
        self.name.setToolTip("the region's name (e.g. 'sky')")
        saved = region.mask_kind is RegionMaskKind.SELECTION
        self.mask = MaskCombo(SAVED_SELECTION if saved else region.mask_layer)
        self.mask.setToolTip(
            "where the region is: a saved selection, or the painted (opaque) part of a layer"
        )
        save = QPushButton("Save selection")
        save.setToolTip("keep the current selection as this region's area")
        save.clicked.connect(lambda: self.save_selection.emit(self))
        remove = QToolButton()
        remove.setText("✕")
        remove.setToolTip("remove this region")
        remove.clicked.connect(lambda: self.removed.emit(self))
        self.reference = StyleRow(region.reference)
        grid.addWidget(self.name, 0, 0)
        grid.addWidget(self.mask, 0, 1)
        grid.addWidget(remove, 0, 2)
        grid.addWidget(save, 1, 0, 1, 3)
        grid.addWidget(self.reference, 2, 0, 1, 3)
        grid.setColumnStretch(1, 1)

    def value(self) -> RegionSetting:
        saved = self.mask.currentText() == SAVED_SELECTION
        return RegionSetting(
            self.name.text().strip() or "region",
            RegionMaskKind.SELECTION if saved else RegionMaskKind.LAYER,
            "" if saved else self.mask.currentText(),
            self.reference.value(),
        )


class RegionList(RowList):
    """The regions of the next job, with an "Add region" button."""

    def __init__(self, controller) -> None:
        super().__init__(
            "Add region", "style one part of the picture with its own reference; the others style the rest"
        )
        self.controller = controller

    def make_row(self, value: object) -> RegionRow:
        row = RegionRow(value)  # type: ignore[arg-type]
        row.save_selection.connect(lambda r: self.controller.save_region_selection(r.value().name))
        return row

    def new_value(self) -> RegionSetting:
        return RegionSetting(f"region {len(self.rows) + 1}")

    def values(self) -> list[RegionSetting]:
        return [row.value() for row in self.rows]
