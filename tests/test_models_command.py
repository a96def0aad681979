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
    model = (
        MODEL if not any(arg == "--model" for arg in what) else ["--preview-vae", "none", "--device", "cpu"]
    )
    command = [sys.executable, "-m", "backend", "models", *what, *model]
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


def test_an_sd15_model_lists_its_parts_and_the_content_text_tower(sd15_paths, tmp_path):
    """The checklist of a hub SD1.5 model with ip-adapter_sd15: the family's pipeline parts, its adapter
    and encoder, and ViT-H's text tower (text half only), which the backend fetches at start; then the
    download fetches those files."""
    from backend.tiny.layouts import TINY_CLIP_VIT_H_REPO_ID
    from backend.tiny.sd15_layouts import TINY_SD15_IP_REPO_ID, TINY_SD15_REPO_ID

    repos = {
        TINY_SD15_REPO_ID: sd15_paths.diffusers_folder,
        TINY_SD15_IP_REPO_ID: sd15_paths.root / "ip-adapter",
        TINY_CLIP_VIT_H_REPO_ID: sd15_paths.clip_vit_h,
    }
    sd15 = [
        "--model", TINY_SD15_REPO_ID,
        "--ip-adapter", f"{TINY_SD15_IP_REPO_ID}/models/ip-adapter_sd15.safetensors",
        "--image-encoder", f"{TINY_SD15_IP_REPO_ID}/models/image_encoder",
        "--content-text-encoder", TINY_CLIP_VIT_H_REPO_ID,
    ]  # fmt: skip
    cache = tmp_path / "cache"
    with FakeHub(repos) as hub:
        planned = models(hub, cache, "--plan", *sd15)
        assert planned.returncode == 0, planned.stderr[-2000:]
        downloaded = models(hub, cache, "--download", *sd15)
        assert downloaded.returncode == 0, downloaded.stderr[-2000:]
    files = {(f["repo"], f["path"]) for f in json.loads(planned.stdout)["files"]}
    parts = {path.split("/")[0] for repo, path in files if repo == TINY_SD15_REPO_ID}
    assert parts == {"model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae"}
    tower = {path for repo, path in files if repo == TINY_CLIP_VIT_H_REPO_ID}
    assert "model.safetensors" in tower and "config.json" in tower and "tokenizer_config.json" in tower
    assert (TINY_SD15_IP_REPO_ID, "models/ip-adapter_sd15.safetensors") in files
    assert not any("plus" in path for _, path in files)
    assert set(hub.downloaded()) >= files - {(TINY_SD15_REPO_ID, "model_index.json")}
