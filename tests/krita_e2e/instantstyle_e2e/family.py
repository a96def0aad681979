"""An SD1.5 backend in real Krita (test hook, never shipped): the docker follows the model's family.

Once the backend's tiny SD1.5 model is ready: the family and its blocks as the plugin received them,
the docker's block grid (SD1.5's 16 attention blocks), the custom preset's starting map (SD1.5's style
block, ``up_blocks.1``) and the status line; then "Stylize Layer" on a painted layer and its result's
pixels. ``report.json`` in ``INSTANTSTYLE_E2E_OUT``, then Krita quits.
"""

from . import layer_names, new_document, rgba
from .hook_runner import OUT, HookRunner

SIZE = 64


class FamilyRunner(HookRunner):
    def __init__(self):
        super().__init__(budget=400)

    def wait_for_window(self):
        self.window = self.app.activeWindow()
        if self.window is None:
            return
        self.app.setBatchmode(True)
        from instantstyle.controller import controller

        self.controller = controller()
        self.document, self.layer = new_document(self.window, "sd15", SIZE)
        self.source = bytes(self.layer.pixelData(0, 0, SIZE, SIZE))
        self.docker().show()
        self.log("document ready")
        self.state = self.wait_for_model

    def wait_for_model(self):
        session = self.controller.session
        features = session.features
        if not session.connected or not features.attention_blocks:
            return
        docker = self.docker()
        grid = docker.sections.block_grid
        form = docker.form
        form["preset"].setCurrentIndex(form["preset"].findData("custom"))
        custom = form["block_scales"].text() if hasattr(form["block_scales"], "text") else ""
        self.report["family"] = {
            "family": features.family.value,
            "native_side": features.native_side,
            "preset_blocks": features.preset_blocks,
            "grid_blocks": list(grid.boxes),
            "grid_family": grid.family,
            "grid_set": {name: box.value() for name, box in grid.boxes.items() if box.value()},
            "custom_map": custom,
            "status": session.status,
        }
        form["preset"].setCurrentIndex(form["preset"].findData("style"))
        self.log("features read")
        self.layers_before = layer_names(self.document)
        self.app.action("instantstyle_stylize_layer").trigger()
        self.log(f"stylize triggered: {self.controller.message}")
        self.state = self.wait_for_result

    def wait_for_result(self):
        jobs = list(self.controller.session.jobs.values())
        names = layer_names(self.document)
        new = [n for n in names if n not in self.layers_before and n != "InstantStyle preview"]
        if not jobs or not jobs[-1].state.finished or not new or self.controller._in_tick:
            return
        result = next(n for n in self.document.rootNode().childNodes() if n.name() == new[0])
        (OUT / "source.rgba").write_bytes(rgba(self.source))
        (OUT / "layer.rgba").write_bytes(rgba(bytes(result.pixelData(0, 0, SIZE, SIZE))))
        self.report["stylize"] = {
            "new_layers": new,
            "state": jobs[-1].state.value,
            "message": self.controller.message,
            "source_unchanged": bytes(self.layer.pixelData(0, 0, SIZE, SIZE)) == self.source,
        }
        self.finish()
