"""The "InstantStyle" docker, laid out for Krita's default dock column (about 260 px wide; it works
from 180 px high).

A compact top that never scrolls (status, prompt, Generate / Cancel / Live, progress), and
below it a scrolling body: references, content, mode and strengths as sliders, recent results, then
the sections that open on a click (``docker_sections``). Nothing in it asks for more width than the
column has: combo boxes and lines elide, labels wrap. Every setting is one row of ``self.form``.
"""

from __future__ import annotations

from krita import DockWidget  # type: ignore[import-not-found]

from .backend_section import BackendSection
from .controller import controller as the_controller
from .deps import protocol
from .docker_sections import build_sections, custom_start_of, preset_chosen, preview_side_row
from .form import Form
from .job_message import CONTROL_LABELS, offered_controls
from .jobs import JobState
from .live import apply_preset
from .model_family import (
    BlockScalesByFamily,
    canvas_resolution_tip,
    custom_start_for,
    grid_hint,
    preset_blocks,
)
from .qt import (
    QFormLayout,
    QFrame,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    Qt,
    QTimer,
    QVBoxLayout,
    QWidget,
)
from .results import Results
from .settings import JobKind
from .style_rows import StyleList
from .widgets import ElidedLabel, buttons_fit_their_text, choices, setting_slider, side_by_side, wrapped

KINDS = [
    ("Stylize layer / selection", JobKind.STYLIZE),
    ("Stylize, keep the lines", JobKind.KEEP_LINES),
    ("New image from the style", JobKind.NEW_IMAGE),
]
CONTROLS = [(label, kind.value) for kind, label in CONTROL_LABELS.items()]
KEEP_TIP = (
    "what 'keep the lines' keeps of the layer: its lines (edges, through a canny ControlNet), or its "
    "shapes and colours (the picture itself, through a Tile ControlNet: the style repaints the surface)"
)
DOCKER_TITLE = "InstantStyle"
CONTENT_TIP = (
    "what the reference shows (not how): it is taken out of the reference, so only its style carries "
    "over, not its subject"
)
CONTENT_SCALE_TIP = "how much of that content to take out (0.5 is a good start)"
PROMPT_LINES = 2


