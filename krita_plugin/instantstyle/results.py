"""The docker's recent results: thumbnails with their scores in words, Apply / Keep / Discard."""

from __future__ import annotations

from .jobs import Job, describe_scores
from .qt import (
    QIcon,
    QImage,
    QListView,
    QListWidget,
    QListWidgetItem,
    QPixmap,
    QPushButton,
    QSize,
    Qt,
    QVBoxLayout,
    QWidget,
)
from .widgets import side_by_side

THUMBNAIL = 56
CELL = QSize(86, THUMBNAIL + 52)
"""A thumbnail and three short lines under it ("leakage 0.46" is the widest)."""
SCORES_EXPLAINED = (
    "style: likeness to the references (higher is more of their look); leakage: how much of the "
    "described content came through (lower is cleaner); prompt: likeness to the prompt"
)


class Results(QWidget):
    """Newest first; a list that is only rebuilt when the results change (not on every refresh)."""

    def __init__(self, controller) -> None:
        super().__init__()
        self.controller = controller
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        self.list = QListWidget()
        self.list.setViewMode(QListView.ViewMode.IconMode)
        self.list.setIconSize(QSize(THUMBNAIL, THUMBNAIL))
        self.list.setGridSize(CELL)
        self.list.setResizeMode(QListView.ResizeMode.Adjust)
        self.list.setWordWrap(True)
        self.list.setMovement(QListView.Movement.Static)
        self.list.setFixedHeight(CELL.height() + 8)
        self.list.setToolTip("recent results: select one to apply it again or discard it")
        apply_button, self.keep_button, discard_button = (
            QPushButton("Apply"),
            QPushButton("Keep"),
            QPushButton("Discard"),
        )
        apply_button.setToolTip("add the selected result as a new layer once more")
        self.keep_button.setToolTip(
            "a sweep's picture: keep it as a layer and remove the sweep's group (the other pictures)"
        )
        discard_button.setToolTip("forget the selected result (the layers it made stay)")
        apply_button.clicked.connect(self.apply_selected)
        self.keep_button.clicked.connect(self.keep_selected)
        discard_button.clicked.connect(self.discard_selected)
        column.addWidget(self.list)
        column.addWidget(side_by_side(apply_button, self.keep_button, discard_button))

    def show_jobs(self, jobs: list[Job]) -> None:
        shown = [self.list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.list.count())]
        if shown == [(job.job_id, i) for job in jobs for i in range(len(job.images))]:
            return
        self.list.clear()
        for job in jobs:
            for index, image in enumerate(job.images):
                qimage = QImage(
                    image.data, image.width, image.height, image.width * 4, QImage.Format.Format_RGBA8888
                )
                scaled = qimage.scaled(THUMBNAIL, THUMBNAIL, Qt.AspectRatioMode.KeepAspectRatio)
                scores = job.scores(index)
                item = QListWidgetItem(QIcon(QPixmap.fromImage(scaled)), describe_scores(scores, lines=True))
                said = f"\n{describe_scores(scores)}\n{SCORES_EXPLAINED}" if scores is not None else ""
                item.setToolTip(f"{job.layer_names[index]}{said}")
                item.setData(Qt.ItemDataRole.UserRole, (job.job_id, index))
                self.list.addItem(item)

    def selected(self) -> tuple[Job, int] | None:
        item = self.list.currentItem()
        if item is None:
            return None
        job_id, index = item.data(Qt.ItemDataRole.UserRole)
        job = next((j for j in self.controller.session.history if j.job_id == job_id), None)
        return (job, index) if job is not None else None

    def apply_selected(self) -> None:
        selected = self.selected()
        if selected:
            self.controller.apply(*selected)

    def keep_selected(self) -> None:
        selected = self.selected()
        if selected and selected[0].is_sweep:
            self.controller.keep_cell(*selected)

    def discard_selected(self) -> None:
        selected = self.selected()
        if selected:
            self.controller.discard(selected[0])
