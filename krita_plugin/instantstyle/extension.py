"""Krita registration: the "Stylize Layer" action, the docker, and the shared controller."""

from __future__ import annotations

from krita import DockWidgetFactory, DockWidgetFactoryBase, Extension, Krita  # type: ignore[import-not-found]

from .controller import Controller
from .qt import dock_right

STYLIZE_ACTION = "instantstyle_stylize_layer"
GENERATE_ACTION = "instantstyle_generate"
CANCEL_ACTION = "instantstyle_cancel"
DOCKER_ID = "instantstyle_docker"

_controller: Controller | None = None


def controller() -> Controller:
    """The one controller of this Krita session (created on first use)."""
    global _controller
    if _controller is None:
        _controller = Controller()
        _controller.start()
        Krita.instance().notifier().applicationClosing.connect(_controller.shutdown)
    return _controller


class InstantStyleExtension(Extension):
    def setup(self) -> None:
        pass

    def createActions(self, window) -> None:
        # Krita's Python API cannot add entries to the Layers docker's right-click menu, so the
        # action lives in the Layer menu (and can get a shortcut in Settings > Configure Krita).
        stylize = window.createAction(STYLIZE_ACTION, "Stylize Layer (InstantStyle)", "layer")
        stylize.triggered.connect(lambda: controller().stylize_active_layer())
        generate = window.createAction(GENERATE_ACTION, "InstantStyle: Generate", "tools/scripts")
        generate.triggered.connect(lambda: controller().generate())
        cancel = window.createAction(CANCEL_ACTION, "InstantStyle: Cancel", "tools/scripts")
        cancel.triggered.connect(lambda: controller().cancel())


def register() -> None:
    from .docker import InstantStyleDocker

    app = Krita.instance()
    app.addExtension(InstantStyleExtension(app))
    app.addDockWidgetFactory(
        DockWidgetFactory(DOCKER_ID, dock_right(DockWidgetFactoryBase), InstantStyleDocker)
    )
