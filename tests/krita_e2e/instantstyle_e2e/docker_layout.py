"""The docker where artists keep it, and the Layers docker's right-click menu (test hook, never shipped).

Krita's default workspace, window at the screen's size: the InstantStyle docker shown where Krita
docks it; then floated at 260×180, 300×400, 420×900, and at 260 px with every section open. At each
size: what asks for more width than there is, whether Generate is in view. Then a right-click on the
"Painted" layer (another layer active), by xdotool from the test (a request file in the output
folder), our entry in Krita's menu, a left click on it, and the job's result. Then, docked again, a
real click on "Find strength", the trade-off map that comes back, and a real click on one of its
points. ``report.json``.
"""

import json
import os
import time
import traceback
from pathlib import Path

from instantstyle.qt import QApplication, QDockWidget, QMenu, QTimer, QWidget
from krita import Krita

OUT = Path(os.environ["INSTANTSTYLE_E2E_OUT"])
SIZE = 64
SCALE = float(os.environ.get("INSTANTSTYLE_E2E_BUDGET_SCALE", "1"))
BUDGET = 600 * SCALE
SETTLE = 1.0
SIZES = [("260x180", 260, 180), ("300x400", 300, 400), ("floated", 420, 900)]
CANVAS = (4096, 3072)
CANVAS_BGRA = (200, 120, 40, 255)
"""One colour: Qt's smooth scaling of the layer to the server's frame size gives the same colour,
so the test can rebuild exactly what the server received."""
ENTRY = "Stylize Layer (InstantStyle)"
report = {"steps": [], "sizes": {}}


def log(message):
    report["steps"].append(f"{time.monotonic():.2f} {message}")
    (OUT / "report.json").write_text(json.dumps(report, indent=1))


def pattern_bgra(size, shift=0):
    data = bytearray()
    for y in range(size):
        for x in range(size):
            data += bytes((((x + y) * 2 + shift) % 256, (y * 4) % 256, (x * 4 + shift) % 256, 255))
    return bytes(data)


def rgba(bgra):
    data = bytearray(bgra)
    data[0::4], data[2::4] = bgra[2::4], bgra[0::4]
    return bytes(data)


def right_edge(widget, ancestor):
    return widget.mapTo(ancestor, widget.rect().topRight()).x() + 1


def describe(widget):
    text = getattr(widget, "text", None)
    said = text() if callable(text) else ""
    return f"{widget.metaObject().className()}:{str(said)[:30]}"


