"""End to end in real Krita, in every version the suite knows (tests/krita_versions.py), against a
real backend on the tiny model.

The installer installs the plugin into a throw-away Krita home (found by its own
defaults, as an artist runs it); a test-only plugin (tests/krita_e2e) drives it
like an artist, one scenario after another, and reports what it saw. A scenario
that did not finish fails its tests with one line saying which Krita, which
scenario and where it stopped. Artifacts (exported canvas, screenshots, Krita's
log) go to artifacts/krita-e2e/VERSION/.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.engine.request import GenerationRequest, StyleReference
from krita_plugin.instantstyle.settings import BackendMode, GenerationSettings, JobKind, save_settings
from protocol import BlockPreset, Mode, Sampler
from tests.conftest import REPO
from tests.krita_harness import KritaHome, read_report, run_krita, virtual_display
from tests.krita_versions import VERSIONS, KritaVersion

pytestmark = pytest.mark.krita

ARTIFACTS = REPO / "artifacts" / "krita-e2e"
PROMPT = "a lighthouse at dusk"
SEED = 1234
STEPS = 5
STRENGTH = 0.6
SIZE = 64
# Seconds for the whole Krita session if it hangs outright; the hook gives each scenario its own
# budget (tests/krita_e2e) and reports where it stopped well before this.
KRITA_TIMEOUT = 900


class KritarcStore:
    """Writes the plugin's settings into kritarc's [instantstyle] group, as Krita's writeSetting does."""

    def __init__(self) -> None:
        self.lines: list[str] = ["[instantstyle]"]

    def read(self, key: str, default: str) -> str:
        return default

    def write(self, key: str, value: str) -> None:
        self.lines.append(f"{key}={value}")


LIVE_SEED = 77


def lora_options(tiny_paths) -> list[str]:
    """The backend offers a LoRA ("style") and the Lightning preset, with tiny files for both."""
    return [
        "--lora", f"style={tiny_paths.lora('style-peft')}",
        "--lora", f"sdxl-lightning-4step={tiny_paths.lora('other-peft')}",
        "--speed", "lightning-4",
    ]  # fmt: skip


def served_engine(tiny_paths, adapter=None):
    """The model exactly as ``serving`` serves it by default: its LoRAs loaded (``lora_options``).
    Every job's pixels are compared with such an engine: with LoRAs loaded and disabled, a job without
    any still differed by one level on one value of 12,288 from a model that never had them, on this
    AVX-512 CPU (the adapters' layers wrap the plain ones), and equals the server's exactly."""
    from backend.engine.engine import InstantStyleEngine
    from backend.engine.loading import LoraSource

    base = tiny_paths.spec("diffusers") if adapter is None else tiny_paths.spec("diffusers", adapter)
    spec = dataclasses.replace(
        base,
        loras=(
            LoraSource("style", str(tiny_paths.lora("style-peft"))),
            LoraSource("sdxl-lightning-4step", str(tiny_paths.lora("other-peft"))),
        ),
        speed_presets=("lightning-4",),
    )
    return InstantStyleEngine.load(spec, device="cpu")


@pytest.fixture(scope="module")
def lora_engine(tiny_paths):
    """The e2e backend's model as it serves (``served_engine``)."""
    return served_engine(tiny_paths)


@pytest.fixture(scope="module")
def backend_url(tiny_paths):
    with serving(tiny_paths, "tiny") as url:
        yield url


@contextlib.contextmanager
def serving(tiny_paths, model: str, options: list[str] | None = None) -> Iterator[str]:
    """``python -m backend serve --model MODEL`` with ``options`` (default: the e2e LoRAs), until the
    block ends: its URL."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "backend",
            "serve",
            "--model",
            model,
            "--port",
            "0",
            "--device",
            "cpu",
            *(lora_options(tiny_paths) if options is None else options),
        ],
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


def installer(command: str, home: KritaHome) -> subprocess.CompletedProcess:
    """The real installer, as an artist runs it: Krita's folders found from HOME alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    return subprocess.run(
        [sys.executable, "installer/install_plugin.py", command],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={**env, "HOME": str(home.home)},
    )


def returning_artist(backend_url: str) -> GenerationSettings:
    """The docker settings a returning artist would have saved: the e2e backend and job."""
    return GenerationSettings(
        backend_mode=BackendMode.REMOTE,
        server_url=backend_url,
        prompt=PROMPT,
        content_text="stripes",
        seed=SEED,
        seed_locked=True,
        steps=STEPS,
        strength=STRENGTH,
        kind=JobKind.STYLIZE,
    )


