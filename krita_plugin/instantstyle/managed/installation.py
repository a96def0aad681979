"""What is installed, as the plugin knows it: ``install.json``'s record, the ids of the backend the
plugin carries (an update is a different id), and the uninstall.

``install.json`` names the working environment and code folders; it is written last, atomically, by
``install.Installer``, so a record that exists always points at a complete install.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .platforms import Layout

BUNDLED = ("backend", "protocol", "installer/__init__.py", "installer/setup_backend.py", "requirements.txt")
"""What the plugin carries of the backend (``backend_bundle/`` in its zip), relative to the repository."""


class InstallError(Exception):
    """An install or update failed; the message is one line for the docker, the log has the rest."""


@dataclass(frozen=True)
class Installation:
    """The working install, as ``install.json`` records it."""

    venv: str
    code: str
    python: str
    """The venv's Python, relative to the home."""
    installed_at: float

    def python_path(self, layout: Layout) -> Path:
        return Path(layout.home, self.python)

    def code_path(self, layout: Layout) -> Path:
        return Path(layout.home, self.code)


def manifest_path(layout: Layout) -> Path:
    return Path(layout.home, "install.json")


def read_installation(layout: Layout) -> Installation | None:
    """The working install, or None (nothing installed, or a record that does not hold together)."""
    try:
        data = json.loads(manifest_path(layout).read_text(encoding="utf-8"))
        installation = Installation(data["venv"], data["code"], data["python"], float(data["installed_at"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not installation.python_path(layout).exists() or not installation.code_path(layout).is_dir():
        return None
    return installation


def bundle_root(plugin_dir: Path) -> Path:
    """Where the plugin's copy of the backend is: ``backend_bundle/`` in an installed plugin, the
    repository's root in a checkout."""
    for candidate in (plugin_dir / "backend_bundle", plugin_dir.parents[1]):
        if all((candidate / name).exists() for name in BUNDLED):
            return candidate
    raise InstallError(
        f"the plugin carries no backend (no backend_bundle in {plugin_dir}): reinstall the plugin"
    )


def _digest(paths: Sequence[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def bundle_files(bundle: Path) -> list[Path]:
    files = []
    for name in BUNDLED:
        top = bundle / name
        for path in [top] if top.is_file() else top.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.append(path)
    return files


def bundle_ids(bundle: Path) -> tuple[str, str]:
    """(packages id, code id): what decides whether an update needs a new environment or code only
    (the packages: the requirements and setup_backend.py, which pins PyTorch and picks its build)."""
    packages = [bundle / "requirements.txt", bundle / "installer" / "setup_backend.py"]
    return _digest(packages, bundle), _digest(bundle_files(bundle), bundle)


def uninstall(layout: Layout, remove_models: bool) -> None:
    """Remove the environment and code (and the models only if asked); the log folder stays."""
    home = Path(layout.home)
    with contextlib.suppress(FileNotFoundError):
        manifest_path(layout).unlink()
    if not home.is_dir():
        return
    for child in home.iterdir():
        if child.is_dir() and (child.name.startswith(("venv-", "code-")) or child.name in ("uv", "python")):
            shutil.rmtree(child, ignore_errors=True)
    if remove_models:
        shutil.rmtree(Path(layout.models), ignore_errors=True)
