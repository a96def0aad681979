"""An SD1.5 model in real Krita: the docker follows the backend's family, and a job's pixels are the
engine's (``tests/krita_e2e/instantstyle_e2e/family.py`` drives it, one Krita session per version)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from backend.engine.request import StyleReference
from protocol import Mode
from tests.conftest import REPO
from tests.krita_harness import KritaHome, read_report, run_krita, virtual_display
from tests.krita_versions import VERSIONS, KritaVersion
from tests.test_krita_e2e import (
    SIZE,
    STRENGTH,
    expected_pixels,
    install_with_hook,
    prepared,
    returning_artist,
    serving,
)

pytestmark = pytest.mark.krita
ARTIFACTS = REPO / "artifacts" / "krita-sd15"


@pytest.fixture(scope="module")
def sd15_backend_url(tiny_paths, sd15_paths):
    with serving(tiny_paths, "tiny-sd15", options=[]) as url:
        yield url


@pytest.fixture(scope="module", params=[pytest.param(v, id=f"krita-{v.name}") for v in VERSIONS])
def sd15_run(request, sd15_backend_url, tmp_path_factory):
    version: KritaVersion = request.param
    prepared(version)
    home = KritaHome.fresh(version, tmp_path_factory.mktemp(f"krita-sd15-{version.name}"))
    artifacts = ARTIFACTS / version.name
    shutil.rmtree(artifacts, ignore_errors=True)
    artifacts.mkdir(parents=True)
    install_with_hook(home, returning_artist(sd15_backend_url))
    env = {
        "INSTANTSTYLE_E2E_OUT": home.guest(home.out),
        "INSTANTSTYLE_E2E_FAMILY": "1",
        "INSTANTSTYLE_E2E_BUDGET_SCALE": os.environ.get("INSTANTSTYLE_E2E_BUDGET_SCALE", "1"),
    }
    with (artifacts / "krita.log").open("w") as log, virtual_display(log) as display:
        run_krita(home, {**env, "DISPLAY": display}, log, 600)
    for path in home.out.iterdir():
        if path.is_file():
            shutil.copy(path, artifacts / path.name)
    yield read_report(artifacts), artifacts
    if version.root is not None:
        shutil.rmtree(home.host_top, ignore_errors=True)


def test_the_docker_follows_an_sd15_backend_and_its_job_is_the_engines(sd15_run, sd15_engine):
    report, artifacts = sd15_run
    assert report.get("finished") and "traceback" not in report, report.get("where")
    family = report["family"]
    assert (family["family"], family["native_side"], family["grid_family"]) == ("sd15", 64, "sd15")
    assert family["grid_blocks"] == sd15_engine.features.attention_blocks and len(family["grid_blocks"]) == 16
    # The custom preset starts from SD1.5's own style block, not SDXL's (which SD1.5 lacks).
    assert json.loads(family["custom_map"]) == {"up": {"block_1": [1.0, 1.0, 1.0]}}, family
    assert family["grid_set"] == {f"up_blocks.1.attentions.{i}": 1.0 for i in range(3)}, family
    assert "SD1.5" in family["status"], family["status"]
    stylize = report["stylize"]
    assert stylize["state"] == "done" and stylize["source_unchanged"], stylize

    def rgba(name: str) -> np.ndarray:
        return np.frombuffer((artifacts / name).read_bytes(), np.uint8).reshape(SIZE, SIZE, 4)

    source = Image.fromarray(rgba("source.rgba"), "RGBA").convert("RGB")
    expected = expected_pixels(  # the returning artist's content text goes through the ViT-H tower
        sd15_engine,
        style_images=[StyleReference(source)],
        mode=Mode.IMG2IMG,
        init_image=source,
        strength=STRENGTH,
    )
    layer = rgba("layer.rgba")
    assert np.array_equal(layer[..., :3], expected) and (layer[..., 3] == 255).all()
