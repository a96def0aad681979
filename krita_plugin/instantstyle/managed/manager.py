"""The managed backend as the docker sees it: one phase, one line, and the actions that fit it.

Qt-free: the docker calls ``poll`` from its timer and the buttons call ``install``, ``start``...
An install runs on a thread of its own (``Installer`` blocks); everything else returns at once.
"""

from __future__ import annotations

import os
import threading
from enum import Enum
from pathlib import Path

from .background import DoctorCheck, PlanAsker, child_env
from .install import InstallCancelled, Installer, InstallOptions, InstallProgress
from .installation import (
    Installation,
    InstallError,
    bundle_ids,
    manifest_path,
    read_installation,
    uninstall,
)
from .model_choice import ManagedModel, ModelChoice
from .model_plan import ModelPlan
from .platforms import Layout, Platform, backend_home
from .server_process import ManagedServer, ServerCommand, ServerState, running_server

PACKAGES_FROM_ENV = "INSTANTSTYLE_MANAGED_PACKAGES_FROM"
"""A site-packages folder the managed install reuses with no network (the plugin's tests)."""
PYTHON_ENV = "INSTANTSTYLE_MANAGED_PYTHON"
"""The Python the managed install is built from, instead of the newest one found (the plugin's tests:
the one ``PACKAGES_FROM_ENV``'s packages were built for)."""
HOME_ENV = "INSTANTSTYLE_BACKEND_HOME"
"""Where the managed backend lives, instead of beside Krita's resources (a setting's override)."""


class Phase(str, Enum):
    NOT_INSTALLED = "not installed"
    INSTALLING = "installing"
    STOPPED = "installed"
    UPDATE_AVAILABLE = "update available"
    STARTING = "starting"
    RUNNING = "running"
    FAILED = "failed"


PRIMARY_ACTION = {
    Phase.NOT_INSTALLED: "Install",
    Phase.INSTALLING: "Cancel",
    Phase.STOPPED: "Start",
    Phase.UPDATE_AVAILABLE: "Update",
    Phase.STARTING: "Stop",
    Phase.RUNNING: "Stop",
    Phase.FAILED: "Retry",
}
"""The one button the docker shows for each phase."""


def default_layout(env: dict[str, str] | None = None, chosen: str = "") -> Layout:
    """The backend's folder: the artist's choice (a setting), else beside Krita's resources."""
    env = dict(os.environ) if env is None else env
    system = Platform.current()
    home = chosen.strip() or env.get(HOME_ENV) or str(backend_home(system, env, str(Path.home())))
    return Layout(Path(home).expanduser(), system)


