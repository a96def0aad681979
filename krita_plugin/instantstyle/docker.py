"""The "InstantStyle" docker: every setting, Generate/Cancel, progress, recent results."""

from __future__ import annotations

from krita import DockWidget  # type: ignore[import-not-found]

from .controller import Controller
from .qt import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
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
    QSpinBox,
    Qt,
    QToolButton,
    QVBoxLayout,
    QWidget,
)
from .session import Job, JobState
from .settings import JobKind, StyleSource
from .style_rows import StyleRow

PRESETS = [
    ("Style", "style"),
    ("Style + Layout", "style+layout"),
    ("All blocks", "all"),
    ("Custom", "custom"),
]
KINDS = [
    ("Stylize layer / selection", JobKind.STYLIZE),
    ("Stylize, keep the lines (ControlNet)", JobKind.KEEP_LINES),
    ("New image from the style", JobKind.NEW_IMAGE),
]
DOCKER_TITLE = "InstantStyle"


def _spin(low: float, high: float, step: float, decimals: int = 2) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(low, high)
    box.setSingleStep(step)
    box.setDecimals(decimals)
    return box


def _int_spin(low: int, high: int, step: int = 1) -> QSpinBox:
    box = QSpinBox()
    box.setRange(low, high)
    box.setSingleStep(step)
    return box


