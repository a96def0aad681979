"""The prepared GPU benchmark (bench/bench_gpu_sdxl.py) runs end to end in its CPU smoke mode, writes every
section's figures, keeps plain SDXL's figure to plain SDXL, and leaves its figures behind when it fails."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "bench" / "bench_gpu_sdxl.py"
TIERS = ("full", "encoders-off", "model-offload", "group-offload")
PLAIN_SDXL = ["text_encoder", "text_encoder_2", "unet", "vae"]


def load_script() -> object:
    spec = importlib.util.spec_from_file_location("bench_gpu_sdxl", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    command = [
        sys.executable, str(SCRIPT), "--shape", "tiny", "--device", "cpu", "--size", "64", "--steps", "3",
        "--tier-steps", "2", "--repeats", "1", "--compile-backend", "eager", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not out.with_name(out.name + ".partial").exists()
    return json.loads(out.read_text())


def test_the_smoke_run_writes_every_section(smoke: dict) -> None:
    assert smoke["meta"]["finished"] is True and smoke["meta"]["errors"] == []
    assert smoke["meta"]["device"] == "cpu" and smoke["meta"]["dtype"] == "float32"
    for section in ("plain_sdxl", "engine", "previews", "auto", "compile"):
        assert "error" not in smoke[section] and "skipped" not in smoke[section], section
    assert smoke["plain_sdxl"]["job"]["ms_per_step"] > 0
    assert smoke["engine"]["job"]["ms_per_step"] > 0 and smoke["engine"]["step_ratio_to_plain"] > 0
    for label in ("off", "linear", "tiny_autoencoder", "budget"):
        assert smoke["previews"][label]["ms_per_step"] > 0 and smoke["previews"][label]["job_seconds"] > 0
    ratios = {f"{label}_step_cost_ratio" for label in ("linear", "tiny_autoencoder", "budget")}
    assert ratios <= set(smoke["previews"])
    assert set(smoke["tiers"]) == set(TIERS)
    for tier in TIERS:
        figures = smoke["tiers"][tier]
        assert "error" not in figures, (tier, figures.get("error"))
        for mode in ("txt2img", "img2img"):
            assert figures[mode]["ms_per_step"] > 0, (tier, mode)
            assert {"peak_gib", "reserved_peak_gib"} <= set(figures[mode])  # None on the CPU
    compiled = smoke["compile"]
    assert compiled["backend"] == "eager" and compiled["speed_up"] > 0
    assert compiled["eager"]["ms_per_step"] > 0 and compiled["compiled"]["ms_per_step"] > 0


def test_plain_sdxl_holds_only_plain_sdxl(smoke: dict) -> None:
    """Issue 19, finding 8: no image encoder, IP-Adapter or ControlNet in plain SDXL's figures."""
    plain, engine = smoke["plain_sdxl"]["weights_gib"], smoke["engine"]["weights_gib"]
    assert sorted(plain) == PLAIN_SDXL
    assert sorted(engine) == sorted([*PLAIN_SDXL, "image_encoder"])  # and no ControlNet anywhere
    assert "controlnet" not in json.dumps(smoke)


def test_each_figure_is_on_disk_at_once_and_a_failed_section_keeps_the_others(tmp_path: Path) -> None:
    bench = load_script()
    out = tmp_path / "figures.json"
    report = bench.Report(out)  # type: ignore[attr-defined]
    report.put("plain_sdxl", "job", value={"ms_per_step": 12.5})
    assert json.loads(out.read_text()) == {"plain_sdxl": {"job": {"ms_per_step": 12.5}}}
    with report.section("engine"):
        report.put("engine", "first_job_seconds", value=1.5)
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2.00 GiB")
    written = json.loads(out.read_text())
    assert written["plain_sdxl"] == {"job": {"ms_per_step": 12.5}}
    assert written["engine"]["first_job_seconds"] == 1.5
    assert written["engine"]["error"].startswith("RuntimeError: CUDA out of memory.")
    assert report.errors == ["engine"] and report.get("engine", "missing", "figure") is None
