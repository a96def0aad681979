"""Small Qt building blocks the docker's parts share: spin boxes, sliders with their number, combo
boxes that elide instead of widening the docker, rows of widgets side by side."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from .deps import protocol
from .qt import (
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSize,
    QSizePolicy,
    QSlider,
    QSpinBox,
    Qt,
    QWidget,
    pyqtSignal,
)

NARROW_CHARACTERS = 8
"""What a combo box asks room for: the docker's column is ~260 px; longer items elide."""


class WheelWhenFocused:
    """A value widget the mouse wheel changes only once clicked into: scrolling the docker over a
    slider, spin box or combo box scrolls the docker (Qt's default changes the value instead)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)  # type: ignore[attr-defined]

    def wheelEvent(self, event) -> None:
        if self.hasFocus():  # type: ignore[attr-defined]
            super().wheelEvent(event)  # type: ignore[misc]
        else:
            event.ignore()  # on to the scroll area


class SpinBox(WheelWhenFocused, QDoubleSpinBox):
    pass


class IntSpinBox(WheelWhenFocused, QSpinBox):
    pass


class ComboBox(WheelWhenFocused, QComboBox):
    pass


class Slider(WheelWhenFocused, QSlider):
    pass


def wire_range(field: str, message: type = protocol.Generate) -> tuple[float, float]:
    """A generation setting's range as the wire format gives it (``protocol.Generate``'s bounds, or
    another message's): the docker's sliders take the same numbers the server accepts, from one place."""
    for wire in dataclasses.fields(message):
        if wire.name == field:
            return wire.metadata["low"], wire.metadata["high"]
    raise KeyError(f"the wire format has no setting {field!r}")


def setting_slider(field: str, step: float) -> SliderSpin:
    """A slider with its number for a setting of the wire format, over its whole range."""
    low, high = wire_range(field)
    return SliderSpin(low, high, step)


def spin(low: float, high: float, step: float, decimals: int = 2) -> QDoubleSpinBox:
    box = SpinBox()
    box.setRange(low, high)
    box.setSingleStep(step)
    box.setDecimals(decimals)
    return box


def int_spin(low: int, high: int, step: int = 1) -> QSpinBox:
    box = IntSpinBox()
    box.setRange(low, high)
    box.setSingleStep(step)
    return box


def narrow(combo: QComboBox) -> QComboBox:
    """A combo box as narrow as the docker wants (its items elided), not as wide as its longest item."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(NARROW_CHARACTERS)
    return combo


def choices(items: Iterable[tuple[str, object]]) -> QComboBox:
    """A narrow combo box of (label, value) items; ``currentData()`` is the chosen value."""
    box = narrow(ComboBox())
    for label, value in items:
        box.addItem(label, value)
    return box


def wrapped(text: str = "") -> QLabel:
    """A label that wraps (and so never widens the docker)."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setMinimumWidth(40)  # a long word (a path) is cut, not the docker widened
    return label


def side_by_side(*widgets: QWidget, stretch_first: bool = False) -> QWidget:
    holder = QWidget()
    layout = QHBoxLayout(holder)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.setSpacing(4)
    for index, widget in enumerate(widgets):
        layout.addWidget(widget, 1 if stretch_first and index == 0 else 0)
    return holder


class SliderSpin(QWidget):
    """A strength as artists set it in Krita: a slider with its number beside it (typed for precision).

    Reads and writes like a ``QDoubleSpinBox`` (``value``, ``setValue``, ``valueChanged``), so the
    docker's table of settings treats both alike.
    """

    valueChanged = pyqtSignal(float)
    STEPS_PER_UNIT = 100

    def __init__(self, low: float, high: float, step: float, decimals: int = 2) -> None:
        super().__init__()
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(4)
        self.slider = Slider(Qt.Orientation.Horizontal)
        self.slider.setRange(round(low * self.STEPS_PER_UNIT), round(high * self.STEPS_PER_UNIT))
        self.slider.setSingleStep(max(1, round(step * self.STEPS_PER_UNIT)))
        self.slider.setPageStep(max(1, round(step * self.STEPS_PER_UNIT * 5)))
        self.slider.setMinimumWidth(40)
        self.slider.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.number = spin(low, high, step, decimals)
        self.number.setButtonSymbols(QDoubleSpinBox.ButtonSymbols.NoButtons)
        self.number.setAlignment(Qt.AlignmentFlag.AlignRight)
        self.number.setFixedWidth(self.number.fontMetrics().horizontalAdvance(f"{high:.{decimals}f}") + 14)
        row.addWidget(self.slider, 1)
        row.addWidget(self.number)
        self.slider.valueChanged.connect(self._slid)
        self.number.valueChanged.connect(self._typed)

    def value(self) -> float:
        return self.number.value()

    def setValue(self, value: float) -> None:
        self.number.setValue(value)

    def setToolTip(self, text: str) -> None:
        super().setToolTip(text)
        self.slider.setToolTip(text)
        self.number.setToolTip(text)

    def _slid(self, position: int) -> None:
        value = position / self.STEPS_PER_UNIT
        if abs(value - self.number.value()) >= 0.5 / self.STEPS_PER_UNIT:
            self.number.setValue(value)

    def _typed(self, value: float) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(round(value * self.STEPS_PER_UNIT))
        self.slider.blockSignals(False)
        self.valueChanged.emit(value)


class ElidedLabel(QLabel):
    """One line that ends in "…" when the docker is narrow (the whole text in its tooltip)."""

    def __init__(self, text: str = "") -> None:
        super().__init__()
        self._full = ""
        self.setMinimumWidth(20)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.set_full_text(text)

    def set_full_text(self, text: str) -> None:
        if text == self._full and self.text():
            return
        self._full = text
        self.setToolTip(text)
        self._elide()

    def minimumSizeHint(self) -> QSize:
        return QSize(20, super().minimumSizeHint().height())

    def full_text(self) -> str:
        return self._full

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        metrics = self.fontMetrics()
        self.setText(metrics.elidedText(self._full, Qt.TextElideMode.ElideRight, max(20, self.width())))


def buttons_fit_their_text(parent: QWidget) -> None:
    """Push buttons ask for their text's width, not the style's usual 80 px (three in a row then fit
    Krita's 260 px dock column)."""
    for button in parent.findChildren(QPushButton):
        button.setMinimumWidth(button.fontMetrics().horizontalAdvance(button.text()) + 16)