class InstantStyleDocker(DockWidget):
    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle(DOCKER_TITLE)
        self.controller = the_controller()
        self.form = Form()
        top = self._top()
        body = self._body()
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setWidget(body)
        self.scroll.setMinimumHeight(24)  # the top stays whole down to a 180 px docker
        holder = QWidget()
        column = QVBoxLayout(holder)
        column.setContentsMargins(4, 2, 4, 2)
        column.setSpacing(3)
        column.addWidget(top)
        column.addWidget(self.scroll, 1)
        self.setWidget(holder)
        buttons_fit_their_text(holder)
        self.load()
        self.controller.changed.connect(self.refresh)
        self.controller.settings_sources.append(self.store)
        self.refresh()

    # ------------------------------------------------------------------ layout

    def _top(self) -> QWidget:
        """What an artist needs every time, visible at any docker height from 180 px."""
        top = QWidget()
        column = QVBoxLayout(top)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(3)
        self.status = ElidedLabel()
        column.addWidget(self.status)
        self.prompt = self.form.add(
            "prompt", QPlainTextEdit(), "what the picture shows; the references decide how it looks"
        )
        self.prompt.setPlaceholderText("what to paint, e.g. 'a lighthouse at dusk'")
        self.prompt.setFixedHeight(self.prompt.fontMetrics().lineSpacing() * PROMPT_LINES + 12)
        column.addWidget(self.prompt)
        self.generate_button = QPushButton("Generate")
        self.generate_button.setToolTip("run a job with these settings; the result becomes a new layer")
        self.generate_button.clicked.connect(lambda: self.controller.generate())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("stop the running and waiting jobs (their preview layers go away)")
        self.cancel_button.clicked.connect(self.controller.cancel)
        self.live_button = QPushButton("Live")
        self.live_button.setCheckable(True)
        self.live_button.setToolTip(
            "restyle the active layer a moment after each stroke, into a temporary 'InstantStyle live' "
            "layer (fast few-step settings; see the Live section)"
        )
        self.live_button.toggled.connect(self._live_toggled)
        column.addWidget(
            side_by_side(self.generate_button, self.cancel_button, self.live_button, stretch_first=True)
        )
        self.progress = QProgressBar()
        self.progress.setFormat("ready")
        self.progress.setMaximumHeight(self.fontMetrics().height() + 6)
        self.apply_live_button = QPushButton("Apply live")
        self.apply_live_button.setToolTip("keep the current live result as a new layer")
        self.apply_live_button.clicked.connect(self.controller.apply_live)
        column.addWidget(side_by_side(self.progress, self.apply_live_button, stretch_first=True))
        return top

    def _body(self) -> QWidget:
        """References, content and strengths, the recent results, then the sections (scrolls)."""
        body = QWidget()
        column = QVBoxLayout(body)
        column.setContentsMargins(0, 0, 2, 0)
        column.setSpacing(4)
        form = self.form
        self.message = wrapped()  # what the last action did, or why it could not (first in view)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        column.addWidget(self.message)
        self.styles = form.add("styles", StyleList())
        column.addWidget(wrapped("Style references"))
        column.addWidget(self.styles)

        main = QFormLayout()
        main.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        content = form.add(
            "content_text",
            QLineEdit(),
            CONTENT_TIP,
        )
        content.setPlaceholderText("subtract content, e.g. 'a cat'")
        main.addRow("Content", content)
        main.addRow(
            "Subtract",
            form.add(
                "content_scale",
                setting_slider("content_scale", 0.05),
                CONTENT_SCALE_TIP,
            ),
        )
        main.addRow(
            "Mode",
            form.add(
                "kind",
                choices(KINDS),
                "Stylize: repaint the active layer (or only the selection) in the style. Keep the lines: "
                "the same, following the layer's edges, or its shapes and colours where the backend has "
                "a Tile ControlNet (ControlNet). New image: paint the prompt from scratch in the style.",
            ),
        )
        self.keep_label = QLabel("Keep")
        self.keep = form.add("control", choices(CONTROLS), KEEP_TIP)
        main.addRow(self.keep_label, self.keep)
        form["kind"].currentIndexChanged.connect(lambda _index: self._show_controls())
        self.keep.currentIndexChanged.connect(lambda _index: self._show_controls())
        main.addRow(
            "Repaint",
            form.add(
                "strength",
                setting_slider("strength", 0.05),
                "how much of the layer is repainted: low keeps it close, 1 starts over",
            ),
        )
        main.addRow(
            "Style",
            form.add(
                "style_scale",
                setting_slider("style_scale", 0.05),
                "how strongly the references' style applies (1 is InstantStyle's)",
            ),
        )
        column.addLayout(main)

        self.results = Results(self.controller)
        column.addWidget(self.results)
        self.sections = build_sections(form, self.controller, self._apply_speed)
        for section in self.sections.all():
            column.addWidget(section)
        self.backend_section = BackendSection(self.controller)
        previews = side_by_side(QLabel("Previews"), preview_side_row(form))
        self.backend_section.body.layout().addWidget(previews)
        column.addWidget(self.backend_section)
        column.addStretch(1)
        return body

    # ------------------------------------------------------------------ settings <-> widgets

    def load(self) -> None:
        settings = self.controller.settings
        self.backend_section.load(settings)
        self.form.load(settings)
        preset_chosen(self.form, custom_start_of(self.controller))

    def store(self) -> None:
        """Copy the widgets into the controller's settings (before each job, which saves them)."""
        self.styles.refresh()
        self.form.store(self.controller.settings)

    def _show_features(self) -> None:
        """What the backend's model offers, into the pickers (once it is known, and when it changes)."""
        features = self.controller.session.features
        presets = [(p.label, p.name) for p in features.speed_presets]
        settings = self.controller.settings
        for field, items in (("speed_preset", [("—", ""), *presets]), ("live_preset", presets)):
            combo = self.form[field]
            if [(combo.itemText(i), combo.itemData(i)) for i in range(combo.count())] != items:
                current = combo.currentData() or getattr(settings, field)
                combo.clear()
                for label, name in items:
                    combo.addItem(label, name)
                combo.setCurrentIndex(max(0, combo.findData(current)))
        self.sections.loras.set_offered(features.loras)
        self._show_controls()
        self._show_content_subtraction(features.content_subtraction, features.image_adapter)
        if features.attention_blocks:  # known once the model is ready
            self.form["canvas_resolution"].setToolTip(canvas_resolution_tip(features))
            self._show_blocks(features)

    def _show_blocks(self, features: protocol.ModelFeatures) -> None:
        """The grid for the backend's UNet; a model of another family swaps in that family's saved
        custom map (the same block names mean other places there), or its style preset's blocks."""
        grid = self.sections.block_grid
        by_family = BlockScalesByFamily(self.controller.store)
        switched = by_family.switch(self.controller.settings, features.family, grid.text())
        if switched is not None:
            grid.set_text(switched)
        grid.set_blocks(features.attention_blocks, features.family.value, grid_hint(preset_blocks(features)))
        if switched is not None:
            preset_chosen(self.form, custom_start_for(features, features.family))

    def _show_controls(self) -> None:
        """The Keep choice, with keep-lines only, where the backend offers more than edges (or no longer
        offers the kind chosen: the artist can change it; the job is refused in one line meanwhile)."""
        hello = self.controller.session.hello
        offered = offered_controls(hello) if hello is not None else None
        keep_lines = self.form["kind"].currentData() == JobKind.KEEP_LINES
        chosen = protocol.ControlKind(self.keep.currentData() or "edges")
        shown = keep_lines and offered is not None and (len(offered) > 1 or chosen not in offered)
        if self.keep.isHidden() == shown:
            self.keep_label.setVisible(shown)
            self.keep.setVisible(shown)

    def _show_content_subtraction(self, available: bool, adapter: protocol.ImageAdapter) -> None:
        """Content and Subtract greyed out, saying why, when the backend's adapter cannot subtract (the
        artist's text is kept for a backend that can)."""
        why = (
            "the backend's 'plus' IP-Adapter reads the reference's patch features: content cannot be "
            "subtracted from them"
            if adapter is protocol.ImageAdapter.PLUS
            else "the backend's IP-Adapter and its text encoder do not share one space: content cannot "
            "be subtracted"
        )
        for name, tip in (("content_text", CONTENT_TIP), ("content_scale", CONTENT_SCALE_TIP)):
            widget = self.form[name]
            widget.setEnabled(available)
            widget.setToolTip(tip if available else why)

    # ------------------------------------------------------------------ events

    def _apply_speed(self) -> None:
        """A speed preset picked: fill in its sampler, steps, guidance and LoRA (all still editable)."""
        name = self.form["speed_preset"].currentData()
        preset = next((p for p in self.controller.session.features.speed_presets if p.name == name), None)
        if preset is None:
            return
        self.store()
        filled = ("sampler", "steps", "guidance_scale", "loras")  # what a preset sets
        self.form.load(apply_preset(self.controller.settings, preset), only=filled)

    def _live_toggled(self, on: bool) -> None:
        if on and self.controller.live is None:
            self.store()
            if not self.controller.start_live():
                self.live_button.setChecked(False)
        elif not on and self.controller.live is not None:
            self.controller.stop_live("live mode off")

    def canvasChanged(self, canvas) -> None:
        self.styles.refresh(refill=True)

    def refresh(self) -> None:
        session = self.controller.session
        self.status.set_full_text(self.controller.backend_status)
        self.backend_section.refresh()
        self._show_features()
        live = self.controller.live is not None
        if self.live_button.isChecked() != live:  # live mode stopped by itself (document closed...)
            self.live_button.setChecked(live)
        self.apply_live_button.setVisible(live)
        if not self.form["seed_locked"].isChecked():  # show the seed the last job used, to lock it if liked
            self.form["seed"].setValue(self.controller.settings.seed)
        active = session.active_jobs
        running = next((job for job in active if job.state is JobState.RUNNING), None)
        self.cancel_button.setEnabled(bool(active))
        if running is not None and running.total:
            value, maximum, text = running.progress
            self.progress.setFormat(text)
            self.progress.setRange(0, maximum)
            self.progress.setValue(value)
        elif active:
            queued = active[0]
            self.progress.setFormat(f"queued ({queued.position} ahead)" if queued.position else "starting…")
            self.progress.setRange(0, 0 if queued.position == 0 else 1)
        else:
            self.progress.setFormat("ready")
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
        said = self.controller.message
        self.message.setText(said if said != self.controller.backend_status else "")
        self.message.setVisible(bool(self.message.text()))
        self.results.show_jobs(session.history)
        self._show_search()

    def _show_search(self) -> None:
        """The last "Find strength" job's map, in its section, opened (and scrolled to) when it is new."""
        job = self.controller.auto_job
        if not self.sections.tradeoff.show_job(job) or job is None:
            return
        find = self.sections.by_name["find"]
        find.set_open(True)
        view = self.sections.tradeoff.view  # once the opened section is laid out
        QTimer.singleShot(0, lambda: self.scroll.ensureWidgetVisible(view, 0, 0))
