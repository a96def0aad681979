"""Test hook that runs inside real Krita (never shipped): drives the InstantStyle plugin like an artist.

Scenarios, one Krita session, each with its own time budget:
0. startup: Krita's window, the plugin's docker, settings and connection;
1. paint a layer, run the "Stylize Layer" action against the backend, wait for the result;
2. cancel a running job from the "InstantStyle: Cancel" action;
3. close a document while its job runs (run after 14: see ``start_close_scenario``);
4. stylize a layer of a 16-bit document;
5. stylize with two weighted references (the layer and an image file);
6. stylize only a selection (inpaint inside it, result placed at its bounds);
7. a new image in the style of the layer, from the docker's Generate button;
8. restyle keeping the layer's lines (Canny + ControlNet) from the Stylize Layer action;
9. apply the newest of the docker's recent results as a layer once more;
10. the docker's layout: its main path fits on screen, a grid box per UNet attention block, tooltips;
11. a sampler and a LoRA chosen in the docker reach the engine; then the precise preset does; then a
    two-region job (a saved selection and a layer's alpha, each with its own reference); then a
    2x2 strength sweep into one layer group, its scores in the results, Keep one picture; then Find
    strength (the map of the server's search, a click on a point paints it), then keep-lines through
    the Tile ControlNet;
12. live mode: a result right away, a stroke re-rendered, Apply, the live layer gone when live stops;
13. live mode at 1024²: a stroke while a live job runs replaces it (latest wins); losing the backend
    stops live mode;
14. import the plugin's zip with Krita's own "Import Python Plugin from File" code;
15. live mode on a new document, then File > Close: live mode stops (last: see that scenario).
Everything observed goes to ``report.json`` in ``INSTANTSTYLE_E2E_OUT``, each scenario's part once it
finished; ``where`` says which scenario is running and in which state, or where it stopped. Then Krita quits.
"""

import faulthandler
import json
import os
import tempfile
import time
import traceback
from pathlib import Path

from instantstyle.qt import QApplication, QDockWidget, QImage, QTimer
from krita import InfoObject, Krita

OUT = Path(os.environ["INSTANTSTYLE_E2E_OUT"])
SIZE = 64
SELECTION = (8, 24, 32, 32)  # x, y, width, height
report = {"steps": []}
# Seconds each scenario may take on a busy 2-core machine: generous, yet a hang is reported long before
# the test's own limit, with the scenario it happened in.
SCALE = float(os.environ.get("INSTANTSTYLE_E2E_BUDGET_SCALE", "1"))
BUDGETS = {"startup": 240, "stylize": 90, "screenshots": 30, "zip_import": 30, "live_supersede": 120}
LIVE = "InstantStyle live"
DEFAULT_BUDGET = 60
NUDGE_SECONDS = 3.0
"""How long a scenario waits for Krita to make its document and layer active before asking again."""


def log(message):
    report["steps"].append(f"{time.monotonic():.2f} {message}")
    (OUT / "report.json").write_text(json.dumps(report, indent=1))


def pattern(size):
    """An opaque painted-looking pattern, RGBA."""
    data = bytearray()
    for y in range(size):
        for x in range(size):
            data += bytes(((x * 4) % 256, (y * 4) % 256, ((x + y) * 2) % 256, 255))
    return bytes(data)


def rgba(bgra):
    data = bytearray(bgra)
    data[0::4], data[2::4] = bgra[2::4], bgra[0::4]
    return bytes(data)


def layer_names(document):
    return [node.name() for node in document.rootNode().childNodes()]


def sixteen(data):
    """8-bit channels as Krita's U16 (little-endian, v * 257)."""
    out = bytearray(len(data) * 2)
    out[0::2] = data
    out[1::2] = data
    return bytes(out)


def new_document(window, name, size, depth="U8"):
    app = Krita.instance()
    document = app.createDocument(size, size, name, "RGBA", depth, "", 72.0)
    window.addView(document)
    layer = document.createNode("Painted", "paintlayer")
    document.rootNode().addChildNode(layer, None)
    bgra = rgba(pattern(size))  # the pattern's BGRA is rgba() of its RGBA
    layer.setPixelData(sixteen(bgra) if depth == "U16" else bgra, 0, 0, size, size)
    document.setActiveNode(layer)
    document.refreshProjection()
    return document, layer


