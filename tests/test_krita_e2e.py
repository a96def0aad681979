"""End to end in real Krita (Debian's package, on an Xvfb display) against a real backend on the tiny model.

The installer installs the plugin into a throw-away Krita home; a test-only
plugin (tests/krita_e2e) drives it like an artist and reports what it saw.
Artifacts (exported canvas, screenshots, Krita's log) go to artifacts/krita-e2e/.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.engine.request import GenerationRequest, StyleReference
from krita_plugin.instantstyle.settings import GenerationSettings, JobKind, save_settings
from protocol import Mode
from tests.conftest import REPO

pytestmark = pytest.mark.krita

ARTIFACTS = REPO / "artifacts" / "krita-e2e"
KRITA_TIMEOUT = 200
PROMPT = "a lighthouse at dusk"
SEED = 1234
STEPS = 5
STRENGTH = 0.6


def _krita_missing() -> str | None:
    missing = [tool for tool in ("krita", "Xvfb") if shutil.which(tool) is None]
    return f"not installed: {', '.join(missing)} (apt-get install krita xvfb xauth)" if missing else None


@pytest.fixture(scope="module")
def krita_available() -> None:
    reason = _krita_missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the real-Krita test, but {reason}")
        pytest.skip(reason)


@contextlib.contextmanager
def virtual_display(log) -> Iterator[str]:
    """An Xvfb server, ready when this yields its display name.

    ``Xvfb -displayfd`` picks a free display and reports it only once it accepts clients: xvfb-run's
    own readiness wait can lose that race on a busy machine, and Krita then finds no display.
    """
    read_end, write_end = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_end), "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
        pass_fds=(write_end,),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    os.close(write_end)
    try:
        number = b""
        deadline = time.monotonic() + 30
        while not number.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([read_end], [], [], 1.0)
            if ready:
                chunk = os.read(read_end, 16)
                if not chunk:
                    break
                number += chunk
        assert number.strip().isdigit(), f"Xvfb did not start (it said {number!r}); see {log.name}"
        yield f":{number.strip().decode()}"
    finally:
        os.close(read_end)
        stop_group(xvfb)


def run_until_done(command: list[str], env: dict[str, str], log, cwd: Path) -> None:
    """Run in its own process group, so that nothing outlives the test (a timeout is judged by the report)."""
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
    )
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(KRITA_TIMEOUT)
    stop_group(process)


def stop_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


class KritarcStore:
    """Writes the plugin's settings into kritarc's [instantstyle] group, as Krita's writeSetting does."""

    def __init__(self) -> None:
        self.lines: list[str] = ["[instantstyle]"]

    def read(self, key: str, default: str) -> str:
        return default

    def write(self, key: str, value: str) -> None:
        self.lines.append(f"{key}={value}")


