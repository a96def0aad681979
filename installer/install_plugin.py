"""Install the InstantStyle plugin into Krita, remove it, or build Krita's import zip.

    python installer/install_plugin.py install [--resources DIR] [--kritarc FILE]
    python installer/install_plugin.py uninstall [--resources DIR] [--kritarc FILE]
    python installer/install_plugin.py zip [--out dist/instantstyle.zip]

``install`` copies the plugin, the ``protocol`` package and a vendored copy of
the pure-Python ``websockets`` package (Krita's Python has neither) into
``pykrita/`` in Krita's resource folder, writes the ``.desktop`` file, enables
the plugin in ``kritarc``, and records every file it wrote. ``uninstall``
removes exactly those files, and the kritarc line if install added it. ``zip``
builds the file that "Tools > Scripts > Import Python Plugin from File" takes,
with the same contents (vendored files are plain files, not submodules).
Standard library only: it runs with any Python 3.10+.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGIN_NAME = "instantstyle"
DESKTOP_NAME = f"kritapykrita_{PLUGIN_NAME}.desktop"
MANIFEST_NAME = ".install-manifest.json"
ENABLE_KEY = f"enable_{PLUGIN_NAME}"
_SKIP_SUFFIXES = (".pyc", ".so", ".pyd", ".c", ".dylib")


def default_resource_dir() -> Path:
    """Krita's writable resource folder on this OS."""
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming")) / "krita"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "krita"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "krita"


def default_kritarc() -> Path:
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "kritarc"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Preferences" / "kritarc"
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kritarc"


def websockets_source() -> Path:
    """The installed ``websockets`` package to vendor (pure Python; the C speedups are left out)."""
    try:
        import websockets
    except ImportError:
        sys.exit("the websockets package is needed to build the plugin: run installer/setup_backend.sh first")
    return Path(websockets.__file__).resolve().parent


def plugin_files() -> dict[str, Path]:
    """Relative path inside ``pykrita/`` -> source file, for everything the plugin needs."""

    def tree(source: Path, target: str) -> dict[str, Path]:
        return {
            f"{target}/{path.relative_to(source).as_posix()}": path
            for path in sorted(source.rglob("*"))
            if path.is_file() and "__pycache__" not in path.parts and not path.name.endswith(_SKIP_SUFFIXES)
        }

    files = {DESKTOP_NAME: REPO / "krita_plugin" / f"{PLUGIN_NAME}.desktop"}
    files.update(tree(REPO / "krita_plugin" / PLUGIN_NAME, PLUGIN_NAME))
    files.update(tree(REPO / "protocol", f"{PLUGIN_NAME}/protocol"))
    files.update(tree(websockets_source(), f"{PLUGIN_NAME}/vendor/websockets"))
    return files


@dataclass
class Manifest:
    files: list[str] = field(default_factory=list)
    kritarc: str | None = None
    """The kritarc we added the enable line to, if we added it."""

    @classmethod
    def read(cls, path: Path) -> Manifest:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(list(data["files"]), data.get("kritarc"))

    def write(self, path: Path) -> None:
        path.write_text(
            json.dumps({"files": self.files, "kritarc": self.kritarc}, indent=1), encoding="utf-8"
        )


def set_kritarc_enabled(kritarc: Path, enabled: bool) -> bool:
    """Add (or remove) ``enable_instantstyle=true`` in the [python] section. Returns whether it changed."""
    lines = kritarc.read_text(encoding="utf-8").splitlines() if kritarc.exists() else []
    start = next((i for i, line in enumerate(lines) if line.strip() == "[python]"), None)
    end = (
        len(lines)
        if start is None
        else next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    )
    existing = (
        None
        if start is None
        else next((i for i in range(start + 1, end) if lines[i].split("=", 1)[0].strip() == ENABLE_KEY), None)
    )
    if enabled:
        if existing is not None and lines[existing].split("=", 1)[1].strip() == "true":
            return False
        if existing is not None:
            lines[existing] = f"{ENABLE_KEY}=true"
        elif start is not None:
            lines.insert(start + 1, f"{ENABLE_KEY}=true")
        else:
            lines += (["", "[python]"] if lines else ["[python]"]) + [f"{ENABLE_KEY}=true"]
    else:
        if existing is None:
            return False
        del lines[existing]
    kritarc.parent.mkdir(parents=True, exist_ok=True)
    kritarc.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return True


def install(resources: Path, kritarc: Path) -> Manifest:
    pykrita = resources / "pykrita"
    manifest_path = pykrita / PLUGIN_NAME / MANIFEST_NAME
    if manifest_path.exists():
        uninstall(resources, kritarc, quiet=True)  # an upgrade replaces exactly the old files
    elif (pykrita / PLUGIN_NAME).exists():
        sys.exit(f"{pykrita / PLUGIN_NAME} exists but was not installed by this installer: remove it first")
    manifest = Manifest()
    for relative, source in plugin_files().items():
        target = pykrita / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        manifest.files.append(relative)
    if set_kritarc_enabled(kritarc, True):
        manifest.kritarc = str(kritarc)
    manifest.write(manifest_path)
    return manifest


def uninstall(resources: Path, kritarc: Path, quiet: bool = False) -> list[Path]:
    pykrita = resources / "pykrita"
    manifest_path = pykrita / PLUGIN_NAME / MANIFEST_NAME
    if not manifest_path.exists():
        if not quiet:
            print(f"nothing to uninstall: no {manifest_path}")
        return []
    manifest = Manifest.read(manifest_path)
    removed = []
    for relative in manifest.files:
        path = pykrita / relative
        if path.is_file():
            path.unlink()
            removed.append(path)
    manifest_path.unlink()
    # Remove the folders we emptied (pycache that Krita wrote inside them included), never others.
    folders = {
        parent for r in manifest.files for parent in (pykrita / r).parents if pykrita in parent.parents
    }
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        cache = folder / "__pycache__"
        if cache.is_dir():
            shutil.rmtree(cache)
        if folder != pykrita and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    if manifest.kritarc:
        set_kritarc_enabled(Path(manifest.kritarc), False)
    return removed


def build_zip(out: Path) -> Path:
    """The zip for Krita's "Import Python Plugin from File": the .desktop file and the folder at its root."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, delete=False, suffix=".zip") as handle:
        temporary = Path(handle.name)
    with zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as archive:
        for relative, source in plugin_files().items():
            name = f"{PLUGIN_NAME}.desktop" if relative == DESKTOP_NAME else relative
            archive.write(source, name)
    temporary.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="install_plugin.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["install", "uninstall", "zip"])
    parser.add_argument("--resources", type=Path, default=None, help="Krita's resource folder")
    parser.add_argument("--kritarc", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "dist" / f"{PLUGIN_NAME}.zip")
    args = parser.parse_args(argv)
    resources = args.resources or default_resource_dir()
    kritarc = args.kritarc or default_kritarc()
    if args.command == "install":
        manifest = install(resources, kritarc)
        print(
            f"installed {len(manifest.files)} files into {resources / 'pykrita'}; restart Krita, then open "
            "Settings > Dockers > InstantStyle"
        )
    elif args.command == "uninstall":
        removed = uninstall(resources, kritarc)
        print(f"removed {len(removed)} files")
    else:
        print(f"wrote {build_zip(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
