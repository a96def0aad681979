"""Installing, updating and uninstalling the managed backend (Qt-free; the docker runs it on a thread).

Under the backend's home (``platforms.Layout``)::

    venv-<packages id>/    a virtual environment with PyTorch, diffusers... (setup_backend.py's choices)
    code-<code id>/        backend/, protocol/, installer/ and requirements.txt, copied from the plugin
    install.json           which venv and code folder are the working install: written last, atomically
    models/                the Hugging Face cache: kept by updates, removed by an uninstall only if asked
    logs/install.log       every command's output (the docker's *Show log*)

The ids are hashes of what the plugin carries (``requirements.txt``; the code's files), so an updated
plugin is an update: new folders are built beside the working ones and ``install.json`` switches to
them only once every step succeeded. A failed or cancelled install or update leaves the previous
working install, or none, never a half-built one that claims to be ready. An update whose
requirements did not change copies the new code only.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

from .background import NO_WINDOW, child_env
from .installation import (
    Installation,
    InstallError,
    bundle_files,
    bundle_ids,
    manifest_path,
    read_installation,
)
from .platforms import Layout, find_python
from .uv_python import PYPI_UV_JSON, PYTHON_VERSION, UvError, fetch_uv

MIN_FREE_GIB = 8.0
"""Free disk space an install needs besides the models: PyTorch with CUDA is ~5 GB installed."""


class InstallStep(str, Enum):
    SPACE = "checking disk space"
    PYTHON = "finding Python 3.11+"
    VENV = "creating the environment"
    PACKAGES = "installing PyTorch, diffusers and the rest"
    CODE = "copying the backend"
    CHECK = "checking the backend"


@dataclass(frozen=True)
class InstallProgress:
    step: InstallStep
    index: int
    """1-based, of ``total``."""
    total: int
    seconds: float = 0.0
    """Since the install began."""

    @property
    def line(self) -> str:
        return f"Installing… {self.index}/{self.total}: {self.step.value} ({self.seconds:.0f} s)"


class InstallCancelled(InstallError):
    def __init__(self) -> None:
        super().__init__("cancelled: nothing was changed")


@dataclass(frozen=True)
class InstallOptions:
    packages_from: Path | None = None
    """A site-packages folder whose packages the new environment reuses, pip told not to use the
    network (tests, and machines that have them): None installs from the package index."""
    python: list[str] | None = None
    """The Python to build the environment from; None: the newest 3.11+ found on the machine."""
    min_free_gib: float = MIN_FREE_GIB
    uv_index: str | None = PYPI_UV_JSON
    """Where uv is looked up when the computer has no Python 3.11+ (None: never fetch one)."""


ProbeRunner = Callable[[list[str]], "str | None"]


def probe_python(command: list[str]) -> str | None:
    """The output of ``command`` (a Python and ``-c ...``), None when it does not run."""
    try:
        # Not ``text=True``: Krita's embedded Python may decode as ASCII, and a non-ASCII byte raised.
        done = subprocess.run(
            command, capture_output=True, encoding="utf-8", errors="replace", timeout=30,
            env=child_env(), creationflags=NO_WINDOW,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


class Installer:
    """Builds or updates the managed backend; ``run`` blocks (the docker calls it on a thread)."""

    def __init__(
        self,
        layout: Layout,
        bundle: Path,
        options: InstallOptions | None = None,
        probe: ProbeRunner = probe_python,
    ) -> None:
        self.layout = layout
        self.bundle = bundle
        self.options = options or InstallOptions()
        self.probe = probe
        self.home = Path(layout.home)
        self.log_path = Path(layout.logs) / "install.log"
        self._cancel = threading.Event()
        self._process: subprocess.Popen | None = None

    def cancel(self) -> None:
        """Stop at once (the running command and its children end); ``run`` then raises
        ``InstallCancelled``."""
        self._cancel.set()
        process = self._process
        if process is not None and process.poll() is None:
            _end_group(process)

    def run(self, report: Callable[[InstallProgress], None] = lambda progress: None) -> Installation:
        """Install, or update to the plugin's bundle; the previous install stays until this succeeds."""
        started = time.monotonic()
        packages_id, code_id = bundle_ids(self.bundle)
        venv_dir, code_dir = self.home / f"venv-{packages_id}", self.home / f"code-{code_id}"
        current = read_installation(self.layout)
        reuse_venv = current is not None and current.venv == venv_dir.name
        steps = [InstallStep.SPACE, InstallStep.CODE, InstallStep.CHECK]
        if not reuse_venv:
            steps[1:1] = [InstallStep.PYTHON, InstallStep.VENV, InstallStep.PACKAGES]
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        built: list[Path] = []
        python = Path(self.layout.venv_python(venv_dir))
        base_python: list[str] = []
        try:
            for index, step in enumerate(steps, 1):
                if self._cancel.is_set():
                    raise InstallCancelled
                report(InstallProgress(step, index, len(steps), time.monotonic() - started))
                self._log(f"--- {step.value}")
                if step is InstallStep.SPACE:
                    self._check_space(need_venv=not reuse_venv)
                elif step is InstallStep.PYTHON:
                    base_python = self._find_python()
                elif step is InstallStep.VENV:
                    built.append(self._fresh(venv_dir))
                    self._command([*base_python, "-m", "venv", str(venv_dir)], "creating the environment")
                elif step is InstallStep.PACKAGES:
                    self._install_packages(python, venv_dir)
                elif step is InstallStep.CODE:
                    if code_dir != (current and current.code_path(self.layout)):
                        built.append(self._fresh(code_dir))
                        self._copy_code(code_dir)
                else:
                    check = "import torch, diffusers, transformers, websockets, backend.cli, protocol"
                    self._command([str(python), "-c", check], "the backend's check", cwd=code_dir)
            installation = Installation(
                venv_dir.name, code_dir.name, python.relative_to(self.home).as_posix(), time.time()
            )
            self._switch_to(installation, current)
        except BaseException:
            for folder in built:  # nothing half-built stays (nor one a failed switch left unused)
                shutil.rmtree(folder, ignore_errors=True)
            raise
        return installation

    # ------------------------------------------------------------------ steps

    def _check_space(self, need_venv: bool) -> None:
        free = shutil.disk_usage(self.home).free / 2**30
        need = self.options.min_free_gib if need_venv else 0.1
        if free < need:
            raise InstallError(
                f"not enough disk space in {self.home}: {free:.1f} GB free, the backend needs {need:.0f} GB "
                "(plus its models)"
            )

    def _find_python(self) -> list[str]:
        """The newest Python 3.11+ on the computer; where there is none, one fetched with uv."""
        if self.options.python is not None:
            return self.options.python
        command = find_python(self.layout.system, self.probe)
        if command is not None:
            return command
        if self.options.uv_index is None:
            raise InstallError(
                "no Python 3.11 or newer on this computer: install one from python.org (Windows: tick "
                "'Add to PATH'), then press Install again"
            )
        self._log("no Python 3.11+ found: fetching uv from PyPI to install one")
        try:
            uv = fetch_uv(self.home / "uv", self.layout.system, platform.machine(), self.options.uv_index)
        except UvError as error:
            raise InstallError(f"no Python 3.11+ on this computer, and {error}") from error
        # Only uv's own Pythons: ``find`` never answers with a venv or conda Python that happens to be active.
        env = {"UV_PYTHON_INSTALL_DIR": str(self.home / "python"), "UV_PYTHON_PREFERENCE": "only-managed"}
        self._command([str(uv), "python", "install", PYTHON_VERSION], "installing Python with uv", env=env)
        found = self._output([str(uv), "python", "find", PYTHON_VERSION], env)
        if not found or not Path(found).is_file():
            raise InstallError(f"uv installed Python {PYTHON_VERSION} but cannot find it: {self.why()}")
        return [found]

    def _output(self, command: list[str], env: dict[str, str]) -> str:
        """What ``command`` prints (its last line), its errors going to the log."""
        self._log("+ " + " ".join(command))
        with self.log_path.open("ab") as log:
            done = subprocess.run(
                command, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                env=child_env(env), timeout=120, creationflags=NO_WINDOW,
            )  # fmt: skip
        lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
        return lines[-1].strip() if done.returncode == 0 and lines else ""

    def _install_packages(self, python: Path, venv_dir: Path) -> None:
        setup = self.bundle / "installer" / "setup_backend.py"
        command = [str(python), str(setup), "--venv", str(venv_dir), "--runtime"]
        if self.options.packages_from is not None:
            command += ["--packages-from", str(self.options.packages_from)]
        self._command(command, "installing the packages")

    def _copy_code(self, code_dir: Path) -> None:
        for path in bundle_files(self.bundle):
            target = code_dir / path.relative_to(self.bundle)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)

    def _fresh(self, folder: Path) -> Path:
        """An empty folder (what a cancelled or failed earlier attempt left there is removed first)."""
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def _switch_to(self, installation: Installation, previous: Installation | None) -> None:
        """Make ``installation`` the working one (one atomic rename), then remove the previous folders."""
        temporary = manifest_path(self.layout).with_suffix(".json.new")
        temporary.write_text(json.dumps(asdict(installation), indent=1), encoding="utf-8")
        os.replace(temporary, manifest_path(self.layout))
        self._log(f"--- installed: {installation.venv}, {installation.code}")
        if previous is not None:
            for old in (previous.venv, previous.code):
                if old not in (installation.venv, installation.code):
                    shutil.rmtree(self.home / old, ignore_errors=True)

    # ------------------------------------------------------------------ commands and log

    def _log(self, line: str) -> None:
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(line + "\n")

    def _command(
        self, command: list[str], what: str, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        """Run ``command`` with its output in the log; a failure raises with the log's last line."""
        self._log("+ " + " ".join(command))
        # Its own process group: Cancel (and Krita quitting) ends pip and whatever it started too.
        group = {"start_new_session": True} if os.name == "posix" else {}
        flags = NO_WINDOW | getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) if os.name == "nt" else 0
        with self.log_path.open("ab") as log:
            try:
                self._process = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    cwd=cwd, env=child_env(env), creationflags=flags, **group,
                )  # fmt: skip
            except OSError as error:
                raise InstallError(f"could not run {command[0]}: {error}") from error
            try:
                if self._cancel.is_set():  # cancelled while it was being started
                    _end_group(self._process)
                code = self._process.wait()
            finally:
                self._process = None
        if self._cancel.is_set():
            raise InstallCancelled
        if code != 0:
            raise InstallError(f"{what} failed: {self.why()}")

    def why(self) -> str:
        """The log's line that says what went wrong: pip's last ``ERROR:``, else the last line."""
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return "see the log"
        meaningful = [
            line.strip() for line in lines if line.strip() and not line.startswith(("+ ", "---", " "))
        ]
        for prefix in ("ERROR:", "error:"):
            for line in reversed(meaningful):
                if line.startswith(prefix):
                    return line[:300]
        return meaningful[-1][:300] if meaningful else "see the log"


def _end_group(process: subprocess.Popen) -> None:
    """End ``process`` and the processes it started (pip's, ensurepip's)."""
    try:
        if os.name == "posix":
            os.killpg(process.pid, signal.SIGTERM)
        else:
            subprocess.run(
                ["taskkill", "/T", "/F", "/PID", str(process.pid)],
                capture_output=True,
                creationflags=NO_WINDOW,
            )
    except (OSError, subprocess.SubprocessError):
        process.terminate()
