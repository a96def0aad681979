"""Install the InstantStyle plugin into Krita, remove it, or build Krita's import zip.

    python installer/install_plugin.py install [--resources DIR] [--kritarc FILE]
    python installer/install_plugin.py uninstall [--resources DIR] [--kritarc FILE]
    python installer/install_plugin.py zip [--out dist/instantstyle.zip]

``install`` copies the plugin, the ``protocol`` package and a vendored copy of
the pure-Python ``websockets`` package (Krita's Python has neither) into
``pykrita/`` in Krita's resource folder, writes the ``.desktop`` file, enables
the plugin in ``kritarc``, and records every file and folder it created.
``uninstall`` puts back the state before install: those files and folders go,
and kritarc loses exactly the edit install made (every other line keeps its
bytes; a kritarc install created is removed). ``zip`` builds the file that
"Tools > Scripts > Import Python Plugin from File" takes (Krita 5.1 to 6.0),
with the same contents (vendored files are plain files, not submodules).

Krita's folders (the same for Krita 5 and 6): on Linux ~/.local/share/krita and
~/.config/kritarc (or under $XDG_DATA_HOME / $XDG_CONFIG_HOME); on Windows
%APPDATA%\\krita and %LOCALAPPDATA%\\kritarc; on macOS ~/Library/Application
Support/krita and ~/Library/Preferences/kritarc.

Needs Python 3.10+ with the ``websockets`` package installed (it is vendored
from there): the backend's environment has it, so run this with
``.venv/bin/python`` after ``installer/setup_backend.sh``.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kritarc import KritarcEdit, enable, undo  # run as a script, not as a package

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
        sys.exit(
            "the websockets package is needed to build the plugin: run installer/setup_backend.sh, "
            "then this script with .venv/bin/python"
        )
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
    # The backend's code travels with the plugin: the docker's Install copies it into the managed
    # backend's folder, so plugin and backend always speak the same protocol version.
    if str(REPO) not in sys.path:  # run as a script
        sys.path.insert(0, str(REPO))
    from krita_plugin.instantstyle.managed.installation import BUNDLED  # Qt-free, standard library only

    for name in BUNDLED:
        if (REPO / name).is_dir():
            files.update(tree(REPO / name, f"{PLUGIN_NAME}/backend_bundle/{name}"))
        else:
            files[f"{PLUGIN_NAME}/backend_bundle/{name}"] = REPO / name
    return files


@dataclass
class Manifest:
    files: list[str] = field(default_factory=list)
    """Paths relative to ``pykrita/``."""
    folders: list[str] = field(default_factory=list)
    """Folders outside the plugin's own that install created (resources, pykrita, kritarc's)."""
    kritarc: KritarcEdit | None = None

    @classmethod
    def read(cls, path: Path) -> Manifest:
        data = json.loads(path.read_text(encoding="utf-8"))
        edit = data.get("kritarc")
        if isinstance(edit, str):  # written by an older installer: the path of the enabled kritarc
            edit = {"path": edit}
        return cls(list(data["files"]), list(data.get("folders", [])), edit and KritarcEdit.from_json(edit))

    def write(self, path: Path) -> None:
        edit = self.kritarc and self.kritarc.to_json()
        data = {"files": self.files, "folders": self.folders, "kritarc": edit}
        path.write_text(json.dumps(data, indent=1), encoding="utf-8")


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


def install(resources: Path, kritarc: Path) -> Manifest:
    pykrita = resources / "pykrita"
    manifest_path = pykrita / PLUGIN_NAME / MANIFEST_NAME
    folders: list[Path] = []
    if manifest_path.exists():
        folders = [Path(f) for f in Manifest.read(manifest_path).folders]  # still ours after the upgrade
        # An upgrade replaces exactly the old files.
        uninstall(resources, kritarc, quiet=True, keep_folders=True)
    elif (pykrita / PLUGIN_NAME).exists():
        sys.exit(f"{pykrita / PLUGIN_NAME} exists but was not installed by this installer: remove it first")
    folders += missing_folders(pykrita) + missing_folders(kritarc.parent)
    manifest = Manifest(folders=[str(f) for f in dict.fromkeys(folders)])
    for relative, source in plugin_files().items():
        target = pykrita / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        manifest.files.append(relative)
    manifest.kritarc = enable(kritarc, ENABLE_KEY)
    manifest.write(manifest_path)
    return manifest


def uninstall(resources: Path, kritarc: Path, quiet: bool = False, keep_folders: bool = False) -> list[Path]:
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
        undo(manifest.kritarc, ENABLE_KEY)
    for folder in () if keep_folders else sorted(map(Path, manifest.folders), key=lambda p: -len(p.parts)):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return removed


def build_zip(out: Path) -> Path:
    """The zip for Krita's "Import Python Plugin from File": the .desktop file and the folder at its root.

    Krita's importer finds the plugin's folder by its directory entry (``instantstyle/``), so every
    folder gets one; the file is readable by everyone, like any download.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, delete=False, suffix=".zip") as handle:
        temporary = Path(handle.name)
    files = plugin_files()
    folders = sorted({parent.as_posix() for r in files for parent in Path(r).parents if parent != Path(".")})
    with zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as archive:
        for folder in folders:
            entry = zipfile.ZipInfo(folder + "/")
            entry.external_attr = (0o40755 << 16) | 0x10  # a directory, rwxr-xr-x
            archive.writestr(entry, b"")
        for relative, source in files.items():
            name = f"{PLUGIN_NAME}.desktop" if relative == DESKTOP_NAME else relative
            archive.write(source, name)
    temporary.chmod(0o644)
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