def _row(*widgets: QWidget) -> QWidget:
    holder = QWidget()
    layout = QHBoxLayout(holder)
    layout.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.addWidget(widget)
    return holder


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
        body = QWidget()
        column = QVBoxLayout(body)

        connection = QGroupBox("Backend")
        form = QFormLayout(connection)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.url = QLineEdit()
        self.token = QLineEdit()
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText("only if the backend has one")
        self.connect_button = QPushButton("Connect")
        self.connect_button.clicked.connect(
            lambda: self.controller.reconnect(self.url.text(), self.token.text())
        )
        form.addRow(self.status)
        form.addRow("Server", _row(self.url, self.connect_button))
        form.addRow("Token", self.token)
        column.addWidget(connection)

        style = QGroupBox("Style references")
        box = QVBoxLayout(style)
        self.style_rows_box = QVBoxLayout()
        self.style_rows: list[StyleRow] = []
        add = QPushButton("Add reference")
        add.clicked.connect(lambda: self.add_style_row(StyleSource()))
        box.addLayout(self.style_rows_box)
        box.addWidget(add)
        form = QFormLayout()
        box.addLayout(form)
        self.content = QLineEdit()
        self.content.setPlaceholderText("what the reference shows, e.g. 'a cat'")
        self.content_scale = _spin(0.0, 2.0, 0.05)
        form.addRow("Subtract content", self.content)
        form.addRow("Content scale", self.content_scale)
        column.addWidget(style)

        prompt = QGroupBox("Prompt")
        form = QFormLayout(prompt)
        self.prompt = QPlainTextEdit()
        self.prompt.setPlaceholderText("what to paint")
        self.prompt.setFixedHeight(60)
        self.negative = QPlainTextEdit()
        self.negative.setFixedHeight(40)
        form.addRow(self.prompt)
        form.addRow("Negative", self.negative)
        column.addWidget(prompt)

        options = QGroupBox("Options")
        form = QFormLayout(options)
        self.kind = QComboBox()
        for label, kind in KINDS:
            self.kind.addItem(label, kind)
        self.strength = _spin(0.01, 1.0, 0.05)
        self.control_scale = _spin(0.0, 2.0, 0.05)
        self.control_scale.setToolTip("how strictly 'keep the lines' follows the layer's edges")
        self.preset = QComboBox()
        for label, value in PRESETS:
            self.preset.addItem(label, value)
        self.block_scales = QLineEdit()
        self.block_scales.setPlaceholderText('{"up": {"block_0": [0, 1, 0]}}')
        self.preset.currentIndexChanged.connect(
            lambda: self.block_scales.setEnabled(self.preset.currentData() == "custom")
        )
        self.style_scale = _spin(0.0, 2.0, 0.05)
        self.auto_size = QCheckBox("Canvas / selection size")
        self.width_box, self.height_box = _int_spin(64, 2048, 8), _int_spin(64, 2048, 8)
        self.auto_size.toggled.connect(
            lambda on: (self.width_box.setEnabled(not on), self.height_box.setEnabled(not on))
        )
        self.steps = _int_spin(1, 150)
        self.guidance = _spin(0.0, 30.0, 0.5, 1)
        self.seed = _int_spin(0, 2**31 - 1)
        self.seed_locked = QCheckBox("Lock")
        dice = QToolButton()
        dice.setText("Random")
        dice.clicked.connect(self._randomise_seed)
        self.batch = _int_spin(1, 8)
        form.addRow("Mode", self.kind)
        form.addRow("Strength", self.strength)
        form.addRow("Line strength", self.control_scale)
        form.addRow("Blocks", self.preset)
        form.addRow("Custom scales", self.block_scales)
        form.addRow("Style strength", self.style_scale)
        form.addRow(self.auto_size)
        form.addRow("Size", _row(self.width_box, QLabel("×"), self.height_box))
        form.addRow("Steps", self.steps)
        form.addRow("Guidance", self.guidance)
        form.addRow("Seed", _row(self.seed, self.seed_locked, dice))
        form.addRow("Batch", self.batch)
        column.addWidget(options)

        self.generate_button = QPushButton("Generate")
        self.generate_button.clicked.connect(self._generate)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.controller.cancel)
        column.addWidget(_row(self.generate_button, self.cancel_button))
        self.progress = QProgressBar()
        self.progress.setFormat("step %v / %m")
        self.message = QLabel()
        self.message.setWordWrap(True)
        column.addWidget(self.progress)
        column.addWidget(self.message)

        history = QGroupBox("Recent results")
        box = QVBoxLayout(history)
        self.history = QListWidget()
        self.history.setViewMode(QListView.ViewMode.IconMode)
        self.history.setIconSize(QSize(72, 72))
        self.history.setFixedHeight(100)
        apply_button, discard_button = QPushButton("Apply as layer"), QPushButton("Discard")
        apply_button.clicked.connect(self._apply_selected)
        discard_button.clicked.connect(self._discard_selected)
        box.addWidget(self.history)
        box.addWidget(_row(apply_button, discard_button))
        column.addWidget(history)
        column.addStretch(1)

        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(body)
        self.setWidget(scroll)

    # ------------------------------------------------------------------ settings <-> widgets

    def _load(self, s) -> None:
        self.url.setText(s.server_url)
        self.token.setText(s.token)
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
        self.block_scales.setText(s.block_scales)
        self.block_scales.setEnabled(s.preset == "custom")
        self.style_scale.setValue(s.style_scale)
        self.auto_size.setChecked(s.auto_size)
        self.width_box.setValue(s.width)
        self.height_box.setValue(s.height)
        self.steps.setValue(s.steps)
        self.guidance.setValue(s.guidance_scale)
        self.seed.setValue(s.seed)
        self.seed_locked.setChecked(s.seed_locked)
        self.batch.setValue(s.batch)

    def store(self) -> None:
        """Copy the widgets into the controller's settings (before each job, which saves them)."""
        s = self.controller.settings
        s.styles = [row.value() for row in self.style_rows]
        s.content_text, s.content_scale = self.content.text(), self.content_scale.value()
        s.prompt, s.negative_prompt = self.prompt.toPlainText(), self.negative.toPlainText()
        s.kind, s.strength, s.control_scale = (
            self.kind.currentData(),
            self.strength.value(),
            self.control_scale.value(),
        )
        s.preset, s.block_scales, s.style_scale = (
            self.preset.currentData(),
            self.block_scales.text(),
            self.style_scale.value(),
        )
        s.auto_size, s.width, s.height = (
            self.auto_size.isChecked(),
            self.width_box.value(),
            self.height_box.value(),
        )
        s.steps, s.guidance_scale, s.batch = self.steps.value(), self.guidance.value(), self.batch.value()
        s.seed, s.seed_locked = self.seed.value(), self.seed_locked.isChecked()

    # ------------------------------------------------------------------ events

    def _generate(self) -> None:
        self.controller.generate()

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

    def refresh(self) -> None:
        session = self.controller.session
        self.status.setText(session.status)
        self.message.setText(self.controller.message)
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
                item = QListWidgetItem(
                    QIcon(QPixmap.fromImage(qimage.scaled(72, 72, Qt.AspectRatioMode.KeepAspectRatio))), ""
                )
                item.setToolTip(job.layer_names[index])
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

    def _discard_selected(self) -> None:
        selected = self._selected()
        if selected:
            self.controller.discard(selected[0])
