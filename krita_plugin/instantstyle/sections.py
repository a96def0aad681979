"""Small building blocks of the docker: collapsible sections, the block-scale grid, LoRA rows."""

from __future__ import annotations

import json

from .block_map import block_label, flat_scales, grid_values, nested_scales, parse_scales
from .qt import (
    QDoubleSpinBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    Qt,
    QToolButton,
    QVBoxLayout,
    QWidget,
    pyqtSignal,
)
from .settings import LoraChoice
from .widgets import ComboBox, SpinBox, narrow


class Section(QWidget):
    """A titled part of the docker that opens and closes with a click on its title (closed at first)."""

    def __init__(self, title: str, tooltip: str = "") -> None:
        super().__init__()
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(2)
        self.header = QToolButton()
        self.header.setText(title)
        self.header.setToolTip(tooltip)
        self.header.setCheckable(True)
        self.header.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.header.setArrowType(Qt.ArrowType.RightArrow)
        self.header.setAutoRaise(True)
        self.header.toggled.connect(self.set_open)
        self.body = QWidget()
        self.body.setVisible(False)
        column.addWidget(self.header)
        column.addWidget(self.body)

    def set_open(self, open_: bool) -> None:
        if self.header.isChecked() != open_:
            self.header.setChecked(open_)  # calls back here through toggled
            return
        self.header.setArrowType(Qt.ArrowType.DownArrow if open_ else Qt.ArrowType.RightArrow)
        self.body.setVisible(open_)


class BlockGrid(QWidget):
    """One spin box per attention block of the backend's UNet, in rows by UNet part."""

    def __init__(self) -> None:
        super().__init__()
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setHorizontalSpacing(4)
        self.boxes: dict[str, QDoubleSpinBox] = {}
        self.family = ""
        """The model family the boxes are for: its block names mean other places in another family."""
        self._saved = ""
        """The saved map, kept as it is until the backend says which blocks its UNet has."""
        self.placeholder = QLabel("The blocks appear once the backend's model is ready.")
        self.placeholder.setWordWrap(True)
        self.grid.addWidget(self.placeholder, 0, 0)

    def set_blocks(self, names: list[str], family: str = "", hint: str = "") -> None:
        """Rebuild for a UNet's attention blocks, keeping the values of blocks that remain; for another
        ``family`` start over from the saved map (``set_text`` it first), as names mean other places."""
        if list(self.boxes) == names and family == self.family:
            return
        shown = {name: box.value() for name, box in self.boxes.items()}
        values = grid_values(names, family, shown, self.family, self._saved)
        self.family = family
        for box in self.boxes.values():
            box.setParent(None)
        while self.grid.count():
            item = self.grid.takeAt(0)
            if item.widget() is not None and item.widget() is not self.placeholder:
                item.widget().setParent(None)
        self.boxes = {}
        self.placeholder.setVisible(not names)
        if not names:
            self.grid.addWidget(self.placeholder, 0, 0)
            return
        for index, name in enumerate(names):
            box = SpinBox()
            box.setRange(0.0, 2.0)
            box.setSingleStep(0.1)
            box.setDecimals(2)
            box.setValue(values[name])
            box.setButtonSymbols(QDoubleSpinBox.ButtonSymbols.NoButtons)  # two columns fit 260 px
            box.setToolTip(
                f"{name}: how much of the reference's look this part of the model takes (0 = none). "
                + (hint or "InstantStyle's style block is up 0 · 1; down 2 · 1 carries the layout.")
            )
            row, column = divmod(index, 2)
            self.grid.addWidget(QLabel(block_label(name)), row, column * 2)
            self.grid.addWidget(box, row, column * 2 + 1)
            self.boxes[name] = box

    def text(self) -> str:
        """The JSON ``block_scales`` map of the non-zero blocks ("" when every block is 0)."""
        if not self.boxes:
            return self._saved
        nested = nested_scales({name: box.value() for name, box in self.boxes.items()})
        return json.dumps(nested) if nested else ""

    def set_text(self, text: str) -> None:
        self._saved = text
        for name, value in flat_scales(parse_scales(text), list(self.boxes)).items():
            self.boxes[name].setValue(value)


class LoraRow(QWidget):
    """One LoRA: which, and how strongly; ``removed`` asks the list to drop it."""

    removed = pyqtSignal(object)

    def __init__(self, choice: LoraChoice, offered: list[str]) -> None:
        super().__init__()
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.name = narrow(ComboBox())
        self.name.setEditable(True)
        self.name.setToolTip(
            "a LoRA the backend offers (started with --lora); it changes what the model paints"
        )
        self.set_offered(offered, choice.name)
        self.weight = SpinBox()
        self.weight.setRange(-4.0, 4.0)
        self.weight.setSingleStep(0.1)
        self.weight.setValue(choice.weight)
        self.weight.setToolTip("how strongly the LoRA applies: 0 is as if it were off, negative reverses it")
        remove = QToolButton()
        remove.setText("✕")
        remove.setToolTip("stop using this LoRA")
        remove.clicked.connect(lambda: self.removed.emit(self))
        row.addWidget(self.name, 1)
        row.addWidget(self.weight)
        row.addWidget(remove)

    def set_offered(self, offered: list[str], current: str = "") -> None:
        current = current or self.name.currentText()
        names = list(offered)
        if current and current not in names:
            names.insert(0, current)  # the artist's choice stays visible, even if not offered now
        if [self.name.itemText(i) for i in range(self.name.count())] != names:
            self.name.clear()
            self.name.addItems(names)
        self.name.setCurrentText(current)

    def value(self) -> LoraChoice:
        return LoraChoice(self.name.currentText().strip(), self.weight.value())


class RowList(QWidget):
    """Rows of one kind with an "Add" button under them; a row asks to go with its ``removed`` signal."""

    def __init__(self, add_label: str, add_tooltip: str) -> None:
        super().__init__()
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        self.rows_box = QVBoxLayout()
        self.rows: list = []
        add = QPushButton(add_label)
        add.setToolTip(add_tooltip)
        add.clicked.connect(lambda: self.add(self.new_value()))
        column.addLayout(self.rows_box)
        column.addWidget(add)

    def make_row(self, value: object) -> QWidget:
        raise NotImplementedError

    def new_value(self) -> object:
        raise NotImplementedError

    def add(self, value: object) -> QWidget:
        row = self.make_row(value)
        row.removed.connect(self.remove)  # type: ignore[attr-defined]
        self.rows.append(row)
        self.rows_box.addWidget(row)
        return row

    def remove(self, row: QWidget) -> None:
        if row in self.rows:
            self.rows.remove(row)
            row.setParent(None)
            row.deleteLater()

    def set_values(self, values: list) -> None:
        for row in list(self.rows):
            self.remove(row)
        for value in values:
            self.add(value)


class LoraList(RowList):
    """The LoRAs of the next job, with an "Add LoRA" button."""

    def __init__(self) -> None:
        super().__init__("Add LoRA", "apply one more of the backend's LoRAs to the next jobs")
        self.offered: list[str] = []

    def make_row(self, value: object) -> LoraRow:
        return LoraRow(value, self.offered)  # type: ignore[arg-type]

    def new_value(self) -> LoraChoice:
        return LoraChoice(self.offered[0] if self.offered else "")

    def set_offered(self, names: list[str]) -> None:
        self.offered = list(names)
        for row in self.rows:
            row.set_offered(self.offered)

    def values(self) -> list[LoraChoice]:
        return [row.value() for row in self.rows if row.value().name]