class Runner:
    def __init__(self):
        self.app = Krita.instance()
        # If Krita's event loop ever hangs, leave every thread's Python stack behind for the test.
        self._stacks = (OUT / "stacks.txt").open("w")
        # If Krita crashes while Python code calls into it, the Python line that made the call.
        faulthandler.enable(file=self._stacks, all_threads=True)
        self.begin("startup", self.wait_for_window)
        self.timer = QTimer()
        self.timer.timeout.connect(self.tick)
        self.timer.start(50)

    def begin(self, scenario, state):
        """Start ``scenario`` in ``state`` with its own budget."""
        self.scenario = scenario
        self.activity = None
        self.started = time.monotonic()
        self.budget = BUDGETS.get(scenario, DEFAULT_BUDGET) * SCALE
        faulthandler.dump_traceback_later(self.budget + 30, file=self._stacks)
        self.state = state
        log(f"scenario {scenario} started")

    def done(self, part):
        """The running scenario finished: its observations join the report."""
        report[self.scenario] = part
        log(f"scenario {self.scenario} done in {time.monotonic() - self.started:.1f} s")

    def tick(self):
        try:
            where = f"'{self.scenario}' is in {self.state.__name__}"
            if report.get("where") != where:  # on disk at once: a crash leaves where it was
                report["where"] = where
                (OUT / "report.json").write_text(json.dumps(report, indent=1))
            if time.monotonic() - self.started > self.budget:
                raise TimeoutError(f"over its {self.budget:.0f} s budget")
            self.state()
        except Exception as error:
            elapsed = time.monotonic() - self.started
            controller = getattr(self, "controller", None)
            said = f" (the plugin said: {controller.message!r})" if controller is not None else ""
            if getattr(self, "activity", None) and isinstance(error, TimeoutError):
                said += f" (its last check of the active layer: {self.activity})"
            report["where"] = (
                f"'{self.scenario}' stopped in {self.state.__name__} after {elapsed:.0f} s: "
                f"{type(error).__name__}: {error}{said}"
            )
            report["traceback"] = traceback.format_exc()
            self.finish()

    # -------------------------------------------------------------- scenario 1: stylize a layer

    def wait_for_window(self):
        self.window = self.app.activeWindow()
        if self.window is None:
            return
        self.app.setBatchmode(True)  # before createDocument: documents copy the flag when created
        from instantstyle.controller import controller

        self.controller = controller()
        from instantstyle.qt import QT_MAJOR

        self.startup = {
            "krita_version": self.app.version(),
            "qt_major": QT_MAJOR,
            "resources": self.app.getAppDataLocation(),
            "dockers": [d.objectName() for d in self.app.dockers()],
            "settings_loaded": {
                "prompt": self.controller.settings.prompt,
                "seed": self.controller.settings.seed,
                "url": self.controller.settings.server_url,
            },
        }
        self.document, self.layer = new_document(self.window, "e2e", SIZE)
        self.source_before = bytes(self.layer.pixelData(0, 0, SIZE, SIZE))
        log("document ready")
        self.state = self.wait_for_connection

    def wait_for_connection(self):
        if not self.controller.session.connected:
            return
        self.done({**self.startup, "status": self.controller.session.status})
        # Room for the docker in the screenshots: a maximised window with only Layers beside it.
        # Xvfb has no window manager to maximise with: size the window to the screen directly.
        self.window.qwindow().setGeometry(QApplication.primaryScreen().availableGeometry())
        for other in self.window.qwindow().findChildren(QDockWidget):
            if other.objectName() not in ("instantstyle_docker", "KisLayerBox", "ToolBox"):
                other.hide()
        dock = self.docker()
        dock.show()
        dock.raise_()
        self.layers_before = layer_names(self.document)
        self.preview_seen = False
        self.previews_painted = []
        # A 3-step tiny job can start and finish between two polls: watch the preview layer where the
        # controller paints each preview it keeps.
        handle = self._unwatched_handle = self.controller._handle

        def watched_handle(update):
            handle(update)
            if update.kind.value != "preview" or update.job.live:
                return
            self.preview_seen = self.preview_seen or "InstantStyle preview" in layer_names(self.document)
            if self.preview_seen:
                self.keep_preview(update)

        self.controller._handle = watched_handle
        self.begin("stylize", self.wait_for_result)
        self.app.action("instantstyle_stylize_layer").trigger()
        log(f"stylize triggered: {self.controller.message}")

    def keep_preview(self, update):
        """Each preview painted: its step and size; the first's and the last's frame as received, and
        the preview layer's pixels right after painting it."""
        layer = next(n for n in self.document.rootNode().childNodes() if n.name() == "InstantStyle preview")
        which = "first" if not self.previews_painted else "last"
        (OUT / f"preview_{which}_frame.raw").write_bytes(update.preview.data)
        (OUT / f"preview_{which}_layer.rgba").write_bytes(rgba(bytes(layer.pixelData(0, 0, SIZE, SIZE))))
        frame = update.preview
        self.previews_painted.append(
            {"step": update.step, "size": [frame.width, frame.height], "channels": frame.channels}
        )

    def wait_for_result(self):
        names = layer_names(self.document)
        self.preview_seen = self.preview_seen or "InstantStyle preview" in names
        history = self.controller.session.history
        new_layers = [n for n in names if n not in self.layers_before and n != "InstantStyle preview"]
        # Krita's layer operations can spin nested event loops, so this tick may run while the
        # controller is still applying the result: wait until the layer is really there.
        if not history or not new_layers or self.controller._in_tick:
            return
        job = history[0]
        self.controller._handle = self._unwatched_handle  # the other scenarios' previews go unwatched
        stylize = {
            "layers_before": self.layers_before,
            "layers_after": names,
            "new_layers": new_layers,
            "preview_seen": self.preview_seen,
            "previews_painted": self.previews_painted,
            "total_steps": job.total,
            "message": self.controller.message,
            "seed": job.seed,
            "job_size": [job.width, job.height],
            "source_unchanged": bytes(self.layer.pixelData(0, 0, SIZE, SIZE)) == self.source_before,
        }
        result_layer = next(n for n in self.document.rootNode().childNodes() if n.name() in new_layers)
        result_rgba = rgba(bytes(result_layer.pixelData(0, 0, SIZE, SIZE)))
        (OUT / "source.rgba").write_bytes(rgba(self.source_before))
        (OUT / "layer.rgba").write_bytes(result_rgba)
        (OUT / "received.rgba").write_bytes(job.images[0].data)
        stylize["layer_equals_received"] = result_rgba == job.images[0].data
        # Batch mode is per document (fixed when it is created): without it, the PNG options
        # dialog opens modally, invisibly under Xvfb, and exportImage never returns.
        if hasattr(self.document, "setBatchmode"):
            self.document.setBatchmode(True)
        self.document.refreshProjection()
        self.document.waitForDone()
        log("exporting")
        # exportImage spins a nested event loop: without stopping our timer, tick() would re-enter
        # this state and start a second export inside the first, which never returns.
        self.timer.stop()
        stylize["exported"] = self.document.exportImage(str(OUT / "canvas.png"), InfoObject())
        self.timer.start(50)
        self.done(stylize)
        self.settle_until = time.monotonic() + 1.0
        self.begin("screenshots", self.screenshot)

    def docker(self):
        return next(
            d
            for d in self.window.qwindow().findChildren(QDockWidget)
            if d.objectName() == "instantstyle_docker"
        )

    def screenshot(self):
        if time.monotonic() < self.settle_until:
            return
        QApplication.processEvents()
        self.window.qwindow().grab().save(str(OUT / "krita-window.png"))
        dock = self.docker()
        dock.setFloating(True)
        dock.resize(460, 1000)
        self.settle_until = time.monotonic() + 0.7
        self.state = self.screenshot_docker

    def screenshot_docker(self):
        if time.monotonic() < self.settle_until:
            return
        QApplication.processEvents()
        dock = self.docker()
        dock.grab().save(str(OUT / "krita-docker.png"))
        dock.setFloating(False)
        self.done({"saved": ["krita-window.png", "krita-docker.png"]})
        self.start_cancel_scenario()

    def finished_result(self, document, layers_before):
        """(job, result layer) once the newest job has finished and its layer is in ``document``."""
        jobs = list(self.controller.session.jobs.values())
        names = layer_names(document)
        new_layers = [n for n in names if n not in layers_before and n != "InstantStyle preview"]
        # Krita's layer operations can spin nested event loops: wait until the controller is done.
        if not jobs or not jobs[-1].state.finished or not new_layers or self.controller._in_tick:
            return None
        return jobs[-1], next(n for n in document.rootNode().childNodes() if n.name() == new_layers[0])

    def painted_active(self, document):
        """Whether ``document`` is the active one with its "Painted" layer active; if that has not
        happened after a while, ask again, as an artist clicks the document's tab or the layer.

        Krita applies a new view, ``setActiveNode`` and the activation of a layer the plugin just
        added in later events, in an order that varies under load: a request made once can be
        overtaken (the newly added layer becomes active after it). Asking every tick is no cure:
        Krita 5.1 SAFE ASSERTs ("shape", kis_node_manager.cpp) on a node activated before its view's
        canvas has the layer's shape, and crashed later in the session; so ask only every
        ``NUDGE_SECONDS`` while it still does not hold.
        """
        active = self.app.activeDocument()
        node = document.activeNode()
        self.activity = (
            f"active document {active.name() if active else None!r} (want {document.name()!r}), "
            f"active node {node.name() if node else None!r} (want 'Painted'), "
            f"connected {self.controller.session.connected}"
        )
        if active == document and node is not None and node.name() == "Painted":
            self._waiting_for = None  # the next wait starts afresh
            return True
        now = time.monotonic()
        if getattr(self, "_waiting_for", None) is not document:
            self._waiting_for, self._next_nudge = document, now + NUDGE_SECONDS
        if now < self._next_nudge or self.controller._in_tick:
            return False
        self._next_nudge = now + NUDGE_SECONDS
        if active != document:
            log(f"nudging: {self.activity}")
            for view in self.window.views():
                if view.document() == document:
                    self.window.showView(view)
            return False
        painted = next((n for n in document.rootNode().childNodes() if n.name() == "Painted"), None)
        if painted is not None:
            log(f"nudging: {self.activity}")
            document.setActiveNode(painted)
        return False

    def when_active(self, scenario, document, act, then):
        """Start ``scenario``: once ``document`` and its painted layer are active and the backend is
        connected (scenario 13 reconnects), ``act``, then wait in ``then``."""

        def wait_active_layer():
            if not self.painted_active(document) or not self.controller.session.connected:
                return
            act()
            self.state = then

        self.begin(scenario, wait_active_layer)

    def stylize_when_active(self, scenario, document, then):
        self.when_active(
            scenario, document, lambda: self.app.action("instantstyle_stylize_layer").trigger(), then
        )

    # -------------------------------------------------------------- scenario 2: cancel from the action

    def start_cancel_scenario(self):
        self.document2, _ = new_document(self.window, "cancel", 256)
        self.docker().form["steps"].setValue(150)  # the docker's values are what a job uses
        self.stylize_when_active("cancel", self.document2, self.cancel_after_preview)

    def cancel_after_preview(self):
        if "InstantStyle preview" not in layer_names(self.document2):
            return
        self.app.action("instantstyle_cancel").trigger()
        self.state = self.wait_cancelled

    def wait_cancelled(self):
        job = list(self.controller.session.jobs.values())[-1]
        # Krita's layer operations spin nested event loops: wait until the controller has handled
        # the cancellation (removed the preview), not just heard of it.
        if not job.state.finished or self.controller._in_tick:
            return
        self.done(
            {
                "state": job.state.value,
                "step": job.step,
                "total": job.total,
                "layers_after": layer_names(self.document2),
                "message": self.controller.message,
            }
        )
        self.start_deep_scenario()

    # ------------------------------- scenario 3 (after 14): close the document mid-job, then 15

    def start_close_scenario(self):
        """On Krita 5.1 both closing scenarios' documents are made before either closes: 5.1 tears a
        closed document's view down in later events, and a view or document made after that crashed
        Krita 5.1.5 now and then (``addView``, ``createDocument``: faulthandler stacks in soak and CI
        runs, once right after this scenario), taking every later scenario with it. Krita 6.0 crashed
        instead (in ``KisNodeShape``, adding the live layer) on a document made before the close, and
        never on one made after it: there scenario 15 makes its own."""
        self.document15 = None
        if self.app.version().startswith("5.1"):
            self.document15, _ = new_document(self.window, "live close", SIZE)
        # Enough steps that the job surely still runs one tick after its first preview, few enough
        # that waiting for its end costs seconds.
        self.document3, _ = new_document(self.window, "closing", 256)
        self.docker().form["steps"].setValue(20)
        self.stylize_when_active("close", self.document3, self.close_after_preview)

    def close_after_preview(self):
        if "InstantStyle preview" not in layer_names(self.document3):
            return
        self.closing_job = list(self.controller.session.jobs.values())[-1]
        self.running_when_closed = not self.closing_job.state.finished
        self.document3.setModified(False)
        # As an artist closes it: File > Close on its (active) view. libkis' Document.close() on the
        # document createDocument made sometimes left Krita 6.0 calling into the discarded image (a
        # SAFE ASSERT in KisDocument.cpp, then a crash in KisUpdateScheduler under refreshProjection:
        # 3 times in about 40 closes under load); File > Close never did (60 closes, same load).
        self.app.action("file_close").trigger()
        self.state = self.wait_closed_job
        log("document closed mid-job")

    def wait_closed_job(self):
        job = self.closing_job
        if not job.state.finished or self.controller._in_tick:
            return
        self.done(
            {
                "running_when_closed": self.running_when_closed,
                "state": job.state.value,
                "message": self.controller.message,
                "in_history": job in self.controller.session.history,
                "krita_alive": self.app.activeWindow() is not None,
                "documents": len(self.app.documents()),
                "closed": self.document3 not in self.app.documents(),
            }
        )
        self.docker().form["steps"].setValue(5)
        self.start_live_close_scenario()

    # -------------------------------------------------------------- scenario 4: a 16-bit document

    def start_deep_scenario(self):
        self.document4, self.layer4 = new_document(self.window, "deep", SIZE, depth="U16")
        self.source4 = bytes(self.layer4.pixelData(0, 0, SIZE, SIZE))
        self.docker().form["steps"].setValue(5)
        self.layers4_before = layer_names(self.document4)
        self.stylize_when_active("deep", self.document4, self.wait_deep_result)

    def wait_deep_result(self):
        finished = self.finished_result(self.document4, self.layers4_before)
        if finished is None:
            return
        job, node = finished
        data16 = bytes(node.pixelData(0, 0, SIZE, SIZE))
        self.done(
            {
                "depth": node.colorDepth(),
                "new_layers": [node.name()],
                "layer_equals_received": rgba(data16[1::2]) == job.images[0].data,
                "exact_16_bit": data16 == sixteen(rgba(job.images[0].data)),
                "source_unchanged": bytes(self.layer4.pixelData(0, 0, SIZE, SIZE)) == self.source4,
                # Same pattern and settings as scenario 1, read from 16 bits: the same picture.
                "equals_8_bit_result": rgba(data16[1::2]) == (OUT / "layer.rgba").read_bytes(),
            }
        )
        self.start_two_references_scenario()

    # -------------------------------------------------------------- scenario 5: two weighted references

    def start_two_references_scenario(self):
        from instantstyle.settings import StyleSource, StyleSourceKind

        checker = bytes(
            v
            for y in range(32)
            for x in range(32)
            for v in ((255, 40, 40, 255) if (x // 8 + y // 8) % 2 else (20, 20, 200, 255))
        )
        path = OUT / "second-style.png"
        QImage(checker, 32, 32, 32 * 4, QImage.Format.Format_RGBA8888).save(str(path))
        self.document5, self.layer5 = new_document(self.window, "two references", SIZE)
        self.layers5_before = layer_names(self.document5)
        self.row5 = self.docker().styles.add(StyleSource(StyleSourceKind.FILE, path=str(path), weight=0.5))
        self.stylize_when_active("two_references", self.document5, self.wait_two_references)

    def wait_two_references(self):
        finished = self.finished_result(self.document5, self.layers5_before)
        if finished is None:
            return
        _, node = finished
        (OUT / "two-refs-layer.rgba").write_bytes(rgba(bytes(node.pixelData(0, 0, SIZE, SIZE))))
        self.done(
            {
                "styles": [s.kind.value for s in self.controller.settings.styles],
                "weights": [s.weight for s in self.controller.settings.styles],
            }
        )
        self.docker().styles.remove(self.row5)
        self.start_selection_scenario()

    # -------------------------------------------------------------- scenario 6: only the selection

    def start_selection_scenario(self):
        from krita import Selection

        self.document6, self.layer6 = new_document(self.window, "selection", SIZE)
        selection = Selection()
        selection.select(*SELECTION, 255)
        # libkis' setSelection writes the image's global selection directly, outside Krita's strokes:
        # let the new document's projection refresh finish first.
        self.document6.waitForDone()
        self.document6.setSelection(selection)
        self.layers6_before = layer_names(self.document6)
        self.stylize_when_active("selection", self.document6, self.wait_selection_result)

    def wait_selection_result(self):
        finished = self.finished_result(self.document6, self.layers6_before)
        if finished is None:
            return
        job, node = finished
        bounds = node.bounds()
        (OUT / "selection-layer.rgba").write_bytes(rgba(bytes(node.pixelData(0, 0, SIZE, SIZE))))
        self.done(
            {
                "bounds": [bounds.x(), bounds.y(), bounds.width(), bounds.height()],
                "job_size": [job.width, job.height],
                "target": [job.target.x, job.target.y, job.target.width, job.target.height],
            }
        )
        # The selection stays: the next scenarios use their own documents. (Clearing it through libkis'
        # setSelection, which writes the image's selection outside Krita's strokes, was followed by a
        # silent Krita 5.1 crash in 2 of 10 runs under load; the plugin itself never writes selections.)
        self.start_new_image_scenario()

    # -------------------------------------------------------------- scenario 7: a new image, from the button

    def start_new_image_scenario(self):
        from instantstyle.settings import JobKind

        self.document7, _ = new_document(self.window, "new image", SIZE)
        self.layers7_before = layer_names(self.document7)
        docker = self.docker()
        docker.form["kind"].setCurrentIndex(docker.form["kind"].findData(JobKind.NEW_IMAGE))
        self.when_active("new_image", self.document7, docker.generate_button.click, self.wait_new_image)

    def wait_new_image(self):
        finished = self.finished_result(self.document7, self.layers7_before)
        if finished is None:
            return
        job, node = finished
        (OUT / "new-image-layer.rgba").write_bytes(rgba(bytes(node.pixelData(0, 0, SIZE, SIZE))))
        self.done({"saved_kind": self.controller.settings.kind.value, "total": job.total})
        self.start_keep_lines_scenario()

    # -------------------------------------------------------------- scenario 8: keep the lines (ControlNet)

    def start_keep_lines_scenario(self):
        from instantstyle.settings import JobKind

        self.document8, _ = new_document(self.window, "keep lines", SIZE)
        self.layers8_before = layer_names(self.document8)
        docker = self.docker()
        docker.form["kind"].setCurrentIndex(docker.form["kind"].findData(JobKind.KEEP_LINES))
        docker.form["control_scale"].setValue(0.8)
        self.stylize_when_active("keep_lines", self.document8, self.wait_keep_lines)

    def wait_keep_lines(self):
        finished = self.finished_result(self.document8, self.layers8_before)
        if finished is None:
            return
        job, node = finished
        (OUT / "keep-lines-layer.rgba").write_bytes(rgba(bytes(node.pixelData(0, 0, SIZE, SIZE))))
        self.done(
            {
                "state": job.state.value,
                "total": job.total,
                "modes": [m.value for m in self.controller.session.hello.modes],
            }
        )
        self.begin("apply_from_history", self.apply_from_history)

    # ------------------------------------------------------- scenario 9: a recent result, applied again

    def apply_from_history(self):
        """Select the newest of the docker's recent results and apply it as a layer once more."""
        docker = self.docker()
        docker.refresh()
        first = docker.results.list.item(0)
        docker.refresh()  # nothing changed: the list must keep its items (not rebuild them every tick)
        stable = docker.results.list.item(0) is first
        before = layer_names(self.document8)
        docker.results.list.setCurrentRow(0)
        job, index = docker.results.selected()
        docker.results.apply_selected()
        added = [n for n in layer_names(self.document8)[len(before) :]]
        nodes = [n for n in self.document8.rootNode().childNodes() if n.name() == job.layer_names[index]]
        self.done(
            {
                "history_stable": stable,
                "job_is_newest": job is self.controller.session.history[0] and index == 0,
                "added": added,
                "same_pixels": len(nodes) == 2
                and bytes(nodes[0].pixelData(0, 0, SIZE, SIZE))
                == bytes(nodes[1].pixelData(0, 0, SIZE, SIZE)),
            }
        )
        self.begin("docker_layout", self.docker_layout)

    # -------------------------------------------------------------- scenario 10: the docker's layout

    def docker_layout(self):
        """The main path fits in ~900 px with the sections closed; the block grid follows the UNet."""
        from instantstyle.qt import QAbstractButton, QWidget

        docker = self.docker()
        for section in docker.sections.all():
            section.set_open(False)
        body = docker.scroll.widget()
        body.adjustSize()
        closed = body.sizeHint().height()
        docker.sections.by_name["blocks"].set_open(True)
        features = self.controller.session.features
        editors = ("QDoubleSpinBox", "QSpinBox", "QComboBox", "QLineEdit", "QPlainTextEdit")

        def own_control(widget):
            """Buttons and editors an artist uses (not the line edit inside a spin box or combo)."""
            name = widget.metaObject().className()
            parent = widget.parentWidget().metaObject().className() if widget.parentWidget() else ""
            inner = parent.endswith(("SpinBox", "ComboBox", "Combo"))
            return (
                widget.isVisibleTo(body)
                and not inner
                and (isinstance(widget, QAbstractButton) or name in editors)
            )

        controls = [w for w in body.findChildren(QWidget) if own_control(w)]
        untitled = [
            f"{w.metaObject().className()}:{getattr(w, 'text', lambda: '')()}"
            for w in controls
            if not w.toolTip()
        ]
        docker.sections.by_name["blocks"].set_open(False)
        speed = docker.form["speed_preset"]
        self.layout_part = {
            "closed_height": closed,
            "grid_blocks": list(docker.sections.block_grid.boxes),
            "announced_blocks": features.attention_blocks,
            "speed_presets": [speed.itemData(i) for i in range(speed.count())],
            "loras_offered": docker.sections.loras.offered,
            "without_tooltip": untitled,
        }
        # A screenshot with the sections open: the block grid (custom scales), sampling, LoRAs.
        docker.form["preset"].setCurrentIndex(docker.form["preset"].findData("custom"))
        for name in ("blocks", "sampling", "loras"):
            docker.sections.by_name[name].set_open(True)
        docker.setFloating(True)
        docker.resize(460, 1400)
        self.settle_until = time.monotonic() + 0.7
        self.state = self.screenshot_sections

    def screenshot_sections(self):
        if time.monotonic() < self.settle_until:
            return
        QApplication.processEvents()
        docker = self.docker()
        docker.grab().save(str(OUT / "krita-docker-sections.png"))
        docker.setFloating(False)
        for section in docker.sections.all():
            section.set_open(False)
        docker.form["preset"].setCurrentIndex(docker.form["preset"].findData("style"))
        self.done(self.layout_part)
        self.start_lora_sampler_scenario()

    # -------------------------------------------------------------- scenario 11: sampler and LoRA

    def start_lora_sampler_scenario(self):
        from instantstyle.settings import JobKind, LoraChoice

        self.document11, _ = new_document(self.window, "lora", SIZE)
        self.layers11_before = layer_names(self.document11)
        docker = self.docker()
        docker.form["kind"].setCurrentIndex(docker.form["kind"].findData(JobKind.STYLIZE))
        docker.form["sampler"].setCurrentIndex(docker.form["sampler"].findData("dpmpp_2m_karras"))
        docker.sections.loras.add(LoraChoice("style", 0.8))
        self.when_active(
            "lora_sampler", self.document11, docker.generate_button.click, self.wait_lora_sampler
        )

    def wait_lora_sampler(self):
        finished = self.finished_result(self.document11, self.layers11_before)
        if finished is None:
            return
        job, node = finished
        (OUT / "lora-layer.rgba").write_bytes(rgba(bytes(node.pixelData(0, 0, SIZE, SIZE))))
        settings = self.controller.settings
        self.done(
            {
                "state": job.state.value,
                "sampler": settings.sampler,
                "loras": [[lora.name, lora.weight] for lora in settings.loras],
            }
        )
        docker = self.docker()
        docker.form["sampler"].setCurrentIndex(0)
        docker.sections.loras.set_values([])
        self.start_precise_scenario()

    # ------------------------------------------------- scenario 11b: the precise preset

    def start_precise_scenario(self):
        self.document_p, _ = new_document(self.window, "precise", SIZE)
        self.layers_p_before = layer_names(self.document_p)
        docker = self.docker()
        docker.form["preset"].setCurrentIndex(docker.form["preset"].findData("precise"))
        docker.form["layout_push"].setValue(1.5)
        self.when_active("precise", self.document_p, docker.generate_button.click, self.wait_precise)

    def wait_precise(self):
        finished = self.finished_result(self.document_p, self.layers_p_before)
        if finished is None:
            return
        job, node = finished
        (OUT / "precise-layer.rgba").write_bytes(rgba(bytes(node.pixelData(0, 0, SIZE, SIZE))))
        settings = self.controller.settings
        self.done({"state": job.state.value, "preset": settings.preset, "layout_push": settings.layout_push})
        self.docker().form["preset"].setCurrentIndex(self.docker().form["preset"].findData("style"))
        self.start_regions_scenario()

    # ------------------------------------------------- scenario 11c: two regions

    def start_regions_scenario(self):
        """The sky (a saved selection) in the checker file's style, the ground (a layer's alpha) in the
        painted layer's: a new image from the Generate button."""
        from instantstyle.settings import JobKind, RegionMaskKind, RegionSetting, StyleSource, StyleSourceKind
        from krita import Selection

        self.document_r, self.layer_r = new_document(self.window, "regions", SIZE)
        ground = self.document_r.createNode("Ground mask", "paintlayer")
        self.document_r.rootNode().addChildNode(ground, None)
        opaque = bytes((0, 0, 0, 255)) * SIZE
        for y in range(SIZE // 2, SIZE):
            ground.setPixelData(opaque, 0, y, SIZE, 1)
        self.document_r.setActiveNode(self.layer_r)
        self.document_r.waitForDone()
        selection = Selection()
        selection.select(0, 0, SIZE, SIZE // 2, 255)
        self.document_r.setSelection(selection)
        self.layers_r_before = layer_names(self.document_r)
        docker = self.docker()
        docker.form["kind"].setCurrentIndex(docker.form["kind"].findData(JobKind.NEW_IMAGE))
        checker = StyleSource(StyleSourceKind.FILE, path=str(OUT / "second-style.png"))
        sky = RegionSetting("sky", RegionMaskKind.SELECTION, "", checker)
        self.sky_row = docker.sections.regions.add(sky)
        painted = StyleSource(StyleSourceKind.ACTIVE_LAYER)
        docker.sections.regions.add(RegionSetting("ground", RegionMaskKind.LAYER, "Ground mask", painted))
        self.begin("regions", self.save_sky_selection)

    def save_sky_selection(self):
        document = self.document_r
        if not self.painted_active(document):  # Krita made the new mask layer active meanwhile
            return
        if document.selection() is None:
            return
        self.sky_row.save_selection.emit(self.sky_row)  # the row's "Save selection" button
        self.saved_message = self.controller.message
        self.app.action("deselect").trigger()  # Select > Deselect, as an artist does
        self.state = self.generate_regions

    def generate_regions(self):
        selection = self.document_r.selection()
        if selection is not None and selection.width() > 0:
            return
        self.docker().generate_button.click()
        self.state = self.wait_regions_result

    def wait_regions_result(self):
        finished = self.finished_result(self.document_r, self.layers_r_before)
        if finished is None:
            return
        job, node = finished
        (OUT / "regions-layer.rgba").write_bytes(rgba(bytes(node.pixelData(0, 0, SIZE, SIZE))))
        settings = self.controller.settings
        self.done(
            {
                "state": job.state.value,
                "size": [job.width, job.height],
                "regions": [
                    [r.name, r.mask_kind.value, r.mask_layer, r.reference.kind.value]
                    for r in settings.regions
                ],
                "saved_message": self.saved_message,
            }
        )
        docker = self.docker()
        docker.sections.regions.set_values([])
        self.start_sweep_scenario()

    # ------------------------------------------------- scenario 11d: a strength sweep, Keep

    def start_sweep_scenario(self):
        self.document_s, _ = new_document(self.window, "sweep", SIZE)
        docker = self.docker()
        docker.form["sweep_first"].setCurrentIndex(docker.form["sweep_first"].findData("style_scale"))
        docker.form["sweep_first_values"].setText("0.5, 1.0")
        docker.form["sweep_second"].setCurrentIndex(docker.form["sweep_second"].findData("content_scale"))
        docker.form["sweep_second_values"].setText("0, 1")
        self.when_active("sweep", self.document_s, docker.sections.sweep_button.click, self.wait_sweep)

    def wait_sweep(self):
        history = self.controller.session.history
        groups = [n for n in self.document_s.rootNode().childNodes() if n.type() == "grouplayer"]
        if not history or not history[0].is_sweep or not groups or self.controller._in_tick:
            return
        job, group = history[0], groups[0]
        group_name, cells = group.name(), [child.name() for child in group.childNodes()]
        docker = self.docker()
        docker.refresh()
        texts = [docker.results.list.item(i).text() for i in range(4)]
        docker.results.list.setCurrentRow(2)
        kept_job, index = docker.results.selected()
        docker.results.keep_selected()
        kept = [n for n in self.document_s.rootNode().childNodes() if n.name() == job.layer_names[2]]
        if kept:
            (OUT / "sweep-kept.rgba").write_bytes(rgba(bytes(kept[0].pixelData(0, 0, SIZE, SIZE))))
        self.done(
            {
                "group": group_name,
                "cells": cells,
                "item_texts": texts,
                "selected": [kept_job is job, index],
                "layers_after_keep": layer_names(self.document_s),
                "message": self.controller.message,
            }
        )
        from instantstyle.settings import JobKind

        docker.form["kind"].setCurrentIndex(docker.form["kind"].findData(JobKind.STYLIZE))
        self.start_find_strength_scenario()

    # ------------------------------------------ scenario 11e: Find strength, its map, a click on a point

    def start_find_strength_scenario(self):
        self.document_f, self.layer_f = new_document(self.window, "find strength", SIZE)
        self.layers_f_before = layer_names(self.document_f)
        button = self.docker().sections.find_button
        self.when_active("find_strength", self.document_f, button.click, self.wait_find_strength)

    def wait_find_strength(self):
        finished = self.finished_result(self.document_f, self.layers_f_before)
        if finished is None:
            return
        job, node = finished
        search = job.search
        if search is None:
            raise RuntimeError("the Find strength job's result came without its search")
        (OUT / "auto-layer.rgba").write_bytes(rgba(bytes(node.pixelData(0, 0, SIZE, SIZE))))
        docker = self.docker()
        docker.refresh()
        panel = docker.sections.tradeoff
        laid = panel.view.layout_map()
        docker.sections.by_name["find"].grab().save(str(OUT / "find-strength-map.png"))
        self.find_part = {
            "layer": node.name(),
            "seed": job.seed,
            "points": [
                [p.style_scale, p.content_scale, p.preset.value, p.stage.value, p.scores.style]
                for p in search.points
            ],
            "chosen": search.chosen,
            "passed": search.passed,
            "reason": search.reason,
            "searched": [search.width, search.height, search.steps],
            "panel_job": panel.job_id == job.job_id,
            "section_open": docker.sections.by_name["find"].body.isVisibleTo(docker),
            "panel_shown": panel.isVisibleTo(docker),
            "map": [[p.index, p.baseline, p.chosen, p.within] for p in laid.points] if laid else [],
            "reason_shown": panel.reason.text(),
            "message": self.controller.message,
        }
        # A point unlike the chosen one (and not the baseline), clicked on the map as a mouse does.
        others = [p for p in laid.points if not p.chosen and not p.baseline]
        self.picked = max(others, key=lambda p: (p.point.style_scale, p.point.content_scale))
        self.document_f.setActiveNode(self.layer_f)  # the source, whatever Krita made active meanwhile
        self.state = self.click_point_when_active

    def click_point_when_active(self):
        if not self.painted_active(self.document_f) or self.controller._in_tick:
            return
        from instantstyle.qt import QEvent, QMouseEvent, QPointF, Qt

        view = self.docker().sections.tradeoff.view
        laid = view.layout_map()
        point = next(p for p in laid.points if p.index == self.picked.index)
        local = QPointF(point.x, point.y)
        button = Qt.MouseButton.LeftButton
        press = QMouseEvent(
            QEvent.Type.MouseButtonPress,
            local,
            QPointF(view.mapToGlobal(local.toPoint())),
            button,
            button,
            Qt.KeyboardModifier.NoModifier,
        )
        self.layers_f_clicked = layer_names(self.document_f)
        QApplication.sendEvent(view, press)
        self.state = self.wait_point_result

    def wait_point_result(self):
        finished = self.finished_result(self.document_f, self.layers_f_clicked)
        if finished is None:
            return
        job, node = finished
        (OUT / "auto-point-layer.rgba").write_bytes(rgba(bytes(node.pixelData(0, 0, SIZE, SIZE))))
        point = self.picked.point
        self.done(
            {
                **self.find_part,
                "picked": [self.picked.index, point.style_scale, point.content_scale, point.preset.value],
                "point_layer": node.name(),
                "point_seed": job.seed,
                "point_auto": job.auto,
                "clicked_marked": self.docker().sections.tradeoff.view.clicked == self.picked.index,
                "layers_after": layer_names(self.document_f),
            }
        )
        self.start_keep_tile_scenario()

    # ------------------------------------------ scenario 11f: keep-lines through the Tile ControlNet

    def start_keep_tile_scenario(self):
        from instantstyle.settings import JobKind

        self.document_t, _ = new_document(self.window, "keep tile", SIZE)
        self.layers_t_before = layer_names(self.document_t)
        docker = self.docker()
        docker.form["kind"].setCurrentIndex(docker.form["kind"].findData(JobKind.KEEP_LINES))
        docker.form["control"].setCurrentIndex(docker.form["control"].findData("tile"))
        docker.refresh()
        self.keep_shown = not docker.keep.isHidden() and not docker.keep_label.isHidden()
        self.stylize_when_active("keep_tile", self.document_t, self.wait_keep_tile)

    def wait_keep_tile(self):
        finished = self.finished_result(self.document_t, self.layers_t_before)
        if finished is None:
            return
        job, node = finished
        (OUT / "keep-tile-layer.rgba").write_bytes(rgba(bytes(node.pixelData(0, 0, SIZE, SIZE))))
        features = self.controller.session.features
        settings = self.controller.settings
        self.done(
            {
                "state": job.state.value,
                "control": settings.control,
                "control_scale": settings.control_scale,
                "offered": [kind.value for kind in features.controls],
                "keep_shown": self.keep_shown,
                "layer": node.name(),
            }
        )
        from instantstyle.settings import JobKind

        docker = self.docker()
        docker.form["control"].setCurrentIndex(docker.form["control"].findData("edges"))
        docker.form["kind"].setCurrentIndex(docker.form["kind"].findData(JobKind.STYLIZE))
        self.start_live_scenario()

    # -------------------------------------------------------------- scenario 12: live mode

    def start_live_scenario(self):
        self.document12, self.layer12 = new_document(self.window, "live", SIZE)
        self.docker().form["live_seed"].setValue(77)
        self.when_active(
            "live", self.document12, lambda: self.docker().live_button.setChecked(True), self.wait_live_first
        )

    def live_result(self, newer_than):
        """The live job shown in the live layer if it is newer than job ``newer_than``, else None."""
        live = self.controller.live
        job = live.shown_job if live is not None else None
        if (
            job is None
            or job.job_id <= newer_than
            or self.controller._in_tick
            or LIVE not in layer_names(self.document12)
        ):
            return None
        return job

    def wait_live_first(self):
        job = self.live_result(0)
        if job is None:
            return
        self.live_first = job
        (OUT / "live-source-1.rgba").write_bytes(rgba(bytes(self.layer12.pixelData(0, 0, SIZE, SIZE))))
        (OUT / "live-layer-1.rgba").write_bytes(rgba(bytes(self.live_node().pixelData(0, 0, SIZE, SIZE))))
        # A stroke, painted as a brush would: a red square in the middle of the watched layer.
        red = bytes((40, 40, 230, 255)) * 16
        for y in range(24, 40):
            self.layer12.setPixelData(red, 24, y, 16, 1)
        self.document12.refreshProjection()
        self.stroke_source = bytes(self.layer12.pixelData(0, 0, SIZE, SIZE))
        self.state = self.wait_live_stroke

    def live_node(self):
        return next(n for n in self.document12.rootNode().childNodes() if n.name() == LIVE)

    def wait_live_stroke(self):
        job = self.live_result(self.live_first.job_id)
        if job is None:
            return
        (OUT / "live-source-2.rgba").write_bytes(rgba(self.stroke_source))
        live_pixels = bytes(self.live_node().pixelData(0, 0, SIZE, SIZE))
        (OUT / "live-layer-2.rgba").write_bytes(rgba(live_pixels))
        names = layer_names(self.document12)
        applied = self.controller.apply_live()
        after_apply = layer_names(self.document12)
        copy = next((n for n in self.document12.rootNode().childNodes() if n.name() == applied), None)
        self.docker().live_button.setChecked(False)
        self.live_part = {
            "first_job": self.live_first.job_id,
            "stroke_job": job.job_id,
            "layers_live": names,
            "live_above_source": names.index(LIVE) == names.index("Painted") + 1,
            "applied": applied,
            "applied_same_pixels": copy is not None
            and bytes(copy.pixelData(0, 0, SIZE, SIZE)) == live_pixels,
            "layers_after_apply": after_apply,
            "source_is_the_stroke": bytes(self.layer12.pixelData(0, 0, SIZE, SIZE)) == self.stroke_source,
            "live_seed": job.seed,
            "size": [job.width, job.height],
        }
        self.state = self.wait_live_off

    def wait_live_off(self):
        if self.controller._in_tick:
            return
        self.done(
            {
                **self.live_part,
                "layers_after_off": layer_names(self.document12),
                "live_on": self.controller.live is not None,
            }
        )
        self.start_live_supersede_scenario()

    # ------------------------------------------------- scenario 13: a stroke while a live job runs

    def start_live_supersede_scenario(self):
        self.document13, self.layer13 = new_document(self.window, "live 1024", 1024)
        self.docker().form["live_max_side"].setValue(1024)
        self.docker().form["strength"].setValue(1.0)  # every step runs: a live job takes seconds at 1024²
        self.when_active(
            "live_supersede",
            self.document13,
            lambda: self.docker().live_button.setChecked(True),
            self.stroke_while_running,
        )

    def stroke_while_running(self):
        running = [
            j
            for j in self.controller.session.jobs.values()
            if j.live and j.state.value == "running" and j.step >= 1
        ]
        if not running:
            return
        self.superseded = running[0]
        red = bytes((40, 40, 230, 255)) * 256
        for y in range(256, 512):
            self.layer13.setPixelData(red, 256, y, 256, 1)
        self.document13.refreshProjection()
        self.state = self.wait_superseding_result

    def wait_superseding_result(self):
        live = self.controller.live
        job = live.shown_job if live is not None else None
        if job is None or not self.superseded.state.finished or self.controller._in_tick:
            return
        self.supersede_part = {
            "superseded_state": self.superseded.state.value,
            "superseded_step": self.superseded.step,
            "superseded_total": self.superseded.total,
            "shown_job_is_newer": job.job_id > self.superseded.job_id,
            "live_layer": LIVE in layer_names(self.document13),
        }
        # The backend goes away (as if it stopped): live mode stops and its layer goes.
        self.controller.session.connection.stop(timeout=5.0)
        self.state = self.wait_backend_lost

    def wait_backend_lost(self):
        if self.controller.live is not None or self.controller._in_tick:
            return
        self.done(
            {
                **self.supersede_part,
                "layers_after_loss": layer_names(self.document13),
                "message": self.controller.message,
                "button_off": not self.docker().live_button.isChecked(),
            }
        )
        self.docker().form["strength"].setValue(0.6)
        self.controller.reconnect(self.controller.settings.server_url, self.controller.settings.token)
        self.begin("zip_import", self.import_zip)

    # -------------------------------------------------------------- scenario 14: Krita's zip importer

    def import_zip(self):
        """What Tools > Scripts > Import Python Plugin from File does with the zip, into a spare folder."""
        from plugin_importer.plugin_importer import PluginImporter

        target = Path(tempfile.mkdtemp(dir=OUT))
        imported = PluginImporter(
            os.environ["INSTANTSTYLE_E2E_ZIP"], str(target), lambda plugin: True
        ).import_all()
        pykrita = target / "pykrita"
        self.done(
            {
                "plugins": [plugin["name"] for plugin in imported],
                "files": sorted(p.relative_to(pykrita).as_posix() for p in pykrita.rglob("*") if p.is_file()),
            }
        )
        self.start_close_scenario()

    # ------------------------------------------- scenario 15 (the last): File > Close while live

    def start_live_close_scenario(self):
        """Last of all; on Krita 5.1 on the document made before scenario 3 closed its own, its view
        shown, none made (see ``start_close_scenario``)."""
        if self.document15 is None:
            self.document15, _ = new_document(self.window, "live close", SIZE)
        for view in self.window.views():
            if view.document() == self.document15:
                self.window.showView(view)
        self.begin("live_close", self.live_when_connected)

    def live_when_connected(self):
        """Live on once the view is active and the backend is back (scenario 13 took it away)."""
        if not self.painted_active(self.document15) or not self.controller.session.connected:
            return
        self.docker().live_button.setChecked(True)
        self.state = self.live_then_close

    def live_then_close(self):
        """The first live result shown, the artist closes the document (File > Close)."""
        live = self.controller.live
        if live is None or live.shown_job is None or self.controller._in_tick:
            return
        if LIVE not in layer_names(self.document15):
            return
        self.document15.setModified(False)
        self.app.action("file_close").trigger()
        self.state = self.wait_live_closed

    def wait_live_closed(self):
        if self.controller.live is not None or self.controller._in_tick:
            return
        self.done(
            {
                "closed": self.document15 not in self.app.documents(),
                "message": self.controller.message,
                "krita_alive": self.app.activeWindow() is not None,
                "button_off": not self.docker().live_button.isChecked(),
            }
        )
        self.finish()

    # -------------------------------------------------------------- the end

    def finish(self):
        self.timer.stop()
        faulthandler.cancel_dump_traceback_later()
        report["finished"] = True
        if "traceback" not in report:
            report["where"] = "every scenario finished"
        (OUT / "report.json").write_text(json.dumps(report, indent=1))
        self.app.setBatchmode(True)
        for document in self.app.documents():
            document.setModified(False)
            document.close()
        QTimer.singleShot(200, lambda: self.app.action("file_quit").trigger())


if os.environ.get("INSTANTSTYLE_E2E_MANAGED"):
    from .managed import ManagedRunner

    _runner = ManagedRunner()
elif os.environ.get("INSTANTSTYLE_E2E_FAMILY"):
    from .family import FamilyRunner

    _runner = FamilyRunner()
elif os.environ.get("INSTANTSTYLE_E2E_TLS"):
    from .tls import TlsRunner

    _runner = TlsRunner()
elif os.environ.get("INSTANTSTYLE_E2E_DOCKER"):
    from .docker_layout import DockerRunner

    _runner = DockerRunner()
elif os.environ.get("INSTANTSTYLE_E2E_OUT"):
    _runner = Runner()
