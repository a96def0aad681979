"""The same job gives the same pixels in every process that runs it, on every CPU kernel path.

The suite's pixel-exact tests compare a job run by this process's reference engine with the same job
run by a server process, a Ray actor or Krita's backend. That holds only for the same thread count
(``backend/threads.py``: 1 and 2 threads differ by a level on an AVX-512 CPU), which ``conftest``
pins for every one of them. Here each kernel path PyTorch offers on this CPU (``ATEN_CPU_CAPABILITY``:
``default``, ``avx2``, ``avx512`` where the CPU has it) runs the same job in a server process (through
the WebSocket client) and in ``python -m backend generate``: the pictures are equal, whichever path.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.client import InstantStyleClient, frame_image
from backend.threads import THREADS_VARIABLE, ThreadCountError, pin_threads, requested_threads
from protocol import Generate, StyleImage
from tests.attack_probes import ServerProcess
from tests.server_helpers import run

REPO = Path(__file__).resolve().parents[1]
STYLE = REPO / "examples" / "style.png"
JOB = {"prompt": "a lighthouse", "content": "stripes", "side": 64, "steps": 4, "seed": 5}
PROBE = "import torch; print(torch.backends.cpu.get_cpu_capability())"


def kernel_paths() -> list[str]:
    """The ``ATEN_CPU_CAPABILITY`` values this CPU runs as asked (a higher one than the CPU has falls
    back to a lower path, which this leaves out)."""
    found = []
    for capability in ("default", "avx2", "avx512"):
        env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
        probe = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True)
        if probe.stdout.strip().lower() == capability:
            found.append(capability)
    return found


async def served_job(url: str) -> np.ndarray:
    message = Generate(
        job_id=1,
        prompt=JOB["prompt"],
        content_text=JOB["content"],
        style_images=[StyleImage(0)],
        width=JOB["side"],
        height=JOB["side"],
        steps=JOB["steps"],
        seed=JOB["seed"],
    )
    async with InstantStyleClient.connect(url) as client:
        await client.submit(message, {0: Image.open(STYLE).convert("RGB")})
        outcome = await client.follow(1)
    assert outcome.error is None, outcome.error
    return np.asarray(frame_image(outcome.images[0]).convert("RGB"))


def generated_job(out: Path, env: dict[str, str]) -> tuple[np.ndarray, str]:
    side = str(JOB["side"])
    command = [
        *(sys.executable, "-m", "backend", "generate", "--model", "tiny", "--preview-vae", "none"),
        *("--style", str(STYLE), "--prompt", JOB["prompt"], "--content", JOB["content"]),
        *("--width", side, "--height", side, "--steps", str(JOB["steps"]), "--seed", str(JOB["seed"])),
        *("--out", str(out)),
    ]
    done = subprocess.run(
        command, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return np.asarray(Image.open(out).convert("RGB")), done.stderr


def test_a_server_process_and_the_cli_make_the_same_pixels_on_every_kernel_path(tmp_path):
    paths = kernel_paths()
    print("kernel paths on this CPU:", paths)
    assert "default" in paths
    if platform.machine() in ("x86_64", "AMD64"):
        assert "avx2" in paths  # every x86-64 CPU of our kind has it
    threads = os.environ[THREADS_VARIABLE]
    for capability in paths:
        env = {"ATEN_CPU_CAPABILITY": capability}
        server = ServerProcess("--preview-vae", "none", log=tmp_path / f"serve-{capability}.log", env=env)
        try:
            served = run(served_job(server.url), timeout=180)
        finally:
            server.stop()
        numerics = f"torch: {threads} CPU threads, {capability.upper()} kernels"
        assert numerics in server.log.read_text(), "the server did not run with the pinned numerics"
        generated, log = generated_job(tmp_path / f"{capability}.png", env)
        assert numerics in log
        assert served.shape == (JOB["side"], JOB["side"], 3)
        assert np.array_equal(served, generated), f"{capability}: the server and the CLI differ"


def test_the_thread_count_is_pinned_for_every_thread_and_checked(monkeypatch):
    import threading

    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv(THREADS_VARIABLE, "1")
        assert pin_threads() == 1
        seen: list[int] = []
        worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        worker.start()
        worker.join()
        assert seen == [1]  # the server's inference thread runs with the process's count
        assert pin_threads(3) == 3  # an explicit --threads wins over the environment
    finally:
        torch.set_num_threads(before)
    monkeypatch.setenv(THREADS_VARIABLE, "two")
    with pytest.raises(ThreadCountError, match="INSTANTSTYLE_TORCH_THREADS='two': expected a whole number"):
        requested_threads()
    with pytest.raises(ThreadCountError, match="--threads 0: expected 1 or more"):
        requested_threads(0)
    monkeypatch.delenv(THREADS_VARIABLE)
    assert requested_threads() is None


def test_a_ray_actor_takes_the_drivers_thread_count(monkeypatch, tiny_paths):
    from backend.server.ray_actor import ActorPlan

    monkeypatch.setenv(THREADS_VARIABLE, "3")
    assert ActorPlan(tiny_paths.spec("diffusers")).torch_threads == 3
    monkeypatch.delenv(THREADS_VARIABLE)
    assert ActorPlan(tiny_paths.spec("diffusers")).torch_threads is None
    assert ActorPlan(tiny_paths.spec("diffusers"), torch_threads=1).torch_threads == 1


def test_a_bad_thread_count_is_one_line(tmp_path):
    command = [sys.executable, "-m", "backend", "generate", "--threads", "0", "--prompt", "x"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --threads 0: expected 1 or more"
