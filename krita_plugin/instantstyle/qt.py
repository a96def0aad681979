"""The one module that knows which Qt binding Krita embeds: PyQt5 (Krita 5) or PyQt6 (Krita 6).

Every other module of the plugin imports its Qt names from here. Krita 6 refuses
any PyQt5 import, and says which binding it has through
``pykrita.qt_major_version()``; Krita 5 has no such call and always PyQt5.
The rest of the plugin writes enums fully scoped (``Qt.AlignmentFlag.AlignLeft``,
``QImage.Format.Format_ARGB32``), which PyQt5 5.11+ accepts as well, so the
differences that remain live here.
"""

from __future__ import annotations


def qt_major_version() -> int:
    try:
        import pykrita  # type: ignore[import-not-found]  # Krita's own embedded module
    except ImportError:
        return 5
    return int(getattr(pykrita, "qt_major_version", lambda: 5)())


QT_MAJOR = qt_major_version()

if QT_MAJOR >= 6:
    from PyQt6 import QtCore, QtGui, QtWidgets  # type: ignore[import-not-found]
else:
    from PyQt5 import QtCore, QtGui, QtWidgets  # type: ignore[import-not-found,no-redef]

Qt = QtCore.Qt
QObject = QtCore.QObject
QEvent = QtCore.QEvent
QPoint = QtCore.QPoint
QPointF = QtCore.QPointF
QRectF = QtCore.QRectF
QSize = QtCore.QSize
QTimer = QtCore.QTimer
QUrl = QtCore.QUrl
pyqtSignal = QtCore.pyqtSignal

QBrush = QtGui.QBrush
QColor = QtGui.QColor
QDesktopServices = QtGui.QDesktopServices
QIcon = QtGui.QIcon
QImage = QtGui.QImage
QMouseEvent = QtGui.QMouseEvent
QPainter = QtGui.QPainter
QPen = QtGui.QPen
QPixmap = QtGui.QPixmap
QTextOption = QtGui.QTextOption

QAbstractItemView = QtWidgets.QAbstractItemView
QAbstractButton = QtWidgets.QAbstractButton
QApplication = QtWidgets.QApplication
QCheckBox = QtWidgets.QCheckBox
QComboBox = QtWidgets.QComboBox
QDockWidget = QtWidgets.QDockWidget
QDoubleSpinBox = QtWidgets.QDoubleSpinBox
QFileDialog = QtWidgets.QFileDialog
QFormLayout = QtWidgets.QFormLayout
QFrame = QtWidgets.QFrame
QGridLayout = QtWidgets.QGridLayout
QGroupBox = QtWidgets.QGroupBox
QHBoxLayout = QtWidgets.QHBoxLayout
QLabel = QtWidgets.QLabel
QLineEdit = QtWidgets.QLineEdit
QListView = QtWidgets.QListView
QListWidget = QtWidgets.QListWidget
QListWidgetItem = QtWidgets.QListWidgetItem
QMainWindow = QtWidgets.QMainWindow
QMenu = QtWidgets.QMenu
QMessageBox = QtWidgets.QMessageBox
QPlainTextEdit = QtWidgets.QPlainTextEdit
QProgressBar = QtWidgets.QProgressBar
QPushButton = QtWidgets.QPushButton
QScrollArea = QtWidgets.QScrollArea
QSizePolicy = QtWidgets.QSizePolicy
QSlider = QtWidgets.QSlider
QSpinBox = QtWidgets.QSpinBox
QToolButton = QtWidgets.QToolButton
QToolTip = QtWidgets.QToolTip
QVBoxLayout = QtWidgets.QVBoxLayout
QWidget = QtWidgets.QWidget


def image_bytes(image: QImage) -> bytes:  # type: ignore[valid-type]
    """A copy of a QImage's pixel buffer (``bits().setsize`` in PyQt5, a sized buffer in PyQt6)."""
    bits = image.constBits()
    size = image.sizeInBytes()  # byteCount() is gone in Qt6
    if hasattr(bits, "setsize"):
        bits.setsize(size)
    return bytes(bits)[:size]


def event_point(event) -> tuple[float, float]:
    """Where a mouse event happened in its widget: ``position()`` in Qt6 (and 5.15), ``pos()`` before."""
    where = event.position() if hasattr(event, "position") else event.localPos()
    return where.x(), where.y()


def dock_right(factory_base) -> object:
    """``DockWidgetFactoryBase``'s right-hand position: a scoped enum in Krita 6, a plain one in 5."""
    scoped = getattr(factory_base, "DockPosition", None)
    return factory_base.DockRight if scoped is None else scoped.DockRight
