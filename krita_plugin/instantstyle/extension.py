"""Krita registration: the "Stylize Layer" action and the docker (the controller lives in ``controller``)."""

from __future__ import annotations

from krita import DockWidgetFactory, DockWidgetFactoryBase, Extension, Krita  # type: ignore[import-not-found]

from .controller import controller
from .layer_menu import LayerMenuEntry
from .qt import dock_right

STYLIZE_ACTION = "instantstyle_stylize_layer"
GENERATE_ACTION = "instantstyle_generate"
CANCEL_ACTION = "instantstyle_cancel"
DOCKER_ID = "instantstyle_docker"


class InstantStyleExtension(Extension):
    def setup(self) -> None:
        pass

    def createActions(self, window) -> None:
        # In the Layer menu (a shortcut can be set in Settings > Configure Krita) and, through
        # ``layer_menu``, in the Layers docker's right-click menu, which Krita's API does not offer.
        stylize = window.createAction(STYLIZE_ACTION, "Stylize Layer (InstantStyle)", "layer")
        stylize.triggered.connect(lambda: controller().stylize_active_layer())
        LayerMenuEntry(window.qwindow(), stylize).attach()
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
