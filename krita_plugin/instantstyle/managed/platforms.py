"""Where the managed backend lives and which Python runs it, decided per platform.

Every decision is a pure function of the platform, the environment and what a probe says, so that
Windows and macOS are unit-tested on any machine. The backend never goes inside Krita's install:
its folder sits beside Krita's own resource folder (``~/.local/share/krita``,
``%APPDATA%\\krita``, ``~/Library/Application Support/krita``).
"""

from __future__ import annotations

import platform as _platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import PurePath, PurePosixPath, PureWindowsPath

MIN_PYTHON = (3, 11)
FOLDER_NAME = "instantstyle"


class Platform(str, Enum):
    LINUX = "linux"
    WINDOWS = "windows"
    MACOS = "macos"

    @classmethod
    def current(cls) -> Platform:
        system = _platform.system()
        return cls.WINDOWS if system == "Windows" else cls.MACOS if system == "Darwin" else cls.LINUX


def backend_home(system: Platform, env: Mapping[str, str], home: str) -> PurePath:
    """The per-user folder of the managed backend: beside Krita's resource folder."""
    if system is Platform.WINDOWS:
        appdata = env.get("APPDATA") or str(PureWindowsPath(home, "AppData", "Roaming"))
        return PureWindowsPath(appdata, FOLDER_NAME)
    if system is Platform.MACOS:
        return PurePosixPath(home, "Library", "Application Support", FOLDER_NAME)
    data = env.get("XDG_DATA_HOME") or str(PurePosixPath(home, ".local", "share"))
    return PurePosixPath(data, FOLDER_NAME)


@dataclass(frozen=True)
class Layout:
    """The managed backend's folders and files under its home."""

    home: PurePath
    system: Platform

    def venv_python(self, venv: PurePath) -> PurePath:
        """The Python of the virtual environment ``venv`` (one of the home's ``venv-*`` folders)."""
        if self.system is Platform.WINDOWS:
            return venv / "Scripts" / "python.exe"
        return venv / "bin" / "python"

    @property
    def models(self) -> PurePath:
        """The Hugging Face cache of the managed backend: kept by updates and uninstalls."""
        return self.home / "models"

    @property
    def logs(self) -> PurePath:
        return self.home / "logs"

    @property
    def server_state(self) -> PurePath:
        """The running server's pid, address and token: a second Krita instance reuses it."""
        return self.home / "server.json"


MINORS = (13, 12, 11)
MAC_FOLDERS = (
    "/opt/homebrew/bin",
    "/usr/local/bin",
    "/Library/Frameworks/Python.framework/Versions/3.{minor}/bin",
)
"""Where macOS Pythons are: Krita started from the Finder has a PATH without Homebrew's or python.org's."""


def python_candidates(system: Platform) -> list[list[str]]:
    """Commands that may start a Python 3.11+ here, the newest first (the launcher ``py`` on Windows).

    On macOS by absolute path, and never a bare ``python3``: ``/usr/bin/python3`` without the
    Command Line Tools opens their install dialog instead of answering."""
    if system is Platform.WINDOWS:
        return [["py", f"-3.{minor}"] for minor in MINORS] + [["python"]]
    if system is Platform.MACOS:
        found = [
            [f"{folder.format(minor=minor)}/python3.{minor}"] for minor in MINORS for folder in MAC_FOLDERS
        ]
        return found + [[f"python3.{minor}"] for minor in MINORS]
    return [[f"python3.{minor}"] for minor in MINORS] + [["python3"]]


VERSION_PROBE = "import sys; print('%d.%d' % sys.version_info[:2])"


def find_python(system: Platform, probe: Callable[[list[str]], str | None]) -> list[str] | None:
    """The first candidate whose ``probe`` (the command plus ``-c VERSION_PROBE``'s output, None when it
    does not run) says 3.11 or newer; None: fetch one with uv (``uv_wheel``)."""
    for command in python_candidates(system):
        answer = probe([*command, "-c", VERSION_PROBE])
        try:
            major, minor = (int(part) for part in (answer or "").strip().split("."))
        except ValueError:
            continue
        if (major, minor) >= MIN_PYTHON:
            return command
    return None


def pick_uv_wheel(filenames: list[str], system: Platform, machine: str) -> str | None:
    """Of a ``uv`` release's files on PyPI (its JSON API lists them), the wheel that carries this
    machine's binary: where no Python 3.11+ is installed, Krita's own Python downloads and unzips it,
    and uv fetches a Python. Matched by platform tag, not one fixed name: the glibc baseline in
    manylinux tags moves between releases. None: no build for this machine."""
    arch = ARCHES.get(machine.lower())
    if arch is None:
        return None
    for name in sorted(filenames):
        if not name.endswith(".whl"):
            continue
        tags = name[: -len(".whl")].split("-")[-1]
        if system is Platform.WINDOWS and tags == ("win_amd64" if arch == "x86_64" else "win_arm64"):
            return name
        if system is Platform.MACOS and tags.startswith("macosx_") and tags.endswith(f"_{MAC_ARCHES[arch]}"):
            return name
        if system is Platform.LINUX and tags.startswith("manylinux") and tags.endswith(f"_{arch}"):
            return name
    return None


ARCHES = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}
MAC_ARCHES = {"x86_64": "x86_64", "aarch64": "arm64"}
