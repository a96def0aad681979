"""The trade-off map in the docker: a thin painter over ``tradeoff_map`` (which decides where and in
which colour every point goes, and which point a click hits), with the search's words under it."""

from __future__ import annotations

from .deps import protocol
from .jobs import Job
from .qt import (
    QBrush,
    QColor,
    QEvent,
    QPainter,
    QPen,
    QPointF,
    QRectF,
    QSize,
    QSizePolicy,
    Qt,
    QTextOption,
    QToolTip,
    QVBoxLayout,
    QWidget,
    event_point,
    pyqtSignal,
)
from .tradeoff_map import TradeoffMap
from .widgets import wrapped

MAP_HEIGHT = 112
"""The plot's height: the docker at Krita's default ~260×220 shows it whole in its scrolling body."""
RADIUS = 4.5
CHOSEN_RING = 8.5
VIEW_TIP = (
    "every setting Find strength tried: up is more of the references' style, right is more of the "
    "described content leaking in; colour is prompt likeness. Click a point to paint it at full size"
)


class TradeoffView(QWidget):
    """The plot; ``picked(index)`` when a point is clicked."""

    picked = pyqtSignal(int)

    def __init__(self) -> None:
        super().__init__()
        self.search: protocol.AutoSearch | None = None
        self.clicked: int | None = None
        """The point clicked last (drawn with a dashed ring)."""
        self.setMouseTracking(True)
        self.setFixedHeight(MAP_HEIGHT)
        self.setMinimumWidth(60)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip(VIEW_TIP)

    def sizeHint(self) -> QSize:
        return QSize(200, MAP_HEIGHT)

    def minimumSizeHint(self) -> QSize:
        return QSize(60, MAP_HEIGHT)

    def set_search(self, search: protocol.AutoSearch | None) -> None:
        self.search, self.clicked = search, None
        self.update()

    def layout_map(self) -> TradeoffMap | None:
        """The map at the widget's current size (None before a search)."""
        return TradeoffMap(self.search, self.width(), self.height()) if self.search is not None else None

    # ------------------------------------------------------------------ painting

    def paintEvent(self, event) -> None:
        laid = self.layout_map()
        painter = QPainter(self)
        try:
            painter.setRenderHint(QPainter.RenderHint.Antialiasing)
            palette = self.palette()
            text, base, mid = palette.text().color(), palette.base().color(), palette.mid().color()
            painter.fillRect(self.rect(), base)
            if laid is None:
                return
            left, top, width, height = laid.area
            painter.setPen(QPen(mid, 1))
            painter.drawRect(QRectF(left, top, width, height))
            painter.setPen(QPen(text, 1))
            small = painter.font()
            small.setPointSizeF(max(6.0, small.pointSizeF() * 0.8))
            painter.setFont(small)
            below = QRectF(left, top + height, width, self.height() - top - height)
            right = QTextOption(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            painter.drawText(below, laid.x_axis.name, right)
            painter.drawText(
                QRectF(left, 0, width, top), laid.y_axis.name, QTextOption(Qt.AlignmentFlag.AlignVCenter)
            )
            if laid.limit_x is not None and left <= laid.limit_x <= left + width:
                dashed = QPen(text, 1, Qt.PenStyle.DashLine)
                painter.setPen(dashed)
                painter.drawLine(QPointF(laid.limit_x, top), QPointF(laid.limit_x, top + height))
            for point in sorted(laid.points, key=lambda p: p.chosen):  # the chosen one on top
                colour = QColor(*point.colour)
                if not point.within:
                    colour.setAlpha(110)
                painter.setBrush(QBrush(colour))
                painter.setPen(QPen(text if point.within else mid, 1))
                centre = QPointF(point.x, point.y)
                if point.baseline:
                    side = RADIUS * 2
                    painter.drawRect(QRectF(point.x - RADIUS, point.y - RADIUS, side, side))
                else:
                    painter.drawEllipse(centre, RADIUS, RADIUS)
                if point.chosen:
                    painter.setBrush(Qt.BrushStyle.NoBrush)
                    painter.setPen(QPen(text, 2))
                    painter.drawEllipse(centre, CHOSEN_RING, CHOSEN_RING)
                if point.index == self.clicked and not point.chosen:
                    painter.setBrush(Qt.BrushStyle.NoBrush)
                    painter.setPen(QPen(text, 1, Qt.PenStyle.DashLine))
                    painter.drawEllipse(centre, CHOSEN_RING, CHOSEN_RING)
        finally:
            painter.end()

    # ------------------------------------------------------------------ the mouse

    def hit(self, x: float, y: float) -> int | None:
        laid = self.layout_map()
        return laid.hit(x, y) if laid is not None else None

    def mouseMoveEvent(self, event) -> None:
        over = self.hit(*event_point(event))
        self.setCursor(Qt.CursorShape.PointingHandCursor if over is not None else Qt.CursorShape.ArrowCursor)
        super().mouseMoveEvent(event)

    def mousePressEvent(self, event) -> None:
        if event.button() != Qt.MouseButton.LeftButton:
            super().mousePressEvent(event)
            return
        index = self.hit(*event_point(event))
        if index is None:
            super().mousePressEvent(event)
            return
        self.clicked = index
        self.update()
        event.accept()
        self.picked.emit(index)

    def event(self, event) -> bool:
        """A point's own tooltip (its setting and scores) where the mouse rests on one."""
        if event.type() == QEvent.Type.ToolTip and hasattr(event, "globalPos"):
            laid = self.layout_map()
            position = event.pos()
            index = laid.hit(position.x(), position.y()) if laid is not None else None
            if index is not None:
                QToolTip.showText(event.globalPos(), laid.points[index].tip, self)
                return True
        return super().event(event)


class TradeoffPanel(QWidget):
    """The last "Find strength" job's map, what was searched, the colours, and why it chose."""

    def __init__(self) -> None:
        super().__init__()
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(2)
        self.job_id = 0
        """The job whose search is shown (0: none yet)."""
        self.title = wrapped()
        self.view = TradeoffView()
        self.reason = wrapped()
        self.reason.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.reason.setToolTip("why the server chose this setting (compared with a no-style picture)")
        self.legend = wrapped()
        self.legend.setToolTip("how to read the map")
        column.addWidget(self.title)
        column.addWidget(self.view)
        column.addWidget(self.reason)
        column.addWidget(self.legend)
        self.setVisible(False)

    def show_job(self, job: Job | None) -> bool:
        """Show ``job``'s search (once per job); True when it changed what is shown."""
        search = job.search if job is not None else None
        job_id = job.job_id if job is not None and search is not None else 0
        if job_id == self.job_id:
            return False
        self.job_id = job_id
        self.view.set_search(search)
        if search is not None:
            laid = TradeoffMap(search, 200, MAP_HEIGHT)  # the words do not depend on the size
            self.title.setText(laid.title)
            self.reason.setText(laid.reason)
            self.legend.setText(laid.legend)
        self.setVisible(search is not None)
        return True