def install_with_hook(home: KritaHome, settings: GenerationSettings) -> subprocess.CompletedProcess:
    """The plugin as an artist installs it, the test hook beside it, and ``settings`` in kritarc."""
    installed = installer("install", home)
    pykrita = home.resources / "pykrita"
    shutil.copytree(REPO / "tests" / "krita_e2e" / "instantstyle_e2e", pykrita / "instantstyle_e2e")
    shutil.copy(REPO / "tests" / "krita_e2e" / "kritapykrita_instantstyle_e2e.desktop", pykrita)
    store = KritarcStore()
    save_settings(store, settings)
    text = home.kritarc.read_text().replace("[python]\n", "[python]\nenable_instantstyle_e2e=true\n")
    home.kritarc.write_text(text + "\n" + "\n".join(store.lines) + "\n")
    return installed


@dataclass
class KritaRun:
    """What one Krita session did; each scenario's tests read their part or fail in one line."""

    home: KritaHome
    krita_version: str
    report: dict
    installed: str
    artifacts: Path
    seconds: float

    def scenario(self, name: str) -> dict:
        if name in self.report:
            return self.report[name]
        where = self.report.get("where", "Krita never ran the test hook")
        pytest.fail(
            f"Krita {self.krita_version}: scenario '{name}' did not finish: {where}{self.crash()} "
            f"(see {self.artifacts.relative_to(REPO)}/krita.log)",
            pytrace=False,
        )

    def crash(self) -> str:
        """What faulthandler wrote if Krita crashed: the error and the innermost Python line it ran."""
        stacks = self.artifacts / "stacks.txt"
        lines = stacks.read_text(errors="replace").splitlines() if stacks.exists() else []
        fatal = [line.strip() for line in lines if line.startswith("Fatal Python error")]
        current = next((i for i, line in enumerate(lines) if line.startswith("Current thread")), len(lines))
        calls = [line.strip() for line in lines[current:] if line.strip().startswith("File ")]
        if not fatal:
            return ""
        return f"; Krita crashed: {fatal[0]}" + (f", in {calls[0]}" if calls else "")

    def rgba(self, name: str) -> np.ndarray:
        return np.frombuffer((self.artifacts / name).read_bytes(), np.uint8).reshape(SIZE, SIZE, 4)

    def source(self) -> Image.Image:
        return Image.fromarray(self.rgba("source.rgba"), "RGBA").convert("RGB")


def prepared(version: KritaVersion) -> None:
    if version.ready:
        return
    how = (
        "apt-get install krita xvfb xauth"
        if version.root is None
        else f"python3 tests/krita_versions.py build {version.name}"
    )
    if os.environ.get("CI"):
        pytest.fail(
            f"CI must run the real-Krita tests in Krita {version.name}, but it is not prepared ({how})"
        )
    pytest.skip(f"Krita {version.name} is not prepared here: {how}")


