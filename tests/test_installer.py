"""The plugin installer: install, upgrade, uninstall exactly, and the import zip."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from installer.install_plugin import build_zip, install, uninstall
from installer.kritarc import enable, undo
from tests.krita_versions import BY_NAME

KRITARC = "[General]\nfoo=bar\n\n[python]\nenable_other=true\n"


@pytest.fixture
def krita_home(tmp_path: Path) -> tuple[Path, Path]:
    resources, kritarc = tmp_path / "krita", tmp_path / "kritarc"
    (resources / "pykrita" / "other").mkdir(parents=True)
    (resources / "pykrita" / "other" / "__init__.py").write_text("# someone else's plugin\n")
    kritarc.write_text(KRITARC)
    return resources, kritarc


def test_install_then_uninstall_leaves_everything_as_it_was(krita_home):
    resources, kritarc = krita_home
    manifest = install(resources, kritarc)
    pykrita = resources / "pykrita"
    assert (pykrita / "kritapykrita_instantstyle.desktop").is_file()
    assert (pykrita / "instantstyle" / "protocol" / "codec.py").is_file()
    assert (pykrita / "instantstyle" / "vendor" / "websockets" / "sync" / "client.py").is_file()
    assert not list(pykrita.rglob("*.so")) and not list(pykrita.rglob("__pycache__"))
    assert "enable_instantstyle=true" in kritarc.read_text().split("[python]")[1]
    assert len(manifest.files) > 50

    install(resources, kritarc)  # an upgrade over itself works
    (pykrita / "instantstyle" / "__pycache__").mkdir()  # what Krita writes when it imports the plugin
    (pykrita / "instantstyle" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"")
    removed = uninstall(resources, kritarc)
    assert len(removed) == len(manifest.files)
    assert sorted(p.name for p in pykrita.iterdir()) == ["other"]
    assert (pykrita / "other" / "__init__.py").read_text() == "# someone else's plugin\n"
    assert kritarc.read_text() == KRITARC


def test_install_refuses_to_overwrite_a_folder_it_did_not_create(krita_home):
    resources, kritarc = krita_home
    (resources / "pykrita" / "instantstyle").mkdir()
    with pytest.raises(SystemExit, match="not installed by this installer"):
        install(resources, kritarc)


def test_a_fresh_home_is_left_as_it_was_found(tmp_path):
    """Install into a home without Krita folders or kritarc; uninstall removes all of it again."""
    home = tmp_path / "home"
    home.mkdir()
    resources, kritarc = home / ".local" / "share" / "krita", home / ".config" / "kritarc"
    install(resources, kritarc)
    assert kritarc.read_text() == "[python]\nenable_instantstyle=true\n"
    uninstall(resources, kritarc)
    assert list(home.iterdir()) == []


def test_a_folder_krita_wrote_into_is_kept(tmp_path):
    resources, kritarc = tmp_path / "krita", tmp_path / "kritarc"
    install(resources, kritarc)
    (resources / "pykrita" / "someone_else.py").write_text("")  # not ours: the folder stays
    uninstall(resources, kritarc)
    assert [p.name for p in (resources / "pykrita").iterdir()] == ["someone_else.py"]
    assert not kritarc.exists()


@pytest.mark.parametrize(
    "before",
    [
        "[General]\r\nfoo=bar\r\n\r\n[python]\r\nenable_other=true\r\n",  # Windows line endings
        "[General]\nfoo=bar",  # no final newline
        "[General]\nfoo = bar  \n# a comment\n\n\n",  # spacing, comments, blank lines
        "[python]\nenable_instantstyle=false\n[other]\nx=1\n",  # the artist had switched it off
        "",
    ],
)
def test_kritarc_keeps_every_other_byte(tmp_path, before):
    kritarc = tmp_path / "kritarc"
    kritarc.write_bytes(before.encode())
    edit = enable(kritarc, "enable_instantstyle")
    after = kritarc.read_bytes()
    assert b"enable_instantstyle=true" in after and b"enable_instantstyle=false" not in after
    if b"\r\n" in before.encode():
        assert after.count(b"\r\n") == after.count(b"\n")  # our line in the file's own line endings
    else:
        assert b"\r" not in after
    undo(edit, "enable_instantstyle")
    assert kritarc.read_bytes() == before.encode()


def test_kritarc_rewritten_by_krita_loses_only_our_section(tmp_path):
    """Krita rewrites kritarc on exit (new keys, other order): the undo still removes only our edit."""
    kritarc = tmp_path / "kritarc"
    kritarc.write_text("[General]\nfoo=bar\n")
    edit = enable(kritarc, "enable_instantstyle")
    kritarc.write_text("[General]\nfoo=bar\nnew=1\n\n[python]\nenable_instantstyle=true\n\n[Zeta]\nz=2\n")
    undo(edit, "enable_instantstyle")
    assert kritarc.read_text() == "[General]\nfoo=bar\nnew=1\n\n[Zeta]\nz=2\n"


def test_an_enable_line_the_artist_had_is_kept(tmp_path):
    kritarc = tmp_path / "kritarc"
    kritarc.write_text("[python]\nenable_instantstyle=true\n")
    assert enable(kritarc, "enable_instantstyle") is None  # nothing changed, nothing to undo
    resources = tmp_path / "krita"
    install(resources, kritarc)
    uninstall(resources, kritarc)
    assert kritarc.read_text() == "[python]\nenable_instantstyle=true\n"


def test_zip_has_the_layout_krita_imports(tmp_path):
    out = build_zip(tmp_path / "instantstyle.zip")
    assert out.stat().st_mode & 0o777 == 0o644  # readable by everyone, like any download
    names = zipfile.ZipFile(out).namelist()
    assert "instantstyle.desktop" in names and "instantstyle/__init__.py" in names
    # Krita's importer finds the plugin by its folder's own entry; every folder has one.
    folders = {n.rsplit("/", 1)[0] + "/" for n in names if "/" in n.rstrip("/")}
    assert "instantstyle/" in names and folders <= set(names)
    assert "instantstyle/protocol/codec.py" in names
    assert "instantstyle/vendor/websockets/sync/client.py" in names
    assert not [n for n in names if n.endswith((".so", ".pyc")) or "__pycache__" in n]
    # The backend's code for the docker's Install: found where the installed plugin looks for it.
    zipfile.ZipFile(out).extractall(tmp_path / "pykrita")
    from krita_plugin.instantstyle.managed.installation import bundle_ids, bundle_root
    from tests.conftest import REPO

    bundle = bundle_root(tmp_path / "pykrita" / "instantstyle")
    assert bundle == tmp_path / "pykrita" / "instantstyle" / "backend_bundle"
    assert (bundle / "backend" / "cli.py").is_file() and (bundle / "installer" / "setup_backend.py").is_file()
    assert bundle_ids(bundle) == bundle_ids(REPO)  # the same code and requirements as this checkout


@pytest.mark.parametrize("krita", ["5.1", "5.2", "6.0"])
def test_installed_core_runs_on_a_python_without_websockets_or_numpy(krita, tmp_path):
    """Krita's Python (the system's: 3.11 beside Krita 5.1, 3.13 beside 5.2 and 5.3, 3.14 beside 6.0) has
    neither: the plugin must bring what it needs, and use nothing these Pythons deprecated or removed."""
    version = BY_NAME[krita]
    if not version.ready:
        if os.environ.get("CI"):
            pytest.fail(f"CI prepares Krita {krita} and its Python, but it is missing")
        pytest.skip(f"Krita {krita} is not prepared here")
    top = tmp_path if version.root is None else Path(tempfile.mkdtemp(dir=version.root / "tmp"))
    resources = top / "krita"
    install(resources, top / "kritarc")
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from instantstyle import connection, errors, pixels, session, settings\n"
        "import websockets, instantstyle.protocol as p\n"
        "assert 'pykrita' in websockets.__file__, websockets.__file__\n"
        "print(p.encode_message(p.Ping(1)))\n"
    )
    guest = resources if version.root is None else Path("/") / resources.relative_to(version.root)
    command = ["/usr/bin/python3", "-I", "-W", "error", "-c", script, str(guest / "pykrita")]
    if version.root is not None:
        command = ["chroot", str(version.root), *command]
    try:
        isolated = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    finally:
        if version.root is not None:
            shutil.rmtree(top)
    assert isolated.returncode == 0, isolated.stderr
    assert '"type":"ping"' in isolated.stdout


def test_command_line(tmp_path):
    out = tmp_path / "dist" / "plugin.zip"
    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, "installer/install_plugin.py", "zip", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=repo, check=True)
    assert out.is_file() and str(out) in result.stdout
    shutil.rmtree(tmp_path / "dist")
