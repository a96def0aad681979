"""The docker's Backend section: the managed backend (Install / Start / Running / Update / Failed) or a
remote server's address and token.

The widgets only show the controller's ``BackendManager`` (``managed/manager.py``, Qt-free) and call
its actions; the phase decides the one button there is, so the artist never meets a state it cannot
act on. Opens by itself when the managed backend needs a click (not installed, an update, a failure).

A ``wss://`` remote server adds its certificate's rows: what is trusted (``server_trust.trust_view``,
Qt-free), the fingerprint of a certificate to confirm, "Trust this certificate", "Forget" and a studio
CA file.
"""

from __future__ import annotations

from .managed.manager import PRIMARY_ACTION, Phase, default_layout
from .managed.model_choice import MODEL_LABELS, ManagedModel, offered_models
from .qt import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    Qt,
    QVBoxLayout,
    QWidget,
)
from .sections import Section
from .server_trust import TrustView, trust_view
from .settings import BackendMode, GenerationSettings
from .widgets import ComboBox, narrow

NEEDS_A_CLICK = (Phase.NOT_INSTALLED, Phase.UPDATE_AVAILABLE, Phase.FAILED)


class BackendSection(Section):
    def __init__(self, controller) -> None:
        super().__init__("Backend", "where the InstantStyle backend runs")
        self.controller = controller
        column = QVBoxLayout(self.body)
        column.setContentsMargins(0, 0, 0, 0)

        self.mode = ComboBox()
        self.mode.addItem("Managed on this computer", BackendMode.MANAGED)
        self.mode.addItem("Remote server", BackendMode.REMOTE)
        self.mode.setToolTip("the plugin installs and runs its own backend, or uses a server someone started")
        self.mode.activated.connect(lambda _index: controller.link.set_mode(self.mode.currentData()))
        column.addWidget(self.mode)

        # Managed: one line of state, the phase's one button, and what to serve.
        self.managed = QWidget()
        managed = QVBoxLayout(self.managed)
        managed.setContentsMargins(0, 0, 0, 0)
        self.state = QLabel()
        self.state.setWordWrap(True)
        self.state.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        managed.addWidget(self.state)
        self.primary = QPushButton("Install")
        self.primary.clicked.connect(lambda: controller.link.primary())
        self.show_log = QPushButton("Show log")
        self.show_log.setToolTip("the install's or the server's log, for a bug report")
        self.show_log.clicked.connect(lambda: controller.link.show_log())
        self.check = QPushButton("Check")
        self.check.setToolTip(
            "loads the model and runs one small job: device, free memory, memory tier, dtype, speed per "
            "step, previews, NaN check, as text to copy into a bug report (while the backend is stopped)"
        )
        self.check.clicked.connect(lambda: controller.link.check())
        self.uninstall = QPushButton("Uninstall")
        self.uninstall.setToolTip("remove the backend's environment (asks before removing the models)")
        self.uninstall.clicked.connect(lambda: controller.link.uninstall())
        managed.addWidget(self.primary)  # its own row: the one action, whatever the docker's width
        buttons = QHBoxLayout()
        for button in (self.check, self.show_log, self.uninstall):
            buttons.addWidget(button)
        managed.addLayout(buttons)

        self.model = ComboBox()
        for model in offered_models():
            self.model.addItem(MODEL_LABELS[model], model)
        self.model.setToolTip("what the backend serves; it downloads what it needs on its first start")
        self.model.activated.connect(lambda _index: self._model_changed())
        self.checkpoint = QLineEdit()
        self.checkpoint.setPlaceholderText("an SDXL or SD1.5 .safetensors file (Illustrious, Pony…)")
        self.checkpoint.setToolTip(
            "the backend finds out which family the file is (SDXL or SD1.5) when it starts"
        )
        self.checkpoint.editingFinished.connect(self._model_changed)
        self.browse = QPushButton("…")
        self.browse.setToolTip("choose the checkpoint file")
        self.browse.clicked.connect(self._browse)
        self.controlnet = QCheckBox("ControlNet (keep lines)")
        self.controlnet.setToolTip(
            "also the canny and Tile ControlNets, for restyles that keep the layer's lines, or its "
            "shapes and colours"
        )
        self.speed = QCheckBox("Few-step LoRAs")
        self.speed.setToolTip("also the few-step LoRAs of the speed presets (live mode's fastest)")
        for combo in (self.mode, self.model):  # long item texts never widen the docker
            narrow(combo)
        for box in (self.controlnet, self.speed):
            box.toggled.connect(lambda _on: self._model_changed())
        form = QFormLayout()
        form.addRow("Model", self.model)
        managed.addLayout(form)
        self.file_row = QWidget()
        file_row = QHBoxLayout(self.file_row)
        file_row.setContentsMargins(0, 0, 0, 0)
        file_row.addWidget(QLabel("File"))
        file_row.addWidget(self.checkpoint, 1)
        file_row.addWidget(self.browse)
        managed.addWidget(self.file_row)
        self.folder = QLineEdit()
        self.folder.setPlaceholderText(str(default_layout().home))
        self.folder.setToolTip(
            "where the backend, its Python packages and its models go (empty: beside Krita's resources)"
        )
        self.folder.editingFinished.connect(lambda: controller.link.set_home(self.folder.text()))
        self.pick_folder = QPushButton("…")
        self.pick_folder.setToolTip("choose the backend's folder")
        self.pick_folder.clicked.connect(self._pick_folder)
        folder_row = QHBoxLayout()
        folder_row.addWidget(QLabel("Folder"))
        folder_row.addWidget(self.folder, 1)
        folder_row.addWidget(self.pick_folder)
        managed.addLayout(folder_row)
        managed.addWidget(self.controlnet)
        managed.addWidget(self.speed)
        column.addWidget(self.managed)

        # Remote: today's address and token.
        self.remote = QWidget()
        remote = QFormLayout(self.remote)
        remote.setContentsMargins(0, 0, 0, 0)
        self.url = QLineEdit()
        self.url.setToolTip("the backend's address, e.g. ws://127.0.0.1:8765")
        self.token = QLineEdit()
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText("only if the backend has one")
        self.connect_button = QPushButton("Connect")
        self.connect_button.clicked.connect(self._connect)
        address = QHBoxLayout()
        address.addWidget(self.url, 1)
        address.addWidget(self.connect_button)
        remote.addRow("Server", address)
        remote.addRow("Token", self.token)
        remote.addRow(self._certificate_rows())
        column.addWidget(self.remote)
        self._shown: tuple | None = None

    def _certificate_rows(self) -> QWidget:
        """A wss:// server's certificate: what is trusted, and the artist's choices about it."""
        self.trust_rows = QWidget()
        rows = QVBoxLayout(self.trust_rows)
        rows.setContentsMargins(0, 0, 0, 0)
        self.certificate = QLabel()
        self.certificate.setWordWrap(True)
        self.certificate.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.fingerprint = QLabel()
        self.fingerprint.setStyleSheet("font-family: monospace")
        self.fingerprint.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.fingerprint.setToolTip("SHA-256: compare it with the one the server printed when it started")
        self.trust_button = QPushButton("Trust this certificate")
        self.trust_button.setToolTip("remember this certificate: any other one is refused from then on")
        self.trust_button.clicked.connect(lambda: self.controller.trust_certificate())
        self.forget_button = QPushButton("Forget")
        self.forget_button.setToolTip("forget the trusted certificate: the server's next one is asked about")
        self.forget_button.clicked.connect(lambda: self.controller.forget_certificate())
        self.ca_file = QLineEdit()
        self.ca_file.setPlaceholderText("a studio CA certificate (PEM), if one signs the server's")
        self.ca_file.returnPressed.connect(self._connect)
        self.pick_ca = QPushButton("…")
        self.pick_ca.setToolTip("choose the studio CA's certificate file")
        self.pick_ca.clicked.connect(self._pick_ca)
        for widget in (self.certificate, self.fingerprint):
            rows.addWidget(widget)
        buttons = QHBoxLayout()
        buttons.addWidget(self.trust_button)
        buttons.addWidget(self.forget_button)
        rows.addLayout(buttons)
        ca_row = QHBoxLayout()
        ca_row.addWidget(QLabel("CA file"))
        ca_row.addWidget(self.ca_file, 1)
        ca_row.addWidget(self.pick_ca)
        rows.addLayout(ca_row)
        return self.trust_rows

    def _connect(self) -> None:
        self.controller.reconnect(self.url.text(), self.token.text(), self.ca_file.text())

    def _pick_ca(self) -> None:
        path, _filter = QFileDialog.getOpenFileName(
            self,
            "The studio CA's certificate",
            self.ca_file.text(),
            "Certificates (*.pem *.crt);;All files (*)",
        )
        if path:
            self.ca_file.setText(path)
            self._connect()

    def _show_trust(self, view: TrustView) -> None:
        self.trust_rows.setVisible(view.shown)
        self.certificate.setText(view.line)
        self.fingerprint.setText(view.fingerprint)
        self.fingerprint.setVisible(bool(view.fingerprint))
        self.trust_button.setVisible(view.can_trust)
        self.forget_button.setVisible(view.can_forget)

    # ------------------------------------------------------------------ settings <-> widgets

    def load(self, settings: GenerationSettings) -> None:
        self.mode.setCurrentIndex(max(0, self.mode.findData(settings.backend_mode)))
        self.url.setText(settings.server_url)
        self.token.setText(settings.token)
        self.ca_file.setText(settings.server_ca_file)
        known = {model.value: model for model in ManagedModel}
        chosen = known.get(settings.managed_model, ManagedModel.SDXL)  # an unknown saved value: SDXL
        self.model.setCurrentIndex(max(0, self.model.findData(chosen)))
        self.checkpoint.setText(settings.managed_checkpoint)
        self.folder.setText(settings.managed_home)
        self.controlnet.setChecked(settings.managed_controlnet)
        self.speed.setChecked(settings.managed_speed_loras)

    def _model_changed(self) -> None:
        self.controller.link.set_model(
            self.model.currentData(),
            self.checkpoint.text().strip(),
            self.controlnet.isChecked(),
            self.speed.isChecked(),
        )
        self._shown = None  # the file row may show or hide

    def _pick_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "The InstantStyle backend's folder", self.folder.text()
        )
        if folder:
            self.folder.setText(folder)
            self.controller.link.set_home(folder)

    def _browse(self) -> None:
        path, _filter = QFileDialog.getOpenFileName(
            self, "An SDXL or SD1.5 checkpoint", "", "Checkpoints (*.safetensors);;All files (*)"
        )
        if path:
            self.checkpoint.setText(path)
            self.model.setCurrentIndex(self.model.findData(ManagedModel.CHECKPOINT))
            self._model_changed()

    # ------------------------------------------------------------------ state

    def refresh(self) -> None:
        """Show the manager's phase (called on the controller's ``changed``)."""
        managed_mode = self.controller.settings.backend_mode is BackendMode.MANAGED
        manager = self.controller.link.manager
        phase = manager.phase if manager is not None else Phase.FAILED
        line = manager.line if manager is not None else "Failed: this copy of the plugin carries no backend"
        checking = manager is not None and manager.checking
        trust = trust_view(self.controller.settings, self.controller.session.untrusted)
        shown = (managed_mode, phase, line, checking, trust)
        if shown == self._shown:
            return
        self._shown = shown
        self._show_trust(trust)
        self.managed.setVisible(managed_mode)
        self.remote.setVisible(not managed_mode)
        self.state.setText(line)
        plan = manager.current_plan if manager is not None else None
        self.state.setToolTip(line if plan is None else f"{line}\n\n{plan.checklist}")
        self.primary.setText(manager.primary_label if manager is not None else PRIMARY_ACTION[phase])
        self.primary.setEnabled(manager is not None)
        self.show_log.setEnabled(manager is not None)
        self.check.setText("Checking…" if checking else "Check")
        self.check.setEnabled(not checking and phase in (Phase.STOPPED, Phase.UPDATE_AVAILABLE, Phase.FAILED))
        idle = phase not in (Phase.INSTALLING, Phase.STARTING)
        self.uninstall.setEnabled(manager is not None and idle and phase is not Phase.NOT_INSTALLED)
        choosing = phase in (Phase.NOT_INSTALLED, Phase.STOPPED, Phase.UPDATE_AVAILABLE, Phase.FAILED)
        for widget in (
            self.model,
            self.checkpoint,
            self.browse,
            self.controlnet,
            self.speed,
            self.folder,
            self.pick_folder,
        ):
            widget.setEnabled(choosing)
        self.file_row.setVisible(self.model.currentData() is ManagedModel.CHECKPOINT)
        if managed_mode and phase in NEEDS_A_CLICK:
            self.set_open(True)
        if not managed_mode and trust.asks:
            self.set_open(True)
