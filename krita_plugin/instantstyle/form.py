"""One table of (settings field, widget) that builds, loads and stores the docker's settings.

A new setting is a field in ``settings.GenerationSettings`` and one ``Form.add`` where its widget is
made: loading the saved settings into the widgets and storing them back before a job follow from the
table, so no hand-written load/store pair can forget a field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .qt import QCheckBox, QComboBox, QLineEdit, QPlainTextEdit

W = TypeVar("W")


@dataclass(frozen=True)
class Binding:
    """How one settings field reads from and writes to its widget."""

    field: str
    widget: Any
    get: Callable[[], Any]
    set: Callable[[Any], None]


def accessors(widget: Any) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    """The getter and setter for the widget kinds the docker uses."""
    if isinstance(widget, QComboBox):

        def choose(value: Any) -> None:
            widget.setCurrentIndex(max(0, widget.findData(value)))

        return widget.currentData, choose
    if isinstance(widget, QCheckBox):
        return widget.isChecked, widget.setChecked
    if isinstance(widget, QPlainTextEdit):
        return widget.toPlainText, widget.setPlainText
    if isinstance(widget, QLineEdit):
        return widget.text, widget.setText
    if hasattr(widget, "values") and hasattr(widget, "set_values"):  # RowList: LoRAs, regions, styles
        return widget.values, widget.set_values
    if hasattr(widget, "value") and hasattr(widget, "setValue"):  # spin boxes, SliderSpin
        return widget.value, widget.setValue
    raise TypeError(f"no accessors for {type(widget).__name__}: pass get= and set=")


class Form:
    """The docker's widgets by settings field."""

    def __init__(self) -> None:
        self.bindings: dict[str, Binding] = {}

    def add(
        self,
        field: str,
        widget: W,
        tooltip: str = "",
        get: Callable[[], Any] | None = None,
        set: Callable[[Any], None] | None = None,
    ) -> W:
        """Bind ``widget`` to the settings ``field`` (each field once); returns the widget."""
        if field in self.bindings:
            raise ValueError(f"the setting {field!r} has a widget already")
        default_get, default_set = accessors(widget) if get is None or set is None else (get, set)
        if tooltip:
            widget.setToolTip(tooltip)  # type: ignore[attr-defined]
        self.bindings[field] = Binding(field, widget, get or default_get, set or default_set)
        return widget

    def __getitem__(self, field: str) -> Any:
        return self.bindings[field].widget

    def load(self, settings: object, only: tuple[str, ...] = ()) -> None:
        """Show ``settings`` in the widgets (``only``: just these fields, leaving the others as
        they are, with their cursor and undo history)."""
        for binding in self.bindings.values():
            if not only or binding.field in only:
                binding.set(getattr(settings, binding.field))

    def store(self, settings: object) -> None:
        for binding in self.bindings.values():
            value = binding.get()
            if value is None:  # a combo box not filled yet (the backend's presets): keep the saved value
                continue
            setattr(settings, binding.field, value)

    def unbound(self, settings: object) -> list[str]:
        """The settings fields no widget shows (the backend's, kept elsewhere in the docker)."""
        from dataclasses import fields

        return [f.name for f in fields(settings) if f.name not in self.bindings]  # type: ignore[arg-type]
