"""``python -m backend models``: the checklist a launcher shows before anything downloads (files,
sizes, free disk), then the download as JSON progress lines; an interrupted download is taken up
again from the files still missing. Against ``tests/fake_hub.py`` on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO
from tests.fake_hub import FakeHub

BASE_REPO = "instantstyle/tiny-sdxl"
IP_REPO = "instantstyle/tiny-ip-adapter"
MODEL = [
    "--model", BASE_REPO,
    "--ip-adapter", f"{IP_REPO}/sdxl_models/ip-adapter_sdxl.safetensors",
    "--image-encoder", f"{IP_REPO}/sdxl_models/image_encoder",
    "--preview-vae", "none", "--device", "cpu",
]  # fmt: skip


def models(hub: FakeHub, cache, *what: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PYTHONPATH": str(REPO),
    }
    command = [sys.executable, "-m", "backend", "models", *what, *MODEL]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)


def test_plan_then_download_then_everything_is_cached(tiny_paths, tmp_path):
    repos = {BASE_REPO: tiny_paths.diffusers_folder, IP_REPO: tiny_paths.root / "ip-adapter"}
    cache = tmp_path / "cache"
    with FakeHub(repos) as hub:
        planned = models(hub, cache, "--plan")
        assert planned.returncode == 0, planned.stderr[-2000:]
        plan = json.loads(planned.stdout)
        # The checklist reads the pipeline's index to know its parts, and downloads no weights.
        assert hub.downloaded() == [(BASE_REPO, "model_index.json")]
        downloaded = models(hub, cache, "--download")
        assert downloaded.returncode == 0, downloaded.stderr[-2000:]
        again = json.loads(models(hub, cache, "--plan").stdout)

    files = plan["files"]
    assert len(files) == 17 and [f["path"] for f in files if f["cached"]] == ["model_index.json"]
    index_bytes = next(f["bytes"] for f in files if f["cached"])
    assert plan["total_bytes"] == plan["missing_bytes"] + index_bytes == sum(f["bytes"] for f in files)
    assert plan["free_bytes"] > 0 and plan["fits"] is True
    assert (plan["device"], plan["memory_tier"]) == ("cpu", "full")  # what the docker shows beside the sizes
    assert {"repo": BASE_REPO, "path": "unet/diffusion_pytorch_model.safetensors"}.items() <= next(
        f for f in files if f["path"] == "unet/diffusion_pytorch_model.safetensors"
    ).items()
    lines = [json.loads(line) for line in downloaded.stdout.splitlines()]
    progress, last = lines[:-1], lines[-1]
    assert last == {"done": True, "bytes_total": plan["total_bytes"]}
    done = [p["bytes_done"] for p in progress]
    assert done == sorted(done) and done[-1] == plan["total_bytes"] and progress[-1]["files_done"] == 17
    assert again["missing_bytes"] == 0 and all(f["cached"] for f in again["files"])


def test_an_interrupted_download_is_one_line_and_the_next_one_fetches_only_what_is_missing(
    tiny_paths, tmp_path
):
    repos = {BASE_REPO: tiny_paths.diffusers_folder, IP_REPO: tiny_paths.root / "ip-adapter"}
    cache = tmp_path / "cache"
    broken = (BASE_REPO, "unet/diffusion_pytorch_model.safetensors")
    with FakeHub(repos) as hub:
        hub.failing.add(broken)
        failed = models(hub, cache, "--download")
        first = hub.downloaded()
        hub.failing.clear()
        hub.requests.clear()
        resumed = models(hub, cache, "--download")
        second = hub.downloaded()
    last = failed.stderr.strip().splitlines()[-1]  # after the hub client's own log lines
    assert (
        failed.returncode == 2 and last.startswith("error: cannot load ") and "Traceback" not in failed.stderr
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert broken in second and not set(first) & set(second)  # nothing fetched twice
