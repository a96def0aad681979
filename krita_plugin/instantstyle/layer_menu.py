""" "Stylize Layer (InstantStyle)" in the Layers docker's right-click menu.

Krita's Python API has no call for that menu: ``KisLayerBox`` builds a plain ``QMenu`` each time the
layer view asks for a context menu and ``exec()``s it. An event filter on that view and its viewport
(never on the whole application, which would run Python on every event of every widget while
painting; these two see the layer list's own events only) catches the ``ContextMenu`` event; a zero
timer then runs inside the menu's own event loop, where the menu is the active popup, and appends
our action to it (a visible ``QMenu`` re-lays itself out when an action is added). If Krita's
widgets are not found, the entry stays in the Layer menu only, with one log line.
"""

from __future__ import annotations

import logging

from .qt import QAbstractItemView, QApplication, QDockWidget, QEvent, QMenu, QObject, QTimer

log = logging.getLogger(__name__)
LAYERS_DOCKER = "KisLayerBox"
LAYER_VIEW_CLASS = "NodeView"
ATTACH_TRIES = 40
ATTACH_INTERVAL_MS = 500
ENTRIES: list[LayerMenuEntry] = []
"""One per Krita window (kept here so that Python keeps their event filters alive)."""


def layer_view(main_window) -> QAbstractItemView | None:
    """The Layers docker's layer list (Krita's ``NodeView``), or None in a Krita laid out otherwise."""
    docker = next((d for d in main_window.findChildren(QDockWidget) if d.objectName() == LAYERS_DOCKER), None)
    if docker is None:
        return None
    views = docker.findChildren(QAbstractItemView)
    named = [v for v in views if v.metaObject().className() == LAYER_VIEW_CLASS]
    return named[0] if named else None


class LayerMenuEntry(QObject):
    """Adds ``action`` to the Layers docker's right-click menu of one Krita window."""

    def __init__(self, main_window, action) -> None:
        super().__init__(main_window)
        self.main_window = main_window
        self.action = action
        self.viewport = None
        self.tries = 0
        self.added = 0
        """How many menus got the entry (for tests and bug reports)."""
        ENTRIES.append(self)

    def attach(self) -> None:
        """Find the layer view; Krita makes its dockers after ``createActions``: try again a while."""
        try:
            view = layer_view(self.main_window)
        except RuntimeError:  # the window closed while we waited for its dockers
            return
        if view is not None:
            self.viewport = view.viewport()
            self.viewport.installEventFilter(self)  # a right-click
            view.installEventFilter(self)  # the Menu key or Shift+F10 on the focused layer list
            return
        self.tries += 1
        if self.tries < ATTACH_TRIES:
            QTimer.singleShot(ATTACH_INTERVAL_MS, self.attach)
        else:
            log.warning("Layers docker not found: 'Stylize Layer (InstantStyle)' is in the Layer menu only")

    def eventFilter(self, watched, event) -> bool:
        # Must return a bool and never raise: PyQt aborts the whole program on an error here.
        try:
            if event.type() == QEvent.Type.ContextMenu:  # installed on the layer list only
                QTimer.singleShot(0, self._extend_open_menu)
        except Exception:  # the menu works without our entry
            log.exception("layer menu")
        return False

    def _extend_open_menu(self) -> None:
        menu = QApplication.activePopupWidget()
        if not isinstance(menu, QMenu) or self.action in menu.actions():
            return
        menu.addSeparator()
        menu.addAction(self.action)
        self.added += 1