class BackendManager:
    def __init__(self, layout: Layout, bundle: Path, options: InstallOptions | None = None) -> None:
        self.layout = layout
        self.bundle = bundle
        packages, python = os.environ.get(PACKAGES_FROM_ENV), os.environ.get(PYTHON_ENV)
        self.options = options or InstallOptions(
            packages_from=Path(packages) if packages else None, python=[python] if python else None
        )
        self.model = ModelChoice()
        self.server: ManagedServer | None = None
        self._installer: Installer | None = None
        self._thread: threading.Thread | None = None
        self._progress: InstallProgress | None = None
        self._failure: str | None = None
        self._what_failed = ""
        self.shared: tuple[str, str] | None = None
        """(url, token) of a server another Krita window or instance started and still runs."""
        self.plans = PlanAsker()
        """What ``model`` needs (sizes, free disk, device and tier), asked by ``refresh_plan``."""
        self.doctor = DoctorCheck()
        """*Check*'s report (``python -m backend doctor``), to copy into a bug report."""
        self._ids = bundle_ids(bundle)
        """The plugin's backend (packages id, code id): hashed once, not on every timer tick."""
        self._manifest: tuple[int | None, Installation | None] = (None, None)

    # ------------------------------------------------------------------ what the docker shows

    @property
    def installation(self) -> Installation | None:
        """The working install, read again only when ``install.json`` changed (the docker asks on every
        tick of its timer)."""
        try:
            stamp: int | None = manifest_path(self.layout).stat().st_mtime_ns
        except OSError:
            stamp = None
        if stamp != self._manifest[0] or stamp is None:
            self._manifest = (stamp, read_installation(self.layout) if stamp is not None else None)
        return self._manifest[1]

    @property
    def installed(self) -> bool:
        return self.installation is not None

    @property
    def planning(self) -> bool:
        return self.plans.busy

    @property
    def checking(self) -> bool:
        return self.doctor.running

    @property
    def check_report(self) -> str | None:
        return self.doctor.report

    @property
    def phase(self) -> Phase:
        if self._thread is not None and self._thread.is_alive():
            return Phase.INSTALLING
        if self._failure is not None:
            return Phase.FAILED
        if self.server is not None:
            state = self.server.state
            if state is ServerState.READY:
                return Phase.RUNNING
            if state in (ServerState.STARTING, ServerState.LOADING):
                return Phase.STARTING
        if self.shared is not None:
            return Phase.RUNNING
        installation = self.installation
        if installation is None:
            return Phase.NOT_INSTALLED
        packages, code = self._ids
        current = (installation.venv, installation.code) == (f"venv-{packages}", f"code-{code}")
        return Phase.STOPPED if current else Phase.UPDATE_AVAILABLE

    @property
    def line(self) -> str:
        """One line for the docker: what the backend does now, or why it failed."""
        phase = self.phase
        if phase is Phase.INSTALLING:
            return self._progress.line if self._progress is not None else "Installing…"
        if phase is Phase.FAILED:
            return f"Failed: {self._failure}"
        if phase in (Phase.STARTING, Phase.RUNNING) and self.server is not None:
            return self.server.message[:1].upper() + self.server.message[1:]
        if phase is Phase.RUNNING:
            return "Running (started by another Krita window)"
        if phase is Phase.STOPPED:
            answer = self.plans.answer(self.model)
            if answer is None:
                about = "checking what the model needs…" if self.planning else ""
            else:
                about = answer[0].line if answer[0] is not None else answer[1]
                if (
                    answer[0] is not None
                    and answer[0].device == "cpu"
                    and self.model.model is not ManagedModel.TINY
                ):
                    about += " (no GPU found: a real model takes minutes per picture on a CPU)"
            return "Installed, not running" + (f" · {about}" if about else "")
        return {
            Phase.NOT_INSTALLED: "Not installed: Install sets up Python, PyTorch and the backend here",
            Phase.UPDATE_AVAILABLE: "The plugin was updated: Update brings the backend to its version",
        }[phase]

    @property
    def current_plan(self) -> ModelPlan | None:
        """The plan of the model chosen now (None: not asked yet, being asked, or it failed)."""
        answer = self.plans.answer(self.model)
        return answer[0] if answer is not None else None

    @property
    def primary_label(self) -> str:
        """The phase's one button, saying when Start will download first."""
        phase = self.phase
        plan = self.current_plan
        if phase is Phase.STOPPED and plan is not None and plan.missing_bytes > 0:
            return "Download and start"
        return PRIMARY_ACTION[phase]

    @property
    def log_path(self) -> Path:
        """The log *Show log* opens: the install's or the server's, whichever failed or ran last."""
        server_ran = self.server is not None or self._what_failed == "server"
        return Path(self.layout.logs) / ("server.log" if server_ran else "install.log")

    @property
    def address(self) -> tuple[str, str] | None:
        """(url, token) of the server, for the connection, once it listens."""
        # From the moment it listens: while it downloads and loads, the session shows its progress
        # (bytes, time left) and jobs sent meanwhile wait for the model.
        listening = (ServerState.LOADING, ServerState.READY)
        if self.server is not None and self.server.state in listening and self.server.url:
            return self.server.url, self.server.token or ""
        return self.shared if self.server is None else None

    # ------------------------------------------------------------------ actions

    def primary(self) -> None:
        """The phase's one button."""
        phase = self.phase
        if phase in (Phase.NOT_INSTALLED, Phase.UPDATE_AVAILABLE):
            self.install()
        elif phase is Phase.INSTALLING:
            self.cancel()
        elif phase is Phase.STOPPED:
            self.start()
        elif phase in (Phase.STARTING, Phase.RUNNING):
            self.stop()
            self.shared = None  # another window's server: this window stops using it
        else:
            self._failure = None
            (self.install if not self.installed or self._what_failed == "install" else self.start)()

    def install(self) -> None:
        """Install, or update to the plugin's version, on a thread; the server is stopped first."""
        if self._thread is not None and self._thread.is_alive():
            return
        if self.shared is not None or self.checking:  # its files are in use: never deleted under it
            self._fail("install", self._in_use())
            return
        self.stop()
        self._failure, self._progress = None, None
        installer = Installer(self.layout, self.bundle, self.options)
        self._installer = installer

        def work() -> None:
            try:
                installer.run(self._report)
            except InstallCancelled:
                self._progress = None
            except InstallError as error:
                self._fail("install", str(error))
            except Exception as error:  # never a traceback in the docker: the log has the rest
                self._fail("install", f"{type(error).__name__}: {error}")
            finally:
                self.plans.forget()  # a new environment: ask again what the model needs

        self._thread = threading.Thread(target=work, name="instantstyle-install", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        if self._installer is not None:
            self._installer.cancel()

    def wait_for_install(self, seconds: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(seconds)

    def start(self) -> None:
        installation = self.installation
        if installation is None:
            self._fail("install", "the backend is not installed")
            return
        try:
            arguments = self.model.serve_arguments()
        except InstallError as error:
            self._fail("server", str(error))
            return
        plan = self.current_plan
        if plan is not None and not plan.fits:
            self._fail("server", f"not enough disk space for the model: {plan.line}")
            return
        command = ServerCommand(
            [str(installation.python_path(self.layout))],
            arguments,
            cwd=str(installation.code_path(self.layout)),
            env=self._server_env(),
        )
        logs = Path(self.layout.logs)
        self.server = ManagedServer(command, logs / "server.log", Path(self.layout.server_state))
        self._failure = None
        self.server.start()

    def _server_env(self) -> dict[str, str]:
        # Models in the backend's own folder (kept by updates); the tiny test model generated there too.
        env = {"HF_HOME": str(self.layout.models), "INSTANTSTYLE_HOME": str(self.layout.models)}
        if self.model.model is ManagedModel.TINY:
            env["HF_HUB_OFFLINE"] = "1"
        return env

    def _in_use(self) -> str:
        if self.shared is not None:
            return "another Krita window runs this backend: stop it there first"
        return "a Check is running: wait for its report"

    def refresh_plan(self) -> None:
        """Ask, on a thread, what the chosen model needs (unless known or being asked): the docker shows
        the sizes, the free disk and the memory tier before anything downloads."""
        installation = self.installation
        if installation is None or self.plans.answer(self.model) is not None or self.planning:
            return
        try:
            arguments = self.model.serve_arguments()
        except InstallError:
            return  # no checkpoint chosen yet: Start says so
        python, code = installation.python_path(self.layout), installation.code_path(self.layout)
        self.plans.ask(self.model, python, code, arguments, child_env(self._server_env()))

    def check(self) -> None:
        """*Check*, on a thread: the installed backend's ``doctor`` loads the chosen model and runs one
        small job (never beside a running server: two copies of a model do not fit a GPU)."""
        installation = self.installation
        if installation is None or self.checking or self.server is not None or self.shared is not None:
            return
        try:
            arguments = self.model.serve_arguments()
        except InstallError as error:
            self.doctor.report = f"check: {error}"
            return
        command = [str(installation.python_path(self.layout)), "-m", "backend", "doctor", *arguments]
        self.doctor.start(command, installation.code_path(self.layout), child_env(self._server_env()))

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
            self.plans.forget()  # the server may have downloaded what the plan said was missing

    def uninstall(self, remove_models: bool) -> None:
        if self.shared is not None or self.checking:
            self._fail("install", self._in_use())
            return
        self.stop()
        uninstall(self.layout, remove_models)
        self.plans.forget()
        self._failure = None

    def poll(self) -> Phase:
        """Follow the server (from the docker's timer); a server that failed twice is ``FAILED``."""
        if self.server is not None:
            state = self.server.poll()
            if state is ServerState.FAILED:
                self._fail("server", self.server.message)
                self.server.stop()  # one that could not load its model still runs: end it
                self.server = None
                self.plans.forget()
        elif self.shared is not None:
            self.shared = running_server(Path(self.layout.server_state))
        return self.phase

    def reuse_running(self) -> bool:
        """Use the server another Krita window or instance runs, if one does (at start-up)."""
        if self.server is None:
            self.shared = running_server(Path(self.layout.server_state))
        return self.shared is not None

    # ------------------------------------------------------------------ internals

    def _report(self, progress: InstallProgress) -> None:
        self._progress = progress

    def _fail(self, what: str, line: str) -> None:
        self._what_failed, self._failure = what, line.splitlines()[0] if line else what
