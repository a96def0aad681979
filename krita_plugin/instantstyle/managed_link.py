"""The controller's side of the managed backend: starts it with Krita, connects the session to it once
it runs (and again after a restart), and carries out the Backend section's buttons."""

from __future__ import annotations

import logging
from pathlib import Path

from .managed.installation import InstallError, bundle_root
from .managed.manager import BackendManager, Phase, default_layout
from .managed.model_choice import ManagedModel, ModelChoice
from .qt import QDesktopServices, QMessageBox, QUrl
from .settings import BackendMode

log = logging.getLogger(__name__)


class ManagedLink:
    def __init__(self, controller) -> None:
        self.controller = controller
        self.manager = self._manager()
        """None: this copy of the plugin carries no backend (its section says so)."""
        self._address: tuple[str, str] | None = None
        """The address the session is connected to, once the managed backend runs."""
        self._shown: tuple[Phase, str] | None = None
        self._start_when_planned = False
        """An install just finished: start once the plan says nothing needs downloading."""
        self._check_box = None
        """The open *Check* report (kept: a dialog without a reference is gone at once)."""
        self._checking = False

    @property
    def active(self) -> bool:
        return self.manager is not None and self.controller.settings.backend_mode is BackendMode.MANAGED

    def _manager(self) -> BackendManager | None:
        try:
            bundle = bundle_root(Path(__file__).resolve().parent)
        except InstallError as error:
            log.warning("%s", error)
            return None
        manager = BackendManager(default_layout(chosen=self.controller.settings.managed_home), bundle)
        manager.model = self.model_choice()
        return manager

    def model_choice(self) -> ModelChoice:
        s = self.controller.settings
        try:
            model = ManagedModel(s.managed_model)
        except ValueError:
            model = ManagedModel.SDXL
        return ModelChoice(model, s.managed_checkpoint, s.managed_controlnet, s.managed_speed_loras)

    def status_line(self) -> str:
        """The docker's top line until the managed backend runs ("" once connected, or when remote)."""
        if self.active and self._address is None:
            return f"Backend: {self.manager.line}"  # type: ignore[union-attr]
        return ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """At start-up: use the server another window runs, else start ours if it is installed and
        its model needs no download (one that does waits for the artist's click on the sizes)."""
        if self.manager is None or self.manager.reuse_running():
            return
        self._start_when_planned = self.manager.phase is Phase.STOPPED

    def shutdown(self) -> None:
        if self.manager is not None:
            self.manager.cancel()
            self.manager.stop()  # a server another window started is that window's to stop

    def follow(self) -> None:
        """From the timer: follow the managed backend; connect once it runs, again if it restarted."""
        if not self.active:
            return
        manager = self.manager
        assert manager is not None
        phase = manager.poll()
        if phase is Phase.STOPPED:
            manager.refresh_plan()  # sizes, free disk and memory tier, before anything downloads
        was = self._shown[0] if self._shown is not None else None
        if was is Phase.INSTALLING and phase is Phase.STOPPED:
            self._start_when_planned = True
        if phase is not Phase.STOPPED:
            self._start_when_planned = False
        elif self._start_when_planned and (answer := manager.plans.answer(manager.model)) is not None:
            # Install (and Krita's start) end with the backend running when nothing needs
            # downloading; otherwise the artist reads the sizes first and clicks "Download and start".
            self._start_when_planned = False
            if answer[0] is not None and answer[0].missing_bytes == 0:
                manager.start()
                phase = manager.phase
        address = manager.address
        if address != self._address:
            self._address = address
            if address is not None:
                self.controller.connect_to(*address)
        if self._checking and not manager.checking:
            self._checking = False
            self._show_check(manager.check_report or "")
        shown = (phase, manager.line)
        if shown != self._shown:
            self._shown = shown
            self.controller.changed.emit()

    # ------------------------------------------------------------------ the section's buttons

    def set_mode(self, mode: BackendMode) -> None:
        self._start_when_planned = False
        settings = self.controller.settings
        if mode is settings.backend_mode:
            return
        settings.backend_mode = mode
        self.controller.save()
        self._address = None
        if mode is BackendMode.REMOTE:
            if self.manager is not None:
                self.manager.stop()
            self.controller.connect_to(settings.server_url, settings.token)
        else:
            self.controller.session.connection.stop(timeout=2.0)
            self.start()
        self.controller.changed.emit()

    def set_model(self, model: ManagedModel, checkpoint: str, controlnet: bool, speed: bool) -> None:
        self._start_when_planned = False  # the artist is choosing: never start behind their back
        s = self.controller.settings
        s.managed_model, s.managed_checkpoint = model.value, checkpoint
        s.managed_controlnet, s.managed_speed_loras = controlnet, speed
        self.controller.save()
        if self.manager is not None:
            self.manager.model = self.model_choice()
        self.controller.changed.emit()

    def set_home(self, folder: str) -> None:
        """Another folder for the backend: what is there (an install, or none) is what the docker shows."""
        settings = self.controller.settings
        if folder.strip() == settings.managed_home.strip():
            return
        if self.manager is not None:
            self.manager.cancel()
            self.manager.stop()
        settings.managed_home = folder.strip()
        self.controller.save()
        self.manager = self._manager()
        self._address, self._shown = None, None
        self.controller.changed.emit()

    def primary(self) -> None:
        self._start_when_planned = False
        if self.manager is not None:
            self.controller._attempt("the backend", self.manager.primary)
            self.controller.changed.emit()

    def show_log(self) -> None:
        if self.manager is None:
            return
        path = self.manager.log_path
        if path.exists():
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(path)))
        else:
            self.controller._say(f"no log yet ({path})")

    def check(self) -> None:
        if self.manager is not None:
            self.manager.check()
            self._checking = self.manager.checking
            if not self._checking and self.manager.check_report:  # refused at once: say why
                self.controller._say(self.manager.check_report)
            self.controller.changed.emit()

    def _show_check(self, report: str) -> None:
        box = QMessageBox()
        box.setWindowTitle("InstantStyle backend check")
        box.setText(report.splitlines()[-1] if report else "the check said nothing")
        box.setDetailedText(report)  # a text box to select and copy from
        box.setModal(False)
        box.show()
        self._check_box = box
        self.controller.changed.emit()

    def uninstall(self) -> None:
        if self.manager is None:
            return
        buttons = QMessageBox.StandardButton
        answer = QMessageBox.question(
            None,
            "Uninstall the InstantStyle backend",
            "Remove the backend's environment? Also remove its downloaded models?\n\n"
            "Yes: remove the models too. No: keep them for a later install.",
            buttons.Yes | buttons.No | buttons.Cancel,
        )
        if answer == buttons.Cancel:
            return
        self.controller._attempt("uninstalling", self.manager.uninstall, answer == buttons.Yes)
        self._address = None
        self.controller.changed.emit()
