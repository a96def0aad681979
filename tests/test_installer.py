"""The plugin installer: install, upgrade, uninstall exactly, and the import zip."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from installer.install_plugin import build_zip, install, set_kritarc_enabled, uninstall

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


def test_an_enable_line_the_artist_had_is_kept(tmp_path):
    kritarc = tmp_path / "kritarc"
    kritarc.write_text("[python]\nenable_instantstyle=true\n")
    assert not set_kritarc_enabled(kritarc, True)
    fresh = tmp_path / "fresh" / "kritarc"
    assert set_kritarc_enabled(fresh, True) and fresh.read_text() == "[python]\nenable_instantstyle=true\n"
    assert set_kritarc_enabled(fresh, False) and "enable_instantstyle" not in fresh.read_text()


def test_zip_has_the_layout_krita_imports(tmp_path):
    names = zipfile.ZipFile(build_zip(tmp_path / "instantstyle.zip")).namelist()
    assert "instantstyle.desktop" in names and "instantstyle/__init__.py" in names
    assert "instantstyle/protocol/codec.py" in names
    assert "instantstyle/vendor/websockets/sync/client.py" in names
    assert not [n for n in names if n.endswith((".so", ".pyc")) or "__pycache__" in n]


def test_installed_core_runs_on_a_python_without_websockets_or_numpy(krita_home, tmp_path):
    """Krita's Python (Debian's /usr/bin/python3) has neither: the plugin must bring what it needs."""
    if not Path("/usr/bin/python3").exists():
        if os.environ.get("CI"):
            pytest.fail("CI installs Krita and with it Debian's python3, but /usr/bin/python3 is missing")
        pytest.skip("no system Python here")
    resources, kritarc = krita_home
    install(resources, kritarc)
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from instantstyle import connection, session, settings\n"
        "import websockets, instantstyle.protocol as p\n"
        "assert 'pykrita' in websockets.__file__, websockets.__file__\n"
        "print(p.encode_message(p.Ping(1)))\n"
    )
    isolated = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", script, str(resources / "pykrita")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert isolated.returncode == 0, isolated.stderr
    assert '"type":"ping"' in isolated.stdout


def test_command_line(tmp_path):
    out = tmp_path / "dist" / "plugin.zip"
    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, "installer/install_plugin.py", "zip", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=repo, check=True)
    assert out.is_file() and str(out) in result.stdout
    shutil.rmtree(tmp_path / "dist")
