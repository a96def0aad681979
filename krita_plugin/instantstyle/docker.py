"""The "InstantStyle" docker: the main path in view (references, prompt, content, strength,
Generate/Cancel/Live, progress, recent results), everything else in sections (``docker_sections``)."""

from __future__ import annotations

from krita import DockWidget  # type: ignore[import-not-found]

from .controller import Controller
from .docker_sections import build_sections, choices, side_by_side, spin
from .live import apply_preset
from .qt import (
    QFormLayout,
    QGroupBox,
    QIcon,
    QImage,
    QLabel,
    QLineEdit,
    QListView,
    QListWidget,
    QListWidgetItem,
    QPixmap,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSize,
    Qt,
    QVBoxLayout,
    QWidget,
)
from .sections import Section
from .session import Job, JobState, describe_scores
from .settings import JobKind, StyleSource
from .style_rows import StyleRow

KINDS = [
    ("Stylize layer / selection", JobKind.STYLIZE),
    ("Stylize, keep the lines (ControlNet)", JobKind.KEEP_LINES),
    ("New image from the style", JobKind.NEW_IMAGE),
]
DOCKER_TITLE = "InstantStyle"


class InstantStyleDocker(DockWidget):
    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle(DOCKER_TITLE)
        from . import extension

        self.controller: Controller = extension.controller()
        self._build()
        self._load(self.controller.settings)
        self.controller.changed.connect(self.refresh)
        self.controller.settings_sources.append(self.store)
        self.refresh()

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        """The main path (references, prompt, content, strength, buttons, progress, results) stays in
        view; everything else sits in sections that open on a click."""
        body = QWidget()
        column = QVBoxLayout(body)
        column.setSpacing(4)

        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setToolTip("the backend's address, model and state")
        column.addWidget(self.status)

        style = QGroupBox("Style references")
        box = QVBoxLayout(style)
        box.setSpacing(2)
        self.style_rows_box = QVBoxLayout()
        self.style_rows: list[StyleRow] = []
        add = QPushButton("Add reference")
        add.setToolTip("blend in one more picture whose look the result should take")
        add.clicked.connect(lambda: self.add_style_row(StyleSource()))
        box.addLayout(self.style_rows_box)
        box.addWidget(add)
        self.content = QLineEdit()
        self.content.setPlaceholderText("subtract content, e.g. 'a cat'")
        self.content.setToolTip(
            "what the reference shows (not how): it is taken out of the reference, so only its style "
            "carries over, not its subject"
        )
        self.content_scale = spin(0.0, 2.0, 0.05)
        self.content_scale.setToolTip("how much of that content to take out (0.5 is a good start)")
        box.addWidget(side_by_side(self.content, self.content_scale))
        column.addWidget(style)

        self.prompt = QPlainTextEdit()
        self.prompt.setPlaceholderText("what to paint, e.g. 'a lighthouse at dusk'")
        self.prompt.setToolTip("what the picture shows; the references decide how it looks")
        self.prompt.setFixedHeight(52)
        column.addWidget(self.prompt)

        form = QFormLayout()
        self.kind = choices(KINDS)
        self.kind.setToolTip(
            "Stylize: repaint the active layer (or only the selection) in the style. Keep the lines: the "
            "same, following the layer's edges. New image: paint the prompt from scratch in the style."
        )
        self.strength = spin(0.01, 1.0, 0.05)
        self.strength.setToolTip("how much of the layer is repainted: low keeps it close, 1 starts over")
        self.style_scale = spin(0.0, 2.0, 0.05)
        self.style_scale.setToolTip("how strongly the references' style applies (1 is InstantStyle's)")
        form.addRow("Mode", side_by_side(self.kind, self.strength))
        form.addRow("Style strength", self.style_scale)
        column.addLayout(form)

        self.generate_button = QPushButton("Generate")
        self.generate_button.setToolTip("run a job with these settings; the result becomes a new layer")
        self.generate_button.clicked.connect(self._generate)
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
        self.apply_live_button = QPushButton("Apply")
        self.apply_live_button.setToolTip("keep the current live result as a new layer")
        self.apply_live_button.clicked.connect(self.controller.apply_live)
        column.addWidget(
            side_by_side(self.generate_button, self.cancel_button, self.live_button, self.apply_live_button)
        )
        self.progress = QProgressBar()
        self.progress.setFormat("step %v / %m")
        self.message = QLabel()
        self.message.setWordWrap(True)
        column.addWidget(self.progress)
        column.addWidget(self.message)

        self.history = QListWidget()
        self.history.setViewMode(QListView.ViewMode.IconMode)
        self.history.setIconSize(QSize(56, 56))
        self.history.setFixedHeight(76)
        self.history.setToolTip("recent results: select one to apply it again or discard it")
        apply_button, discard_button = QPushButton("Apply as layer"), QPushButton("Discard")
        apply_button.setToolTip("add the selected result as a new layer once more")
        discard_button.setToolTip("forget the selected result (the layers it made stay)")
        apply_button.clicked.connect(self._apply_selected)
        discard_button.clicked.connect(self._discard_selected)
        self.keep_button = QPushButton("Keep")
        self.keep_button.setToolTip(
            "a sweep's picture: keep it as a layer and remove the sweep's group (the other pictures)"
        )
        self.keep_button.clicked.connect(self._keep_selected)
        column.addWidget(self.history)
        column.addWidget(side_by_side(apply_button, self.keep_button, discard_button))

        for section in self._sections():
            column.addWidget(section)
        column.addStretch(1)

        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(body)
        self.setWidget(scroll)

    def _sections(self) -> list[Section]:
        return build_sections(self)

    # ------------------------------------------------------------------ settings <-> widgets

    def _load(self, s) -> None:
        self.backend_section.load(s)
        for row in list(self.style_rows):
            self._remove_style_row(row)
        for style in s.styles or [StyleSource()]:
            self.add_style_row(style)
        self.content.setText(s.content_text)
        self.content_scale.setValue(s.content_scale)
        self.prompt.setPlainText(s.prompt)
        self.negative.setPlainText(s.negative_prompt)
        self.kind.setCurrentIndex(self.kind.findData(s.kind))
        self.strength.setValue(s.strength)
        self.control_scale.setValue(s.control_scale)
        self.preset.setCurrentIndex(max(0, self.preset.findData(s.preset)))
        self._block_text = s.block_scales
        self.block_grid.set_text(s.block_scales)
        self.block_grid.setEnabled(s.preset == "custom")
        self.layout_push.setEnabled(s.preset == "precise")
        self.style_scale.setValue(s.style_scale)
        self.layout_push.setValue(s.layout_push)
        self.auto_size.setChecked(s.auto_size)
        self.width_box.setValue(s.width)
        self.height_box.setValue(s.height)
        self.steps.setValue(s.steps)
        self.guidance.setValue(s.guidance_scale)
        self.seed.setValue(s.seed)
        self.seed_locked.setChecked(s.seed_locked)
        self.batch.setValue(s.batch)
        self.sampler.setCurrentIndex(max(0, self.sampler.findData(s.sampler)))
        self.loras.set_values(s.loras)
        self.regions.set_values(s.regions)
        self.sweep_first.setCurrentIndex(max(0, self.sweep_first.findData(s.sweep_first)))
        self.sweep_second.setCurrentIndex(max(0, self.sweep_second.findData(s.sweep_second)))
        self.sweep_first_values.setText(s.sweep_first_values)
        self.sweep_second_values.setText(s.sweep_second_values)
        self.live_max_side.setValue(s.live_max_side)
        self.preview_side.setCurrentIndex(max(0, self.preview_side.findData(s.preview_side)))
        self.live_seed.setValue(s.live_seed)

    def store(self) -> None:
        """Copy the widgets into the controller's settings (before each job, which saves them)."""
        s = self.controller.settings
        s.styles = [row.value() for row in self.style_rows]
        for style_row in self.style_rows:  # what is about to be sent, as the artist sees it
            style_row.refresh_thumbnail()
        s.content_text, s.content_scale = self.content.text(), self.content_scale.value()
        s.prompt, s.negative_prompt = self.prompt.toPlainText(), self.negative.toPlainText()
        s.kind, s.strength, s.control_scale = (
            self.kind.currentData(),
            self.strength.value(),
            self.control_scale.value(),
        )
        # The grid exists once the backend said which blocks its UNet has; until then keep the saved map.
        block_text = self.block_grid.text() if self.block_grid.boxes else self._block_text
        s.preset, s.block_scales, s.style_scale = (
            self.preset.currentData(),
            block_text,
            self.style_scale.value(),
        )
        s.layout_push = self.layout_push.value()
        s.auto_size, s.width, s.height = (
            self.auto_size.isChecked(),
            self.width_box.value(),
            self.height_box.value(),
        )
        s.steps, s.guidance_scale, s.batch = self.steps.value(), self.guidance.value(), self.batch.value()
        s.seed, s.seed_locked = self.seed.value(), self.seed_locked.isChecked()
        s.sampler, s.loras = self.sampler.currentData() or "", self.loras.values()
        s.regions = self.regions.values()
        s.sweep_first, s.sweep_first_values = self.sweep_first.currentData(), self.sweep_first_values.text()
        s.sweep_second, s.sweep_second_values = (
            self.sweep_second.currentData() or "",
            self.sweep_second_values.text(),
        )
        s.speed_preset = self.speed.currentData() or ""
        s.live_preset = self.live_preset.currentData() or ""
        s.live_max_side, s.live_seed = self.live_max_side.value(), self.live_seed.value()
        s.preview_side = int(self.preview_side.currentData() or 1024)

    def _show_features(self) -> None:
        """What the backend's model offers, into the pickers (once it is known, and when it changes)."""
        features = self.controller.session.features
        presets = [(p.label, p.name) for p in features.speed_presets]
        for combo, saved in (
            (self.speed, self.controller.settings.speed_preset),
            (self.live_preset, self.controller.settings.live_preset),
        ):
            items = [("—", ""), *presets] if combo is self.speed else presets
            if [(combo.itemText(i), combo.itemData(i)) for i in range(combo.count())] != items:
                current = combo.currentData() or saved
                combo.clear()
                for label, name in items:
                    combo.addItem(label, name)
                combo.setCurrentIndex(max(0, combo.findData(current)))
        self.loras.set_offered(features.loras)
        if features.attention_blocks and list(self.block_grid.boxes) != features.attention_blocks:
            self.block_grid.set_blocks(features.attention_blocks)
            self.block_grid.set_text(self._block_text)

    # ------------------------------------------------------------------ events

    def _generate(self) -> None:
        self.controller.generate()

    def _apply_speed(self) -> None:
        """A speed preset picked: fill in its sampler, steps, guidance and LoRA (all still editable)."""
        name = self.speed.currentData()
        preset = next((p for p in self.controller.session.features.speed_presets if p.name == name), None)
        if preset is None:
            return
        self.store()
        settings = apply_preset(self.controller.settings, preset)
        self.sampler.setCurrentIndex(max(0, self.sampler.findData(settings.sampler)))
        self.steps.setValue(settings.steps)
        self.guidance.setValue(settings.guidance_scale)
        self.loras.set_values(settings.loras)

    def _live_toggled(self, on: bool) -> None:
        if on and self.controller.live is None:
            self.store()
            if not self.controller.start_live():
                self.live_button.setChecked(False)
        elif not on and self.controller.live is not None:
            self.controller.stop_live("live mode off")

    def _randomise_seed(self) -> None:
        import random

        self.seed.setValue(random.randrange(2**31))

    def add_style_row(self, source: StyleSource) -> StyleRow:
        row = StyleRow(source)
        row.removed.connect(self._remove_style_row)
        self.style_rows.append(row)
        self.style_rows_box.addWidget(row)
        return row

    def _remove_style_row(self, row: StyleRow) -> None:
        if row in self.style_rows:
            self.style_rows.remove(row)
            row.setParent(None)
            row.deleteLater()

    def canvasChanged(self, canvas) -> None:  # Krita calls this when the active view changes
        for row in self.style_rows:
            row.layer.refill()
            row.refresh_thumbnail()

    def refresh(self) -> None:
        session = self.controller.session
        self.status.setText(self.controller.backend_status)
        self.backend_section.refresh()
        self.message.setText(self.controller.message)
        self._show_features()
        live = self.controller.live is not None
        if self.live_button.isChecked() != live:  # live mode stopped by itself (document closed...)
            self.live_button.setChecked(live)
        self.apply_live_button.setEnabled(live)
        if not self.seed_locked.isChecked():  # show the seed the last job used, to lock it if liked
            self.seed.setValue(self.controller.settings.seed)
        active = session.active_jobs
        running = next((job for job in active if job.state is JobState.RUNNING), None)
        self.cancel_button.setEnabled(bool(active))
        if running is not None and running.total:
            self.progress.setFormat("step %v / %m")
            self.progress.setRange(0, running.total)
            self.progress.setValue(running.step)
        elif active:
            queued = active[0]
            self.progress.setFormat(f"queued ({queued.position} ahead)" if queued.position else "starting…")
            self.progress.setRange(0, 0 if queued.position == 0 else 1)
        else:
            self.progress.setFormat("ready")
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
        self._refresh_history(session.history)

    def _refresh_history(self, jobs: list[Job]) -> None:
        if [self.history.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.history.count())] == [
            (job.job_id, i) for job in jobs for i in range(len(job.images))
        ]:
            return
        self.history.clear()
        for job in jobs:
            for index, image in enumerate(job.images):
                qimage = QImage(
                    image.data, image.width, image.height, image.width * 4, QImage.Format.Format_RGBA8888
                )
                scores = job.scores(index)
                item = QListWidgetItem(
                    QIcon(QPixmap.fromImage(qimage.scaled(72, 72, Qt.AspectRatioMode.KeepAspectRatio))),
                    describe_scores(scores, short=True),
                )
                item.setToolTip(
                    f"{job.layer_names[index]}\n{describe_scores(scores)}\n"
                    "style: likeness to the references; content: how much of the described content leaked "
                    "in (lower is cleaner); prompt: likeness to the prompt"
                )
                item.setData(Qt.ItemDataRole.UserRole, (job.job_id, index))
                self.history.addItem(item)

    def _selected(self) -> tuple[Job, int] | None:
        item = self.history.currentItem()
        if item is None:
            return None
        job_id, index = item.data(Qt.ItemDataRole.UserRole)
        job = next((j for j in self.controller.session.history if j.job_id == job_id), None)
        return (job, index) if job is not None else None

    def _apply_selected(self) -> None:
        selected = self._selected()
        if selected:
            self.controller.apply(*selected)

    def _keep_selected(self) -> None:
        selected = self._selected()
        if selected and selected[0].is_sweep:
            self.controller.keep_cell(*selected)

    def _discard_selected(self) -> None:
        selected = self._selected()
        if selected:
            self.controller.discard(selected[0])
