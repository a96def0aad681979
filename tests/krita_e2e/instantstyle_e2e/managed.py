"""The managed backend in real Krita, from a clean profile, as an artist meets it (test hook, never shipped).

The docker's Backend section says Install; the tiny test model is chosen (offered in test mode), Install
is clicked and ends with the backend running (packages reused from the test environment, no network);
a Stylize with exact pixels; the server killed: restarted and reconnected, another job; Stop, Start;
then Krita quits and the test checks that no server process is left. Everything goes to
``report.json`` in ``INSTANTSTYLE_E2E_OUT``.
"""

import faulthandler
import json
import os
import signal
import time
import traceback
from pathlib import Path

from instantstyle.qt import QDockWidget, QTimer
from krita import Krita

OUT = Path(os.environ["INSTANTSTYLE_E2E_OUT"])
SIZE = 64
SCALE = float(os.environ.get("INSTANTSTYLE_E2E_BUDGET_SCALE", "1"))
BUDGET = float(os.environ.get("INSTANTSTYLE_E2E_MANAGED_BUDGET", "300")) * SCALE
report = {"steps": []}


def log(message):
    report["steps"].append(f"{time.monotonic():.2f} {message}")
    (OUT / "report.json").write_text(json.dumps(report, indent=1))


def children():
    """Krita's child processes (pid, state, command line): what a hang waits on."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if entry.name.isdigit() and int(stat[1]) == os.getpid():
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{entry.name} {stat[0]} {command[:300]}")
        except (OSError, IndexError, ValueError):
            continue
    return found


def pattern_bgra(size):
    data = bytearray()
    for y in range(size):
        for x in range(size):
            data += bytes((((x + y) * 2) % 256, (y * 4) % 256, (x * 4) % 256, 255))  # B, G, R, A
    return bytes(data)


def rgba(bgra):
    data = bytearray(bgra)
    data[0::4], data[2::4] = bgra[2::4], bgra[0::4]
    return bytes(data)


class ManagedRunner:
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
            said = getattr(getattr(self, "controller", None), "message", "")
            line = self.manager.line if getattr(self, "manager", None) is not None else ""
            what = f"{type(error).__name__}: {error}"
            report["where"] = f"stopped in {self.state.__name__}: {what} ({said!r}, {line!r})"
            report["traceback"] = traceback.format_exc()
            report["children"] = children()
            with (OUT / "stacks.txt").open("w") as stacks:
                faulthandler.dump_traceback(stacks, all_threads=True)
            self.finish()

    def docker(self):
        dockers = self.window.qwindow().findChildren(QDockWidget)
        return next(d for d in dockers if d.objectName() == "instantstyle_docker")

    # ------------------------------------------------------------------ install from the docker

    def wait_for_window(self):
        self.window = self.app.activeWindow()
        if self.window is None:
            return
        self.app.setBatchmode(True)
        from instantstyle.controller import controller

        self.controller = controller()
        self.manager = self.controller.link.manager
        docker = self.docker()
        docker.show()
        self.section = docker.backend_section
        self.section.refresh()
        model = self.section.model
        report["fresh"] = {
            "mode": self.controller.settings.backend_mode.value,
            "phase": self.manager.phase.value,
            "button": self.section.primary.text(),
            "line": self.section.state.text(),
            "status": docker.status.full_text(),
            "section_open": self.section.body.isVisible(),
            "models_offered": [model.itemData(i).value for i in range(model.count())],
        }
        # A new artist's first look, in a docker as narrow as Krita's default column (~260 px).
        docker.setFloating(True)
        docker.resize(260, 640)
        self.settle_until = time.monotonic() + 1.0
        self.state = self.narrow_look

    def narrow_look(self):
        if time.monotonic() < self.settle_until:
            return
        from instantstyle.qt import QApplication, QScrollArea

        QApplication.processEvents()
        docker = self.docker()
        scroll = docker.findChild(QScrollArea)
        report["narrow"] = {
            "width": docker.width(),
            "horizontal_scrollbar": scroll.horizontalScrollBar().isVisible(),
            "section_needs": self.section.minimumSizeHint().width(),
        }
        docker.grab().save(str(OUT / "managed-docker-260.png"))
        docker.setFloating(False)
        self.document = self.app.createDocument(SIZE, SIZE, "managed", "RGBA", "U8", "", 72.0)
        self.window.addView(self.document)
        self.layer = self.document.createNode("Painted", "paintlayer")
        self.document.rootNode().addChildNode(self.layer, None)
        self.layer.setPixelData(pattern_bgra(SIZE), 0, 0, SIZE, SIZE)
        self.document.setActiveNode(self.layer)
        (OUT / "source.rgba").write_bytes(rgba(pattern_bgra(SIZE)))
        # The artist picks the model, then clicks Install.
        from instantstyle.managed.model_choice import ManagedModel

        index = self.section.model.findData(ManagedModel.TINY)
        self.section.model.setCurrentIndex(index)
        self.section._model_changed()
        self.install_started = time.monotonic()
        self.section.primary.click()
        log(f"install clicked: {self.manager.line}")
        self.lines = set()
        self.state = self.wait_until_running

    def wait_until_running(self):
        self.lines.add(self.manager.line.split(" (")[0])
        if not (self.manager.phase.value == "running" and self.controller.session.connected):
            return
        report["installed"] = {
            "seconds_to_running": time.monotonic() - self.install_started,
            "lines_seen": sorted(self.lines),
            "button": self.section.primary.text(),
            "status": self.controller.backend_status,
        }
        log("running")
        self.stylize("first", self.after_first)

    # ------------------------------------------------------------------ jobs

    def stylize(self, name, then):
        """Stylize the painted layer (made active again: a result layer became the active one)."""
        self.job_name, self.then = name, then
        self.document.setActiveNode(self.layer)
        self.state = self.stylize_when_active

    def stylize_when_active(self):
        node = self.document.activeNode()
        if self.app.activeDocument() != self.document or node is None or node.name() != "Painted":
            return
        self.jobs_before = len(self.controller.session.history)
        self.job_started = time.monotonic()
        self.controller.stylize_active_layer()
        self.state = self.wait_for_job

    def wait_for_job(self):
        history = self.controller.session.history
        if len(history) <= self.jobs_before or self.controller._in_tick:
            return
        job = history[0]
        (OUT / f"{self.job_name}.rgba").write_bytes(job.images[0].data)
        seconds = time.monotonic() - self.job_started
        report[self.job_name] = {"seconds": seconds, "size": [job.width, job.height]}
        log(f"job {self.job_name} done")
        self.then()

    def after_first(self):
        self.killed_pid = self.manager.server.process.pid
        self.first_url = self.manager.address[0]
        os.kill(self.killed_pid, signal.SIGKILL)
        log(f"server {self.killed_pid} killed")
        self.lines = set()
        self.state = self.wait_restarted

    def wait_restarted(self):
        self.lines.add(self.controller.backend_status)
        server = self.manager.server
        address = self.manager.address
        if server is None or server.restarts != 1 or address is None or address[0] == self.first_url:
            return
        if not self.controller.session.connected or self.controller.session.connection.url != address[0]:
            return
        report["restarted"] = {"restarts": server.restarts, "lines_seen": sorted(self.lines)}
        self.stylize("after_restart", self.stop_and_start)

    def stop_and_start(self):
        self.section.primary.click()  # Stop
        self.state = self.wait_stopped_plan

    def wait_stopped_plan(self):
        """Stopped: the docker asks again what the model needs (a run may have downloaded it)."""
        if self.manager.current_plan is None:
            return
        self.section.refresh()
        report["stopped"] = {
            "phase": self.manager.phase.value,
            "button": self.section.primary.text(),
            "line": self.section.state.text(),
        }
        self.section.check.click()  # what a bug report needs, while the backend is stopped
        self.state = self.wait_checked

    def wait_checked(self):
        box = self.controller.link._check_box
        if self.manager.checking or box is None:
            return
        report["checked"] = {"summary": box.text(), "report": box.detailedText()}
        box.close()
        self.section.primary.click()  # Start
        self.state = self.wait_started_again

    def wait_started_again(self):
        if self.manager.phase.value != "running":
            return
        report["started_again"] = {"pid": self.manager.server.process.pid, "line": self.manager.line}
        self.finish()

    def finish(self):
        self.timer.stop()
        report["finished"] = True
        (OUT / "report.json").write_text(json.dumps(report, indent=1))
        for document in self.app.documents():
            document.setModified(False)
            document.close()
        QTimer.singleShot(200, lambda: self.app.action("file_quit").trigger())