@pytest.fixture(scope="module", params=[pytest.param(v, id=f"krita-{v.name}") for v in VERSIONS])
def krita(request, backend_url, tmp_path_factory) -> Iterator[KritaRun]:
    version: KritaVersion = request.param
    prepared(version)
    home = KritaHome.fresh(version, tmp_path_factory.mktemp(f"krita-{version.name}"))
    artifacts = ARTIFACTS / version.name
    shutil.rmtree(artifacts, ignore_errors=True)
    artifacts.mkdir(parents=True)

    installed = install_with_hook(home, returning_artist(backend_url))
    zipped = subprocess.run(
        [sys.executable, "installer/install_plugin.py", "zip", "--out", str(home.out / "instantstyle.zip")],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    assert zipped.returncode == 0

    env = {
        "INSTANTSTYLE_E2E_OUT": home.guest(home.out),
        "INSTANTSTYLE_E2E_ZIP": home.guest(home.out / "instantstyle.zip"),
        # Stretches every scenario's budget on a much slower machine (default 1).
        "INSTANTSTYLE_E2E_BUDGET_SCALE": os.environ.get("INSTANTSTYLE_E2E_BUDGET_SCALE", "1"),
    }
    with (artifacts / "krita.log").open("w") as log, virtual_display(log) as display:
        seconds = run_krita(home, {**env, "DISPLAY": display}, log, KRITA_TIMEOUT)
    for path in home.out.iterdir():
        if path.is_file():
            shutil.copy(path, artifacts / path.name)
    yield KritaRun(
        home, version.krita_version(), read_report(artifacts), installed.stdout, artifacts, seconds
    )
    if version.root is not None:  # the home inside the cached root: artifacts/ keeps what matters
        shutil.rmtree(home.host_top, ignore_errors=True)


def expected_pixels(engine, **fields) -> np.ndarray:
    """What the engine makes for the e2e settings (prompt, content, seed, steps, 64x64) plus ``fields``."""
    request = {
        "prompt": PROMPT,
        "content_text": "stripes",
        "width": SIZE,
        "height": SIZE,
        "steps": STEPS,
        "seed": SEED,
    }
    return engine.generate(GenerationRequest(**{**request, **fields})).images[0]


def test_plugin_installs_and_registers_in_real_krita(krita: KritaRun):
    startup = krita.scenario("startup")
    assert "installed" in krita.installed
    assert startup["krita_version"].startswith(krita.krita_version)
    assert startup["qt_major"] == (6 if krita.home.version.name.startswith("6") else 5)
    # Krita itself looks where the installer put the plugin (its own default, from HOME).
    assert startup["resources"].rstrip("/") == krita.home.guest(krita.home.resources)
    assert "instantstyle_docker" in startup["dockers"]
    assert startup["settings_loaded"] == {
        "prompt": PROMPT,
        "seed": SEED,
        "url": startup["settings_loaded"]["url"],
    }
    assert startup["status"].startswith("connected") and "TEST/DEMO" in startup["status"]


def test_stylize_layer_adds_the_exact_result_and_keeps_the_artists_layer(krita: KritaRun, lora_engine):
    stylize = krita.scenario("stylize")
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
    source = krita.source()
    expected = expected_pixels(
        lora_engine,
        style_images=[StyleReference(source)],
        mode=Mode.IMG2IMG,
        init_image=source,
        strength=STRENGTH,
    )
    layer = krita.rgba("layer.rgba")
    assert np.array_equal(layer[..., :3], expected) and (layer[..., 3] == 255).all()
    assert stylize["exported"] and (krita.artifacts / "canvas.png").stat().st_size > 0
    assert Image.open(krita.artifacts / "canvas.png").size == (SIZE, SIZE)


def test_the_preview_layer_shows_the_first_step_and_the_last_which_is_the_result(
    krita: KritaRun, lora_engine
):
    """The backend's preview budget always sends the first step (drawn at half size) and the last
    (the result itself); the plugin paints both, even when a short job's frames come in one tick."""
    stylize = krita.scenario("stylize")
    painted = stylize["previews_painted"]
    assert painted[0]["step"] == 1 and painted[-1]["step"] == stylize["total_steps"] > 1, painted
    assert painted[0]["size"] == [SIZE // 2, SIZE // 2] and painted[-1]["size"] == [SIZE, SIZE]
    assert all(p["channels"] == 3 for p in painted)  # the tiny autoencoder's RGB frames
    # The first frame is the engine's first-step preview of the same job, on any budget.
    source = krita.source()
    previews = []
    request = {"prompt": PROMPT, "content_text": "stripes", "width": SIZE, "height": SIZE, "steps": STEPS}
    result = lora_engine.generate(
        GenerationRequest(
            **request,
            seed=SEED,
            style_images=[StyleReference(source)],
            mode=Mode.IMG2IMG,
            init_image=source,
            strength=STRENGTH,
        ),
        on_step=previews.append,
    )
    first = np.frombuffer((krita.artifacts / "preview_first_frame.raw").read_bytes(), np.uint8)
    assert np.array_equal(first.reshape(SIZE // 2, SIZE // 2, 3), previews[0].rgb)
    assert (krita.rgba("preview_first_layer.rgba")[..., 3] == 255).all()  # painted over the whole area
    # The last one is the picture itself, painted as the layer the result becomes.
    last = np.frombuffer((krita.artifacts / "preview_last_frame.raw").read_bytes(), np.uint8)
    assert np.array_equal(last.reshape(SIZE, SIZE, 3), result.images[0])
    layer = krita.rgba("preview_last_layer.rgba")
    assert np.array_equal(layer[..., :3], result.images[0]) and (layer[..., 3] == 255).all()


def test_cancel_from_the_action_leaves_no_stray_layer(krita: KritaRun):
    cancel = krita.scenario("cancel")
    assert cancel["state"] == "cancelled" and cancel["step"] < cancel["total"]
    assert cancel["layers_after"] == ["Painted"] or cancel["layers_after"] == ["Background", "Painted"]


def test_closing_a_document_mid_job_is_safe(krita: KritaRun):
    closing = krita.scenario("close")
    assert closing["running_when_closed"], "the job had finished before the document closed: nothing proven"
    assert closing["closed"] and closing["krita_alive"] and closing["state"] == "done"
    assert closing["in_history"] and "Traceback" not in closing["message"]


def test_a_16_bit_document_gets_an_exact_16_bit_result(krita: KritaRun):
    deep = krita.scenario("deep")
    assert deep["depth"] == "U16" and len(deep["new_layers"]) == 1
    assert deep["layer_equals_received"] and deep["exact_16_bit"] and deep["source_unchanged"]
    assert deep["equals_8_bit_result"]


def test_two_weighted_references_blend_exactly_as_the_engine_does(krita: KritaRun, lora_engine):
    two = krita.scenario("two_references")
    assert two == {"styles": ["active_layer", "file"], "weights": [1.0, 0.5]}
    source = krita.source()
    second = Image.open(krita.artifacts / "second-style.png").convert("RGB")
    expected = expected_pixels(
        lora_engine,
        style_images=[StyleReference(source, 1.0), StyleReference(second, 0.5)],
        mode=Mode.IMG2IMG,
        init_image=source,
        strength=STRENGTH,
    )
    assert np.array_equal(krita.rgba("two-refs-layer.rgba")[..., :3], expected)


def test_stylizing_a_selection_inpaints_and_places_the_result_at_its_bounds(krita: KritaRun, lora_engine):
    selection = krita.scenario("selection")
    assert selection["target"] == [8, 24, 32, 32] and selection["job_size"] == [32, 32]
    assert selection["bounds"] == [8, 24, 32, 32]  # the new layer covers exactly the selection
    source = krita.rgba("source.rgba")
    crop = Image.fromarray(source[24:56, 8:40], "RGBA").convert("RGB")
    expected = expected_pixels(
        lora_engine,
        style_images=[StyleReference(Image.fromarray(source, "RGBA").convert("RGB"))],
        mode=Mode.INPAINT,
        init_image=crop,
        mask=Image.new("L", (32, 32), 255),
        strength=STRENGTH,
        width=32,
        height=32,
    )
    layer = krita.rgba("selection-layer.rgba")
    assert np.array_equal(layer[24:56, 8:40, :3], expected)
    assert (layer[24:56, 8:40, 3] == 255).all()
    outside = np.ones((SIZE, SIZE), bool)
    outside[24:56, 8:40] = False
    assert (layer[..., 3][outside] == 0).all()


def test_generate_button_makes_a_new_image_in_the_layers_style(krita: KritaRun, lora_engine):
    new_image = krita.scenario("new_image")
    assert new_image == {"saved_kind": "new_image", "total": STEPS}  # txt2img runs every step
    expected = expected_pixels(lora_engine, style_images=[StyleReference(krita.source())])
    assert np.array_equal(krita.rgba("new-image-layer.rgba")[..., :3], expected)


def test_keep_the_lines_restyles_through_the_controlnet(krita: KritaRun, lora_engine):
    keep = krita.scenario("keep_lines")
    assert keep["state"] == "done" and keep["total"] == STEPS and "control" in keep["modes"]
    source = krita.source()
    expected = expected_pixels(
        lora_engine,
        style_images=[StyleReference(source)],
        mode=Mode.CONTROL,
        init_image=source,
        control_scale=0.8,
    )
    assert np.array_equal(krita.rgba("keep-lines-layer.rgba")[..., :3], expected)


def test_a_recent_result_applies_again_as_a_layer(krita: KritaRun):
    applied = krita.scenario("apply_from_history")
    assert applied["history_stable"] and applied["job_is_newest"]
    assert len(applied["added"]) == 1 and applied["same_pixels"]


def test_the_docker_fits_on_screen_with_a_grid_box_per_attention_block(krita: KritaRun):
    layout = krita.scenario("docker_layout")
    assert layout["closed_height"] <= 900, f"the docker's main path is {layout['closed_height']} px tall"
    assert (
        layout["grid_blocks"] == layout["announced_blocks"]
        and "up_blocks.0.attentions.1" in layout["grid_blocks"]
    )
    assert layout["speed_presets"] == ["", "lightning-4"]
    assert layout["loras_offered"] == ["sdxl-lightning-4step", "style"]
    assert layout["without_tooltip"] == [], "controls an artist cannot ask about"
    sections = Image.open(krita.artifacts / "krita-docker-sections.png")
    assert sections.height > 900 and len(np.unique(np.asarray(sections.convert("L")))) > 10


def test_a_sampler_and_a_lora_chosen_in_the_docker_reach_the_engine(krita: KritaRun, lora_engine):
    chosen = krita.scenario("lora_sampler")
    assert chosen == {"state": "done", "sampler": "dpmpp_2m_karras", "loras": [["style", 0.8]]}
    source = krita.source()
    expected = expected_pixels(
        lora_engine,
        style_images=[StyleReference(source)],
        mode=Mode.IMG2IMG,
        init_image=source,
        strength=STRENGTH,
        sampler=Sampler.DPMPP_2M_KARRAS,
        loras=(("style", 0.8),),
    )
    assert np.array_equal(krita.rgba("lora-layer.rgba")[..., :3], expected)


def test_the_precise_preset_chosen_in_the_docker_reaches_the_engine(krita: KritaRun, lora_engine):
    precise = krita.scenario("precise")
    assert precise == {"state": "done", "preset": "precise", "layout_push": 1.5}
    source = krita.source()
    expected = expected_pixels(
        lora_engine,
        style_images=[StyleReference(source)],
        mode=Mode.IMG2IMG,
        init_image=source,
        strength=STRENGTH,
        preset=BlockPreset.PRECISE,
        layout_push=1.5,
    )
    assert np.array_equal(krita.rgba("precise-layer.rgba")[..., :3], expected)


def test_a_two_region_job_from_the_docker_styles_each_part_with_its_reference(krita: KritaRun, lora_engine):
    from backend.engine.regions import StyleRegion

    regions = krita.scenario("regions")
    assert regions["regions"] == [
        ["sky", "selection", "", "file"],
        ["ground", "layer", "Ground mask", "active_layer"],
    ]
    assert regions["state"] == "done" and regions["size"] == [SIZE, SIZE]
    assert regions["saved_message"] == "saved the selection for region 'sky'"
    top, bottom = Image.new("L", (SIZE, SIZE), 0), Image.new("L", (SIZE, SIZE), 0)
    top.paste(255, (0, 0, SIZE, SIZE // 2))
    bottom.paste(255, (0, SIZE // 2, SIZE, SIZE))
    source = krita.source()
    second = Image.open(krita.artifacts / "second-style.png").convert("RGB")
    expected = expected_pixels(
        lora_engine,
        style_images=[StyleReference(source)],
        regions=[
            StyleRegion(top, [StyleReference(second)], name="sky"),
            StyleRegion(bottom, [StyleReference(source)], name="ground"),
        ],
    )
    assert np.array_equal(krita.rgba("regions-layer.rgba")[..., :3], expected)


def test_a_sweep_makes_a_scored_group_and_keep_leaves_one_exact_layer(krita: KritaRun, lora_engine):
    sweep = krita.scenario("sweep")
    label = f"InstantStyle: {PROMPT}"
    cells = [
        f"{label} (style {s}, content {c}, style, seed {SEED}) [TEST MODEL]"
        for s in ("0.5", "1")
        for c in ("0", "1")
    ]
    assert sweep["group"] == f"InstantStyle sweep: {PROMPT} (4 cells)"
    assert sweep["cells"] == cells  # Krita lists a group's children bottom to top: the order they were added
    # Scores read as words, one per line under the thumbnail (the full sentence is its tooltip).
    for text in sweep["item_texts"]:
        assert re.fullmatch(r"style -?\d\.\d\d\nleakage -?\d\.\d\d\nprompt -?\d\.\d\d", text), text
    assert sweep["selected"] == [True, 2]
    assert cells[2] in sweep["layers_after_keep"] and sweep["group"] not in sweep["layers_after_keep"]
    assert not [n for n in sweep["layers_after_keep"] if n in cells and n != cells[2]]
    expected = expected_pixels(
        lora_engine, style_images=[StyleReference(krita.source())], style_scale=1.0, content_scale=0.0
    )
    assert np.array_equal(krita.rgba("sweep-kept.rgba")[..., :3], expected)


def test_find_strength_maps_the_servers_search_and_a_clicked_point_paints_that_setting(
    krita: KritaRun, lora_engine
):
    """The docker's Find strength on the tiny model: the map shows the server's points (the engine's
    own search of the same job: the backend's few-step preset runs it), the chosen one marked; the
    job's layer is the chosen setting's picture; a click on another point adds its picture."""
    from protocol import Auto, BlockPreset

    found = krita.scenario("find_strength")
    source = krita.source()
    job = {
        "style_images": [StyleReference(source)],
        "mode": Mode.IMG2IMG,
        "init_image": source,
        "strength": STRENGTH,
    }
    searched = lora_engine.generate(
        GenerationRequest(
            **{"prompt": PROMPT, "content_text": "stripes", "width": SIZE, "height": SIZE},
            steps=STEPS,
            seed=SEED,
            auto=Auto(),
            **job,
        )
    ).auto
    points = [[p.style_scale, p.content_scale, p.preset.value, p.stage.value] for p in searched.points]
    assert [p[:4] for p in found["points"]] == points and found["chosen"] == searched.choice.index
    assert found["reason"] == searched.choice.reason and found["passed"] == searched.choice.passed
    assert [p[4] for p in found["points"]] == pytest.approx(
        [p.scores.style for p in searched.points], abs=1e-4
    )
    # The map: a point for each, the baseline a square, the chosen one marked, the reason under it.
    assert [m[0] for m in found["map"]] == list(range(len(points)))
    assert [m[1] for m in found["map"]] == [p[3] == "baseline" for p in points]
    assert [m[2] for m in found["map"]] == [i == found["chosen"] for i in range(len(points))]
    assert found["panel_job"] and found["panel_shown"] and found["section_open"], found
    assert found["reason_shown"] == found["reason"] and "the map under Find strength" in found["message"]
    assert (krita.artifacts / "find-strength-map.png").stat().st_size > 1000
    chosen = searched.points[searched.choice.index]
    name = f"style {chosen.style_scale:g} content {chosen.content_scale:g}"
    name += "" if chosen.preset is BlockPreset.STYLE else f" {chosen.preset.value}"
    assert found["layer"] == f"InstantStyle: {PROMPT} (seed {SEED}) {name} (auto) [TEST MODEL]"
    expected = expected_pixels(
        lora_engine,
        **job,
        style_scale=chosen.style_scale,
        content_scale=chosen.content_scale,
        preset=chosen.preset,
    )
    assert np.array_equal(krita.rgba("auto-layer.rgba")[..., :3], expected)
    # The clicked point: a normal job with its strengths and preset, the search's seed.
    index, style_scale, content_scale, preset = found["picked"]
    assert index != found["chosen"] and not found["point_auto"] and found["clicked_marked"]
    assert found["point_seed"] == found["seed"] == SEED
    preset_word = "" if preset == "style" else f" {preset}"
    assert found["point_layer"] == (
        f"InstantStyle: {PROMPT} (seed {SEED}) style {style_scale:g} content {content_scale:g}"
        f"{preset_word} [TEST MODEL]"
    )
    assert found["point_layer"] in found["layers_after"] and found["layer"] in found["layers_after"]
    expected = expected_pixels(
        lora_engine, **job, style_scale=style_scale, content_scale=content_scale, preset=BlockPreset(preset)
    )
    assert np.array_equal(krita.rgba("auto-point-layer.rgba")[..., :3], expected)


def test_keep_lines_through_the_tile_controlnet_has_the_engines_pixels(krita: KritaRun, lora_engine):
    from protocol import ControlKind

    tile = krita.scenario("keep_tile")
    assert tile["state"] == "done" and tile["control"] == "tile", tile
    assert tile["offered"] == ["edges", "tile"] and tile["keep_shown"], tile
    source = krita.source()
    expected = expected_pixels(
        lora_engine,
        style_images=[StyleReference(source)],
        mode=Mode.CONTROL,
        init_image=source,
        control=ControlKind.TILE,
        control_scale=tile["control_scale"],
    )
    assert np.array_equal(krita.rgba("keep-tile-layer.rgba")[..., :3], expected)
    edges = expected_pixels(
        lora_engine,
        style_images=[StyleReference(source)],
        mode=Mode.CONTROL,
        init_image=source,
        control_scale=tile["control_scale"],
    )
    assert not np.array_equal(expected, edges)  # the Tile ControlNet made it, not the canny one


def live_expected(lora_engine, source: Image.Image) -> np.ndarray:
    """A live job: the Lightning preset (4 steps, CFG off, trailing Euler, its LoRA), the live seed."""
    return expected_pixels(
        lora_engine,
        style_images=[StyleReference(source)],
        mode=Mode.IMG2IMG,
        init_image=source,
        strength=STRENGTH,
        steps=4,
        guidance_scale=1.0,
        sampler=Sampler.EULER_TRAILING,
        loras=(("sdxl-lightning-4step", 1.0),),
        seed=LIVE_SEED,
    )


def test_live_mode_renders_each_stroke_applies_and_leaves_no_live_layer(krita: KritaRun, lora_engine):
    live = krita.scenario("live")
    assert live["layers_live"][-2:] == ["Painted", "InstantStyle live"] and live["live_above_source"]
    assert (
        live["stroke_job"] > live["first_job"] and live["live_seed"] == LIVE_SEED and live["size"] == [64, 64]
    )
    for index in (1, 2):  # right after turning it on, and after the stroke: the engine's exact pixels
        source = Image.fromarray(krita.rgba(f"live-source-{index}.rgba"), "RGBA").convert("RGB")
        shown = krita.rgba(f"live-layer-{index}.rgba")
        assert np.array_equal(shown[..., :3], live_expected(lora_engine, source)), f"live result {index}"
    assert not np.array_equal(krita.rgba("live-source-1.rgba"), krita.rgba("live-source-2.rgba"))
    assert live["applied"] == f"InstantStyle: {PROMPT} (seed {LIVE_SEED}) [TEST MODEL]"
    assert live["applied_same_pixels"] and live["applied"] in live["layers_after_apply"]
    assert live["layers_after_off"] == [n for n in live["layers_after_apply"] if n != "InstantStyle live"]
    assert "InstantStyle live" not in live["layers_after_off"] and not live["live_on"]
    assert live["source_is_the_stroke"]  # the plugin never wrote into the artist's layer


def test_closing_the_document_stops_live_mode(krita: KritaRun):
    closing = krita.scenario("live_close")
    assert closing["closed"] and closing["krita_alive"] and closing["button_off"]
    assert closing["message"] == "live mode stopped: its document was closed"


def test_a_stroke_during_a_live_job_replaces_it_and_losing_the_backend_stops_live(krita: KritaRun):
    supersede = krita.scenario("live_supersede")
    assert supersede["superseded_state"] == "cancelled", "the stale live job was not replaced"
    assert supersede["superseded_step"] < supersede["superseded_total"]
    assert supersede["shown_job_is_newer"] and supersede["live_layer"]
    assert "InstantStyle live" not in supersede["layers_after_loss"]
    assert "live mode stopped" in supersede["message"] and supersede["button_off"]


def test_the_zip_imports_through_kritas_own_importer(krita: KritaRun):
    """Tools > Scripts > Import Python Plugin from File runs Krita's own plugin_importer on the zip."""
    imported = krita.scenario("zip_import")
    assert imported["plugins"] == ["instantstyle"]
    manifest = json.loads(
        (krita.home.resources / "pykrita" / "instantstyle" / ".install-manifest.json").read_text()
    )
    module_files = sorted(f for f in imported["files"] if not f.endswith(".desktop"))
    assert module_files == sorted(f for f in manifest["files"] if not f.endswith(".desktop"))
    assert [f for f in imported["files"] if f.endswith(".desktop")] == ["instantstyle.desktop"]


def test_screenshots_of_the_docker(krita: KritaRun):
    krita.scenario("screenshots")
    for name in ("krita-window.png", "krita-docker.png"):
        image = Image.open(krita.artifacts / name)
        assert image.width > 100 and image.height > 100
        assert len(np.unique(np.asarray(image.convert("L")))) > 10, f"{name} is blank"


def test_uninstall_removes_exactly_what_was_installed(krita: KritaRun):
    krita.scenario("startup")
    resources = krita.home.resources
    hook = resources / "pykrita" / "instantstyle_e2e"
    installer("uninstall", krita.home)
    assert not (resources / "pykrita" / "instantstyle").exists()
    assert not (resources / "pykrita" / "kritapykrita_instantstyle.desktop").exists()
    assert hook.is_dir()  # not ours: left alone
    text = krita.home.kritarc.read_text()
    assert "enable_instantstyle=true" not in text and "enable_instantstyle_e2e=true" in text
