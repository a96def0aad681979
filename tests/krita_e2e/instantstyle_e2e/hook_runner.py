"""What a one-session test hook shares (never shipped): a report whose steps are timestamped, a state
machine ticked by a ``QTimer`` under one time budget, the plugin's docker, and quitting Krita.

A state is a method; ``tick`` calls the current one every 50 ms. An exception or the budget ends the
session with ``where`` saying which state it stopped in, and ``report.json`` in ``INSTANTSTYLE_E2E_OUT``
is written at each step and at the end.
"""

import json
import os
import time
import traceback
from pathlib import Path

from instantstyle.qt import QDockWidget, QTimer
from krita import Krita

OUT = Path(os.environ["INSTANTSTYLE_E2E_OUT"])
SCALE = float(os.environ.get("INSTANTSTYLE_E2E_BUDGET_SCALE", "1"))


class HookRunner:
    def __init__(self, budget: float):
        self.app = Krita.instance()
        self.report = {"steps": []}
        self.budget = budget * SCALE
        self.started = time.monotonic()
        self.state = self.wait_for_window
        self.timer = QTimer()
        self.timer.timeout.connect(self.tick)
        self.timer.start(50)

    def wait_for_window(self):  # the first state: each hook defines its own
        raise NotImplementedError

    def log(self, message):
        self.report["steps"].append(f"{time.monotonic():.2f} {message}")
        (OUT / "report.json").write_text(json.dumps(self.report, indent=1))

    def tick(self):
        try:
            self.report["where"] = f"in {self.state.__name__}"
            if time.monotonic() - self.started > self.budget:
                raise TimeoutError(f"over its {self.budget:.0f} s budget")
            self.state()
        except Exception as error:
            controller = getattr(self, "controller", None)
            said = f" (the plugin said: {controller.message!r})" if controller is not None else ""
            self.report["where"] = f"stopped in {self.state.__name__}: {type(error).__name__}: {error}{said}"
            self.report["traceback"] = traceback.format_exc()
            self.finish()

    def docker(self):
        dockers = self.window.qwindow().findChildren(QDockWidget)
        return next(d for d in dockers if d.objectName() == "instantstyle_docker")

    def finish(self):
        self.timer.stop()
        self.report["finished"] = True
        if "traceback" not in self.report:
            self.report["where"] = "finished"
        (OUT / "report.json").write_text(json.dumps(self.report, indent=1))
        for document in self.app.documents():
            document.setModified(False)
            document.close()
        QTimer.singleShot(200, lambda: self.app.action("file_quit").trigger())