@pytest.fixture(scope="module")
def backend_url(krita_available, tiny_paths):
    process = subprocess.Popen(
        [sys.executable, "-m", "backend", "serve", "--model", "tiny", "--port", "0", "--device", "cpu"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ},
    )
    lines = []
    try:
        for line in process.stdout:  # type: ignore[union-attr]
            lines.append(line)
            match = re.search(r"ready on (ws://\S+)", line)
            if match:
                yield match.group(1)
                break
        else:
            pytest.fail("the backend did not start:\n" + "".join(lines))
    finally:
        process.terminate()  # SIGTERM: the server shuts down cleanly
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def krita_run(backend_url, tmp_path_factory):
    home = tmp_path_factory.mktemp("krita-home")
    # Krita embeds the system Python (with PyQt5); a virtual environment or pyenv on PATH would
    # make it pick up another prefix without PyQt5, so Krita gets a plain system environment.
    keep = ("LANG", "LC_ALL", "TZ")
    env = {
        **{key: os.environ[key] for key in keep if key in os.environ},
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_RUNTIME_DIR": str(home / "runtime"),
        "INSTANTSTYLE_E2E_OUT": str(ARTIFACTS),
    }
    (home / "runtime").mkdir(mode=0o700)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    resources, kritarc = home / ".local" / "share" / "krita", home / ".config" / "kritarc"

    # The real installer, as an artist would run it.
    installed = subprocess.run(
        [
            sys.executable,
            "installer/install_plugin.py",
            "install",
            "--resources",
            str(resources),
            "--kritarc",
            str(kritarc),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    # The test hook plugin, and the docker settings a returning artist would have saved.
    shutil.copytree(
        REPO / "tests" / "krita_e2e" / "instantstyle_e2e", resources / "pykrita" / "instantstyle_e2e"
    )
    shutil.copy(REPO / "tests" / "krita_e2e" / "kritapykrita_instantstyle_e2e.desktop", resources / "pykrita")
    store = KritarcStore()
    save_settings(
        store,
        GenerationSettings(
            server_url=backend_url,
            prompt=PROMPT,
            content_text="stripes",
            seed=SEED,
            seed_locked=True,
            steps=STEPS,
            strength=STRENGTH,
            kind=JobKind.STYLIZE,
        ),
    )
    text = kritarc.read_text().replace("[python]\n", "[python]\nenable_instantstyle_e2e=true\n")
    kritarc.write_text(text + "\n" + "\n".join(store.lines) + "\n")

    log_path = ARTIFACTS / "krita.log"
    with log_path.open("w") as log, virtual_display(log) as display:
        run_until_done(["krita", "--nosplash"], {**env, "DISPLAY": display}, log, home)
    report_path = ARTIFACTS / "report.json"
    assert report_path.exists(), "Krita never ran the test hook; see " + str(log_path)
    report = json.loads(report_path.read_text())
    assert "error" not in report, report["error"]
    assert report.get("finished"), f"the hook did not finish: {report['steps'][-3:]}"
    return {"report": report, "installed": installed.stdout, "resources": resources, "kritarc": kritarc}


def expected_pixels(engine, **fields) -> np.ndarray:
    """What the engine makes for the e2e settings (prompt, content, seed, steps, 64x64) plus ``fields``."""
    request = {
        "prompt": PROMPT,
        "content_text": "stripes",
        "width": 64,
        "height": 64,
        "steps": STEPS,
        "seed": SEED,
    }
    return engine.generate(GenerationRequest(**{**request, **fields})).images[0]


def _rgba(name: str) -> np.ndarray:
    return np.frombuffer((ARTIFACTS / name).read_bytes(), np.uint8).reshape(64, 64, 4)


def test_plugin_installs_and_registers_in_real_krita(krita_run):
    report = krita_run["report"]
    assert "installed" in krita_run["installed"]
    assert "instantstyle_docker" in report["dockers"]
    assert report["settings_loaded"] == {
        "prompt": PROMPT,
        "seed": SEED,
        "url": report["settings_loaded"]["url"],
    }
    assert report["status"].startswith("connected") and "TEST/DEMO" in report["status"]


def test_stylize_layer_adds_the_exact_result_and_keeps_the_artists_layer(krita_run, engine):
    stylize = krita_run["report"]["stylize"]
    assert stylize["preview_seen"], "no preview layer appeared while the job ran"
    assert "InstantStyle preview" not in stylize["layers_after"]
    assert stylize["new_layers"] == [f"InstantStyle: {PROMPT} (seed {SEED}) [TEST MODEL]"]
    assert (
        stylize["layers_after"].index(stylize["new_layers"][0])
        == stylize["layers_after"].index("Painted") + 1
    )
    assert stylize["source_unchanged"]
    assert stylize["layer_equals_received"]

    # The layer holds exactly what the engine makes for the same request.
    source = Image.fromarray(_rgba("source.rgba"), "RGBA").convert("RGB")
    expected = expected_pixels(
        engine, style_images=[StyleReference(source)], mode=Mode.IMG2IMG, init_image=source, strength=STRENGTH
    )
    layer = _rgba("layer.rgba")
    assert np.array_equal(layer[..., :3], expected) and (layer[..., 3] == 255).all()
    assert krita_run["report"]["exported"] and (ARTIFACTS / "canvas.png").stat().st_size > 0
    assert Image.open(ARTIFACTS / "canvas.png").size == (64, 64)


def test_cancel_and_closing_a_document_mid_job(krita_run):
    cancel = krita_run["report"]["cancel"]
    assert cancel["state"] == "cancelled" and cancel["step"] < cancel["total"]
    assert cancel["layers_after"] == ["Background", "Painted"] or cancel["layers_after"] == ["Painted"]
    closing = krita_run["report"]["close"]
    assert closing["krita_alive"] and closing["state"] in ("done", "failed", "cancelled")
    assert "Traceback" not in closing["message"]


def test_a_16_bit_document_gets_an_exact_16_bit_result(krita_run):
    deep = krita_run["report"]["deep"]
    assert deep["depth"] == "U16" and len(deep["new_layers"]) == 1
    assert deep["layer_equals_received"] and deep["exact_16_bit"] and deep["source_unchanged"]
    assert deep["equals_8_bit_result"]


def test_two_weighted_references_blend_exactly_as_the_engine_does(krita_run, engine):
    two = krita_run["report"]["two_references"]
    assert two == {"styles": ["active_layer", "file"], "weights": [1.0, 0.5]}
    source = Image.fromarray(_rgba("source.rgba"), "RGBA").convert("RGB")
    second = Image.open(ARTIFACTS / "second-style.png").convert("RGB")
    expected = expected_pixels(
        engine,
        style_images=[StyleReference(source, 1.0), StyleReference(second, 0.5)],
        mode=Mode.IMG2IMG,
        init_image=source,
        strength=STRENGTH,
    )
    assert np.array_equal(_rgba("two-refs-layer.rgba")[..., :3], expected)


def test_stylizing_a_selection_inpaints_and_places_the_result_at_its_bounds(krita_run, engine):
    selection = krita_run["report"]["selection"]
    assert selection["target"] == [8, 24, 32, 32] and selection["job_size"] == [32, 32]
    assert selection["bounds"] == [8, 24, 32, 32]  # the new layer covers exactly the selection
    source = _rgba("source.rgba")
    crop = Image.fromarray(source[24:56, 8:40], "RGBA").convert("RGB")
    expected = expected_pixels(
        engine,
        style_images=[StyleReference(Image.fromarray(source, "RGBA").convert("RGB"))],
        mode=Mode.INPAINT,
        init_image=crop,
        mask=Image.new("L", (32, 32), 255),
        strength=STRENGTH,
        width=32,
        height=32,
    )
    layer = _rgba("selection-layer.rgba")
    assert np.array_equal(layer[24:56, 8:40, :3], expected)
    assert (layer[24:56, 8:40, 3] == 255).all()
    outside = np.ones((64, 64), bool)
    outside[24:56, 8:40] = False
    assert (layer[..., 3][outside] == 0).all()


def test_generate_button_makes_a_new_image_in_the_layers_style(krita_run, engine):
    new_image = krita_run["report"]["new_image"]
    assert new_image == {"saved_kind": "new_image", "total": STEPS}  # txt2img runs every step
    source = Image.fromarray(_rgba("source.rgba"), "RGBA").convert("RGB")
    expected = expected_pixels(engine, style_images=[StyleReference(source)])
    assert np.array_equal(_rgba("new-image-layer.rgba")[..., :3], expected)


def test_keep_the_lines_restyles_through_the_controlnet(krita_run, engine):
    keep = krita_run["report"]["keep_lines"]
    assert keep["state"] == "done" and keep["total"] == STEPS and "control" in keep["modes"]
    source = Image.fromarray(_rgba("source.rgba"), "RGBA").convert("RGB")
    expected = expected_pixels(
        engine, style_images=[StyleReference(source)], mode=Mode.CONTROL, init_image=source, control_scale=0.8
    )
    assert np.array_equal(_rgba("keep-lines-layer.rgba")[..., :3], expected)


def test_screenshots_of_the_docker(krita_run):
    for name in ("krita-window.png", "krita-docker.png"):
        image = Image.open(ARTIFACTS / name)
        assert image.width > 100 and image.height > 100
        assert len(np.unique(np.asarray(image.convert("L")))) > 10, f"{name} is blank"


def test_uninstall_removes_exactly_what_was_installed(krita_run):
    resources, kritarc = krita_run["resources"], krita_run["kritarc"]
    hook = resources / "pykrita" / "instantstyle_e2e"
    subprocess.run(
        [
            sys.executable,
            "installer/install_plugin.py",
            "uninstall",
            "--resources",
            str(resources),
            "--kritarc",
            str(kritarc),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    assert not (resources / "pykrita" / "instantstyle").exists()
    assert not (resources / "pykrita" / "kritapykrita_instantstyle.desktop").exists()
    assert hook.is_dir()  # not ours: left alone
    text = kritarc.read_text()
    assert "enable_instantstyle=true" not in text and "enable_instantstyle_e2e=true" in text