class DockerRunner:
    def __init__(self):
        self.app = Krita.instance()
        self.started = time.monotonic()
        self.requests = 0
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

    def later(self, then, seconds=SETTLE):
        self.settle_until, self.then = time.monotonic() + seconds, then
        self.state = self.settling

    def settling(self):
        if time.monotonic() >= self.settle_until:
            QApplication.processEvents()
            self.then()

    # ------------------------------------------------------------------ the docker at its sizes

    def wait_for_window(self):
        self.window = self.app.activeWindow()
        if self.window is None:
            return
        self.app.setBatchmode(True)
        from instantstyle.controller import controller

        self.controller = controller()
        self.window.qwindow().setGeometry(QApplication.primaryScreen().availableGeometry())
        self.document = self.app.createDocument(SIZE, SIZE, "layout", "RGBA", "U8", "", 72.0)
        self.window.addView(self.document)
        root = self.document.rootNode()
        self.painted = self.document.createNode("Painted", "paintlayer")
        root.addChildNode(self.painted, None)
        self.painted.setPixelData(pattern_bgra(SIZE), 0, 0, SIZE, SIZE)
        self.other = self.document.createNode("Other", "paintlayer")
        root.addChildNode(self.other, self.painted)
        self.other.setPixelData(pattern_bgra(SIZE, 90), 0, 0, SIZE, SIZE)
        self.document.setActiveNode(self.other)
        (OUT / "source.rgba").write_bytes(rgba(pattern_bgra(SIZE)))
        docker = self.docker()
        docker.show()
        docker.raise_()
        self.state = self.wait_for_backend

    def wait_for_backend(self):
        features = self.controller.session.features
        if not self.controller.session.connected or not features.attention_blocks:
            return
        from dataclasses import fields

        docker = self.docker()
        unbound = docker.form.unbound(self.controller.settings)
        report["form"] = {
            "unbound": unbound,
            "bound": sorted(docker.form.bindings),
            "settings": sorted(f.name for f in fields(self.controller.settings)),
            "round_trip": self.round_trip(docker),
        }
        self.later(self.measure_docked, 2 * SETTLE)

    def round_trip(self, docker):
        """Settings unlike the defaults in every field, shown in the widgets and read back: the fields
        that came back different (each widget bound to its own field, nothing rounded or clamped)."""
        from dataclasses import asdict, replace

        from instantstyle.settings import (
            GenerationSettings,
            JobKind,
            LoraChoice,
            RegionMaskKind,
            RegionSetting,
            StyleSource,
            StyleSourceKind,
        )

        saved = replace(self.controller.settings)
        probe = GenerationSettings(
            styles=[StyleSource(StyleSourceKind.LAYER, "Painted", weight=0.7)],
            prompt="a harbour at night",
            negative_prompt="fog",
            content_text="a cat",
            content_scale=0.85,
            preset="custom",
            block_scales='{"up": {"block_0": [0.0, 0.75, 0.0]}}',
            style_scale=1.35,
            layout_push=1.25,
            kind=JobKind.KEEP_LINES,
            strength=0.45,
            control_scale=0.95,
            auto_size=False,
            width=512,
            height=384,
            steps=17,
            guidance_scale=6.5,
            guidance_rescale=0.35,
            seed=1234567,
            seed_locked=True,
            batch=3,
            sampler="dpmpp_2m",
            loras=[LoraChoice("style", 0.8)],
            regions=[
                RegionSetting(
                    "sky", RegionMaskKind.LAYER, "Other", StyleSource(StyleSourceKind.LAYER, "Painted")
                )
            ],
            speed_preset="lightning-4",
            sweep_first="content_scale",
            sweep_first_values="0.1, 0.2",
            sweep_second="seed",
            sweep_second_values="1, 2",
            live_preset="lightning-4",
            live_max_side=1024,
            live_seed=99,
            preview_side=512,
            control="tile",
            auto_leakage_margin=0.05,
            auto_prompt_margin=0.125,
            auto_presets=True,
        )
        docker.form.load(probe)
        back = GenerationSettings()
        docker.form.store(back)
        differ = [
            name
            for name, value in asdict(probe).items()
            if name in docker.form.bindings and asdict(back)[name] != value
        ]
        docker.form.load(saved)
        self.controller.settings = saved
        return differ

    def measure(self, name):
        """What asks for more width than the docker has, and whether Generate is in view."""
        docker = self.docker()
        holder, scroll = docker.widget(), docker.scroll
        body, viewport = scroll.widget(), scroll.viewport()
        beyond = [
            describe(w)
            for w in body.findChildren(QWidget)
            if w.isVisibleTo(body) and right_edge(w, body) > viewport.width() + 1
        ]
        beyond += [
            describe(w)
            for w in holder.findChildren(QWidget)
            if w.isVisibleTo(holder)
            and not body.isAncestorOf(w)
            and w is not body
            and right_edge(w, holder) > holder.width() + 1
        ]
        visible = [w for w in holder.findChildren(QWidget) if w.isVisibleTo(holder)]
        widest = sorted(visible, key=lambda w: -w.minimumSizeHint().width())[:8]
        button = docker.generate_button
        top_left = button.mapTo(docker, button.rect().topLeft())
        in_view = self.in_view

        top = {
            "prompt": docker.prompt,
            "generate": button,
            "cancel": docker.cancel_button,
            "live": docker.live_button,
            "progress": docker.progress,
        }
        report["sizes"][name] = {
            "docker": [docker.width(), docker.height()],
            "floating": docker.isFloating(),
            "viewport_width": viewport.width(),
            "body_width": body.width(),
            "body_needs": body.minimumSizeHint().width(),
            "top_needs": holder.minimumSizeHint().width(),
            "beyond": beyond,
            "widest": [f"{describe(w)} {w.minimumSizeHint().width()}" for w in widest],
            "horizontal_scrollbar": scroll.horizontalScrollBar().isVisible(),
            "generate_in_view": in_view(button),
            "out_of_view": [name for name, widget in top.items() if not in_view(widget)],
            "generate_at": [top_left.x(), top_left.y()],
        }
        docker.grab().save(str(OUT / f"docker-{name}.png"))
        log(f"measured {name}")

    def in_view(self, widget, whole=False):
        """Inside the docker and not hidden (``whole``: none of it scrolled out of the body's view)."""
        docker = self.docker()
        corners = (widget.rect().topLeft(), widget.rect().bottomRight())
        inside = all(docker.rect().contains(widget.mapTo(docker, corner)) for corner in corners)
        region = widget.visibleRegion()
        shown = region.boundingRect() == widget.rect() if whole else not region.isEmpty()
        return widget.isVisible() and shown and inside

    def measure_docked(self):
        form = self.docker().form
        report["content"] = {  # the backend's plus adapter cannot subtract content: greyed out, why
            "text_enabled": form["content_text"].isEnabled(),
            "scale_enabled": form["content_scale"].isEnabled(),
            "tip": form["content_text"].toolTip(),
            "status": self.controller.session.status,
        }
        self.measure("docked")
        self.window.qwindow().grab().save(str(OUT / "window-docked.png"))
        self.sizes = list(SIZES)
        self.next_size()

    def next_size(self):
        docker = self.docker()
        if not self.sizes:
            self.open_every_section()
            return
        name, width, height = self.sizes.pop(0)
        docker.setFloating(True)
        docker.resize(width, height)

        def then():
            self.measure(name)
            self.next_size()

        self.later(then)

    def open_every_section(self):
        docker = self.docker()
        docker.form["preset"].setCurrentIndex(docker.form["preset"].findData("custom"))
        for section in docker.sections.all():
            section.set_open(True)
        docker.backend_section.set_open(True)
        docker.resize(260, 1000)

        def then():
            self.measure("260-sections-open")
            sections = [*docker.sections.all(), docker.backend_section]
            report["sizes"]["260-sections-open"]["sections"] = {
                section.header.text(): [
                    f"{describe(w)} {w.minimumSizeHint().width()}"
                    for w in sorted(
                        (w for w in section.findChildren(QWidget) if w.isVisibleTo(section)),
                        key=lambda w: -w.minimumSizeHint().width(),
                    )[:5]
                ]
                for section in sections
            }
            for section in docker.sections.all():
                section.set_open(False)
            docker.form["preset"].setCurrentIndex(docker.form["preset"].findData("style"))
            docker.setFloating(False)
            self.later(self.right_click)

        self.later(then)

    # ------------------------------------------------------------------ the Layers docker's menu

    def xdotool(self, *arguments):
        """Ask the test to run xdotool on this display (Krita's root has none); wait in ``waiting``."""
        self.requests += 1
        request = OUT / f"xdotool-{self.requests}.json"
        request.with_suffix(".tmp").write_text(json.dumps(list(arguments)))
        request.with_suffix(".tmp").rename(request)
        self.done_file = OUT / f"xdotool-{self.requests}.done"

    def right_click(self):
        from instantstyle import layer_menu

        entries = layer_menu.ENTRIES
        report["menu_entry"] = {
            "entries": len(entries),
            "attached": [entry.viewport is not None for entry in entries],
        }
        report["fallback"] = self.fallback(layer_menu)
        view = layer_menu.layer_view(self.window.qwindow())
        model = view.model()
        rows = [model.index(row, 0) for row in range(model.rowCount())]
        names = [str(model.data(index)) for index in rows]
        report["layer_rows"] = names
        index = rows[names.index("Painted")]
        centre = view.viewport().mapToGlobal(view.visualRect(index).center())
        self.history_before = len(self.controller.session.history)
        self.active_before = self.document.activeNode().name()
        self.xdotool("mousemove", "--sync", str(centre.x()), str(centre.y()), "click", "3")
        self.state = self.wait_for_menu

    def fallback(self, layer_menu):
        """A window without Krita's Layers docker (another Krita's layout): no entry, one log line."""
        import logging

        from instantstyle.qt import QMainWindow

        lines = []

        class Keep(logging.Handler):
            def emit(self, record):
                lines.append(record.getMessage())

        handler = Keep()
        layer_menu.log.addHandler(handler)
        bare = QMainWindow()
        entry = layer_menu.LayerMenuEntry(bare, self.app.action("instantstyle_stylize_layer"))
        try:
            entry.tries = layer_menu.ATTACH_TRIES - 1  # the last try, without waiting 20 s
            entry.attach()
            return {
                "view": layer_menu.layer_view(bare) is not None,
                "attached": entry.viewport is not None,
                "log": lines,
            }
        finally:
            layer_menu.log.removeHandler(handler)
            layer_menu.ENTRIES.remove(entry)

    def wait_for_menu(self):
        menu = QApplication.activePopupWidget()
        if not isinstance(menu, QMenu):
            return
        texts = [action.text().replace("&", "") for action in menu.actions()]
        if ENTRY not in texts:
            return  # our zero timer adds it inside the menu's own event loop
        self.menu_part = {
            "texts": texts,
            "entry_last": texts[-1] == ENTRY,
            "active_when_open": self.document.activeNode().name(),
        }
        self.later(self.click_entry, 0.5)

    def click_entry(self):
        menu = QApplication.activePopupWidget()
        action = next(a for a in menu.actions() if a.text().replace("&", "") == ENTRY)
        geometry = menu.actionGeometry(action)
        self.menu_part["entry_visible"] = menu.rect().contains(geometry)
        screen = QApplication.primaryScreen().grabWindow(0)
        corner = menu.mapToGlobal(menu.rect().topLeft())
        area = screen.copy(corner.x() - 260, corner.y() - 40, menu.width() + 300, menu.height() + 80)
        area.save(str(OUT / "layer-menu.png"))
        where = menu.mapToGlobal(geometry.center())
        self.xdotool("mousemove", "--sync", str(where.x()), str(where.y()), "click", "1")
        self.state = self.wait_for_job

    def wait_for_job(self):
        from instantstyle import layer_menu

        history = self.controller.session.history
        if len(history) <= self.history_before or self.controller._in_tick:
            return
        job = history[0]
        (OUT / "right-click.rgba").write_bytes(job.images[0].data)
        names = [node.name() for node in self.document.rootNode().childNodes()]
        report["right_click"] = {
            **self.menu_part,
            "active_before": self.active_before,
            "menus_extended": sum(entry.added for entry in layer_menu.ENTRIES),
            "layers_after": names,
            "size": [job.width, job.height],
            "source_unchanged": bytes(self.painted.pixelData(0, 0, SIZE, SIZE)) == pattern_bgra(SIZE),
        }
        log("right-click job done")
        self.start_find_strength()

    # ------------------------------------------------------------------ Find strength and its map

    def start_find_strength(self):
        """Docked where Krita puts it: open Find strength, scroll to its button, click it for real."""
        docker = self.docker()
        self.find_history = len(self.controller.session.history)
        self.sent = []
        connection = self.controller.session.connection
        self.send_message = send = connection.send_message

        def keep(message):  # what the docker sends, for the test to read
            self.sent.append(message)
            send(message)

        connection.send_message = keep
        docker.sections.by_name["find"].set_open(True)

        def then():
            docker.scroll.ensureWidgetVisible(docker.sections.find_button)
            self.later(self.click_find, 0.5)

        self.later(then)

    def click_find(self):
        button = self.docker().sections.find_button
        self.button_in_view = self.in_view(button, whole=True)
        where = button.mapToGlobal(button.rect().center())
        self.xdotool("mousemove", "--sync", str(where.x()), str(where.y()), "click", "1")
        self.state = self.wait_find_result

    def wait_find_result(self):
        history = self.controller.session.history
        if len(history) <= self.find_history or self.controller._in_tick:
            return
        self.auto_job = history[0]
        self.later(self.measure_find)  # the map's section opens and scrolls to it on the next refresh

    def measure_find(self):
        from instantstyle.qt import QPoint

        docker = self.docker()
        self.measure("find-strength")
        job, panel = self.auto_job, docker.sections.tradeoff
        view = panel.view
        laid = view.layout_map()
        search = job.search
        visible = [
            p.index for p in laid.points if view.visibleRegion().contains(QPoint(round(p.x), round(p.y)))
        ]
        viewport = docker.scroll.viewport()
        report["find_strength"] = {
            "button_in_view": self.button_in_view,
            "sent_auto": [message.auto is not None for message in self.sent],
            "section_open": docker.sections.by_name["find"].body.isVisible(),
            "panel_job": panel.job_id == job.job_id,
            "panel_visible": panel.isVisible(),
            "view_size": [view.width(), view.height()],
            "view_right": right_edge(view, viewport),
            "viewport": [viewport.width(), viewport.height()],
            "view_shown_rows": view.visibleRegion().boundingRect().height(),
            "visible_points": visible,
            "points": [
                [p.style_scale, p.content_scale, p.preset.value, p.stage.value] for p in search.points
            ],
            "map_points": len(laid.points),
            "chosen": search.chosen,
            "map_chosen": [p.index for p in laid.points if p.chosen],
            "x_axis": laid.x_axis.name,
            "texts": [panel.title.text(), panel.reason.text(), panel.legend.text()],
            "layer_names": job.layer_names,
            "layers_after": [n.name() for n in self.document.rootNode().childNodes()],
            "message": self.controller.message,
        }
        docker.grab().save(str(OUT / "docker-find-strength.png"))
        docker.sections.by_name["find"].grab().save(str(OUT / "find-strength-section.png"))
        others = [i for i in visible if i != search.chosen and not laid.points[i].baseline]
        if not others:
            raise RuntimeError(f"no point of the map to click is in view: {report['find_strength']}")
        self.picked = laid.points[others[-1]]
        where = view.mapToGlobal(QPoint(round(self.picked.x), round(self.picked.y)))
        self.xdotool("mousemove", "--sync", str(where.x()), str(where.y()), "click", "1")
        self.state = self.wait_point_job

    def point_tooltip(self, view, point):
        """What resting the mouse on ``point`` shows (Qt's own tooltip event, sent to the map)."""
        from instantstyle.qt import QEvent, QPoint, QtGui, QToolTip

        local = QPoint(round(point.x), round(point.y))
        view.event(QtGui.QHelpEvent(QEvent.Type.ToolTip, local, view.mapToGlobal(local)))
        text = QToolTip.text()
        QToolTip.hideText()
        return text

    def wait_point_job(self):
        history = self.controller.session.history
        if len(history) <= self.find_history + 1 or self.controller._in_tick:
            return
        job = history[0]
        message = self.sent[-1]
        self.controller.session.connection.send_message = self.send_message
        point = self.picked.point
        report["map_click"] = {
            "picked": [point.style_scale, point.content_scale, point.preset.value],
            "sent": [message.style_scale, message.content_scale, message.preset.value],
            "auto": message.auto is not None,
            "seed": [message.seed, self.auto_job.seed],
            "clicked_marked": self.docker().sections.tradeoff.view.clicked == self.picked.index,
            "layer_names": job.layer_names,
            "layers_after": [n.name() for n in self.document.rootNode().childNodes()],
            "message": self.controller.message,
        }
        # Resting the mouse on the chosen point (after the clicks: a tooltip window must not catch one).
        view = self.docker().sections.tradeoff.view
        report["find_strength"]["tooltip"] = self.point_tooltip(view, view.layout_map().chosen)
        log("map click job done")
        self.start_canvas_job()

    # ------------------------------------------------------------------ a canvas at its own size

    def start_canvas_job(self):
        """Stylize a 4096x3072 layer with "Canvas resolution" on (the default): the result arrives in
        tiles and lands at the layer's own size."""
        width, height = CANVAS
        self.canvas_doc = self.app.createDocument(width, height, "canvas", "RGBA", "U8", "", 72.0)
        self.window.addView(self.canvas_doc)
        self.big = self.canvas_doc.createNode("Painted", "paintlayer")
        self.canvas_doc.rootNode().addChildNode(self.big, None)
        self.big.setPixelData(bytes(CANVAS_BGRA) * (width * height), 0, 0, width, height)
        self.canvas_doc.setActiveNode(self.big)
        self.canvas_history = len(self.controller.session.history)
        self.state = self.canvas_when_active

    def canvas_when_active(self):
        node = self.canvas_doc.activeNode()
        if self.app.activeDocument() != self.canvas_doc or node is None or node.name() != "Painted":
            return
        self.canvas_started = time.monotonic()
        connection = self.controller.session.connection
        send = connection.send_frame
        report["canvas_inputs"] = []

        def keep(frame):  # what the server receives, for the test to rebuild the job exactly
            from instantstyle.deps import protocol

            decoded = protocol.decode_frame(frame)
            (OUT / f"canvas-input-{decoded.index}.raw").write_bytes(decoded.payload)
            report["canvas_inputs"].append([decoded.width, decoded.height, decoded.format.channels])
            send(frame)

        connection.send_frame = keep
        canvas = self.controller.canvas
        write_part = canvas.write_result_part
        report["canvas_parts"] = []

        def written(job, part):  # each tile as it is written into the result layer
            write_part(job, part)
            layers = [n for n in self.canvas_doc.rootNode().childNodes() if n.name() == job.layer_names[0]]
            report["canvas_parts"].append([part.x, part.y, part.image.width, part.image.height, len(layers)])

        canvas.write_result_part = written
        try:
            self.controller.stylize_active_layer()
        finally:
            connection.send_frame = send
        self.state = self.wait_canvas_job

    def wait_canvas_job(self):
        history = self.controller.session.history
        if len(history) <= self.canvas_history or self.controller._in_tick:
            return
        job = history[0]
        width, height = CANVAS
        (image,) = job.images
        (OUT / "canvas-result.rgba").write_bytes(image.data)
        result = next(n for n in self.canvas_doc.rootNode().childNodes() if n.name() == job.layer_names[0])
        layer = bytes(result.pixelData(0, 0, width, height))
        report["canvas"] = {
            "seconds": time.monotonic() - self.canvas_started,
            "job_size": [job.width, job.height],
            "image_size": [image.width, image.height],
            "total_steps": job.total,
            "layer_is_the_result": rgba(layer) == image.data,
            "message": self.controller.message,
        }
        report["canvas_partial"] = self.partial_results(job)
        log("canvas job done")
        self.finish()

    def partial_results(self, job):
        """Results whose tiles stop arriving: a failed one leaves no layer behind, an incomplete one
        is written whole when it is applied (its partial layer taken away)."""
        from dataclasses import replace

        from instantstyle.jobs import Image, ResultPart

        canvas, root = self.controller.canvas, self.canvas_doc.rootNode()
        write = type(canvas).write_result_part  # the class's: the test's recording wrapper stays out

        def names():
            return [n.name() for n in root.childNodes()]

        before = names()
        tile = ResultPart(0, 64, 32, Image(64, 32, 4, bytes([10, 20, 30, 255]) * (64 * 32)))
        failed = replace(job, job_id=job.job_id + 1000, prompt="failed on the way")
        write(canvas, failed, tile)
        during = names()
        canvas.remove_arriving(failed)
        after_failure = names()
        incomplete = replace(job, job_id=job.job_id + 2000, prompt="incomplete")
        write(canvas, incomplete, tile)
        name = canvas.apply_result(incomplete, 0)
        layers = [n for n in root.childNodes() if n.name() == name]
        width, height = CANVAS
        whole = (
            len(layers) == 1 and rgba(bytes(layers[0].pixelData(0, 0, width, height))) == job.images[0].data
        )
        for node in layers:
            node.remove()
        return {
            "added_while_arriving": [n for n in during if n not in before],
            "left_after_failure": [n for n in after_failure if n not in before],
            "incomplete_written_whole": whole,
            "incomplete_layers": len(layers),
        }

    def finish(self):
        self.timer.stop()
        report["finished"] = True
        (OUT / "report.json").write_text(json.dumps(report, indent=1))
        for document in self.app.documents():
            document.setModified(False)
            document.close()
        QTimer.singleShot(200, lambda: self.app.action("file_quit").trigger())
