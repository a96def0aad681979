"""An SD1.5 backend in real Krita (test hook, never shipped): the docker follows the model's family.

Once the backend's tiny SD1.5 model is ready: the family and its blocks as the plugin received them,
the docker's block grid (SD1.5's 16 attention blocks), the custom preset's starting map (SD1.5's style
block, ``up_blocks.1``) and the status line; then "Stylize Layer" on a painted layer and its result's
pixels. ``report.json`` in ``INSTANTSTYLE_E2E_OUT``, then Krita quits.
"""

import json
import os
import time
import traceback
from pathlib import Path

from instantstyle.qt import QDockWidget, QTimer
from krita import Krita

from . import layer_names, new_document, rgba

OUT = Path(os.environ["INSTANTSTYLE_E2E_OUT"])
SIZE = 64
BUDGET = 400 * float(os.environ.get("INSTANTSTYLE_E2E_BUDGET_SCALE", "1"))
report = {"steps": []}


def log(message):
    report["steps"].append(f"{time.monotonic():.2f} {message}")
    (OUT / "report.json").write_text(json.dumps(report, indent=1))


class FamilyRunner:
    def __init__(self):
        self.app = Krita.instance()
        self.started = time.monotonic()
        self.state = self.wait_for_window
        self.timer = QTimer()
        self.timer.timeout.connect(self.tick)
        self.timer.start(50)

    def tick(self):
        try:
            report["where"] = f"in {self.state.__name__}"
            if time.monotonic() - self.started > BUDGET:
                raise TimeoutError(f"over its {BUDGET:.0f} s budget")
            self.state()
        except Exception as error:
            report["where"] = f"stopped in {self.state.__name__}: {type(error).__name__}: {error}"
            report["traceback"] = traceback.format_exc()
            self.finish()

    def docker(self):
        dockers = self.window.qwindow().findChildren(QDockWidget)
        return next(d for d in dockers if d.objectName() == "instantstyle_docker")

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
        log("document ready")
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
        report["family"] = {
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
        log("features read")
        self.layers_before = layer_names(self.document)
        self.app.action("instantstyle_stylize_layer").trigger()
        log(f"stylize triggered: {self.controller.message}")
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
        report["stylize"] = {
            "new_layers": new,
            "state": jobs[-1].state.value,
            "message": self.controller.message,
            "source_unchanged": bytes(self.layer.pixelData(0, 0, SIZE, SIZE)) == self.source,
        }
        self.finish()

    def finish(self):
        self.timer.stop()
        report["finished"] = True
        if "traceback" not in report:
            report["where"] = "finished"
        (OUT / "report.json").write_text(json.dumps(report, indent=1))
        for document in self.app.documents():
            document.setModified(False)
            document.close()
        QTimer.singleShot(200, lambda: self.app.action("file_quit").trigger())
