"""Loading you can watch: the server listens at once, downloads with byte counts, loads, warms up, and
jobs sent meanwhile wait; a failed load is one clear line to every client, and the server stays up.

Downloads run for real, through huggingface_hub, diffusers and transformers, from a hub on loopback
(``tests/fake_hub.py``) that serves the tiny model's folders as repos.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from backend.client import InstantStyleClient, frame_image
from backend.engine.downloads import folder_files, pipeline_folders, variant_of
from backend.engine.loading import ModelLoadError
from backend.engine.request import GenerationRequest, StyleReference
from krita_plugin.instantstyle.connection import Connection
from krita_plugin.instantstyle.session import Session
from protocol import ErrorCode, ModelPhase, ModelStatus
from tests.conftest import noise_image
from tests.fake_hub import FakeHub
from tests.server_helpers import ServerThread, generate_message, run, running_server

REPO = Path(__file__).resolve().parents[1]
STYLE = noise_image(3)
BASE_REPO = "instantstyle/tiny-sdxl"
IP_REPO = "instantstyle/tiny-ip-adapter"
HUB_ARGS = {
    "base": BASE_REPO,
    "ip_adapter": f"{IP_REPO}/sdxl_models/ip-adapter_sdxl.safetensors",
    "image_encoder": f"{IP_REPO}/sdxl_models/image_encoder",
}
SDXL_LISTING = [  # a slice of stabilityai/stable-diffusion-xl-base-1.0's files
    "model_index.json",
    "sd_xl_base_1.0.safetensors",
    "01.png",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder/model.fp16.safetensors",
    "text_encoder/model.onnx",
    "text_encoder/openvino_model.bin",
    "tokenizer/merges.txt",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/model.onnx_data",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "vae_1_0/diffusion_pytorch_model.fp16.safetensors",
]


def test_the_files_a_loader_reads_are_the_wanted_variant_configs_and_nothing_else():
    assert variant_of("model.fp16.safetensors") == "fp16"
    assert variant_of("diffusion_pytorch_model.fp16-00001-of-00002.safetensors") == "fp16"
    assert variant_of("diffusion_pytorch_model-00001-of-00002.safetensors") is None
    assert folder_files(SDXL_LISTING, "unet", "fp16") == [
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
    ]
    assert folder_files(SDXL_LISTING, "unet", None) == [
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    ]
    # A folder without fp16 files falls back to its plain weights: only then, and only there.
    assert folder_files(SDXL_LISTING, "vae", "fp16") == [
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    assert folder_files(SDXL_LISTING, "tokenizer", "fp16") == ["tokenizer/merges.txt", "tokenizer/vocab.json"]
    # Example images, ONNX and OpenVINO exports, the single-file checkpoint: never.
    assert folder_files(SDXL_LISTING, "", "fp16") == ["model_index.json"]
    assert folder_files(
        ["image_encoder/config.json", "image_encoder/pytorch_model.bin"], "image_encoder", None
    ) == [
        "image_encoder/config.json",
        "image_encoder/pytorch_model.bin",
    ]
    index = {"_class_name": "StableDiffusionXLPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}
    index |= {"image_encoder": [None, None], "feature_extractor": [None, None], "force_zeros": True}
    assert pipeline_folders(index) == ["unet"]


def what_the_engine_makes(engine) -> np.ndarray:
    """The tests' job (``generate_message(1, content_text="a cat")`` with STYLE), run by ``engine``."""
    request = GenerationRequest(
        prompt="a lighthouse",
        style_images=[StyleReference(STYLE)],
        content_text="a cat",
        width=64,
        height=64,
        steps=3,
        seed=5,
    )
    return engine.generate(request).images[0]


def _hub_env(hub: FakeHub, cache: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PYTHONPATH": str(REPO),
    }


LOAD_FROM_HUB = """
import json, sys
import numpy as np
from backend.engine.engine import InstantStyleEngine
from backend.engine.loading import ModelSpec, ModelLoadError
from backend.engine.request import GenerationRequest, StyleReference
from tests.conftest import noise_image

spec = ModelSpec(**json.loads(sys.argv[1]), label="tiny from the hub")
statuses = []
try:
    engine = InstantStyleEngine.load(spec, device="cpu", dtype=sys.argv[2], on_status=statuses.append)
except ModelLoadError as error:
    print(json.dumps({"error": str(error)}))
    raise SystemExit(0)
request = GenerationRequest(prompt="a lighthouse", style_images=[StyleReference(noise_image(3))],
                            content_text="a cat", width=64, height=64, steps=3, seed=5)
np.save(sys.argv[3], engine.generate(request).images[0])
print(json.dumps({"statuses": [[s.phase.value, s.bytes_done, s.bytes_total, s.message] for s in statuses]}))
"""


def load_from_hub(hub: FakeHub, cache: Path, out: Path, dtype: str = "fp32") -> dict:
    done = subprocess.run(
        [sys.executable, "-c", LOAD_FROM_HUB, json.dumps(HUB_ARGS), dtype, str(out)],
        env=_hub_env(hub, cache),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_hub_model_downloads_with_byte_counts_then_loads_the_same_model(tiny_paths, engine, tmp_path):
    repos = {BASE_REPO: tiny_paths.diffusers_folder, IP_REPO: tiny_paths.root / "ip-adapter"}
    with FakeHub(repos) as hub:
        first = load_from_hub(hub, tmp_path / "cache", tmp_path / "first.npy")
        fetched = hub.downloaded()
        hub.requests.clear()
        second = load_from_hub(hub, tmp_path / "cache", tmp_path / "second.npy")
        fetched_again = hub.downloaded()

    statuses = first["statuses"]
    phases = [phase for phase, *_ in statuses]
    assert phases[-1] == "loading" and set(phases[:-1]) == {"downloading"}, phases
    downloads = [(done, total) for phase, done, total, _ in statuses if phase == "downloading"]
    # Everything the loaders read is in the cache's snapshots, and the count says they needed no more.
    snapshots = [f for f in (tmp_path / "cache").glob("models--*/snapshots/*/**/*") if f.is_file()]
    total = sum(f.stat().st_size for f in snapshots)
    assert len(snapshots) == 17 and statuses[-2][3].endswith(" MB (17 of 17 files)"), statuses[-2]
    assert all(t == total for _, t in downloads) and downloads[0][0] < total and downloads[-1][0] == total
    assert [d for d, _ in downloads] == sorted(d for d, _ in downloads), "bytes only ever grow"
    assert len(fetched) == len(set(fetched))  # each file once (identical tokenizer files share a blob)
    assert (BASE_REPO, "unet/diffusion_pytorch_model.safetensors") in fetched
    assert (IP_REPO, "sdxl_models/ip-adapter_sdxl.bin") not in fetched  # only what the loaders read

    expected = what_the_engine_makes(engine)
    assert np.array_equal(np.load(tmp_path / "first.npy"), expected)
    # Loading again from the cache downloads nothing and goes straight to loading.
    assert fetched_again == []
    assert [phase for phase, *_ in second["statuses"]] == ["loading"]
    assert np.array_equal(np.load(tmp_path / "second.npy"), expected)


def test_a_failed_fp16_download_is_an_error_never_a_silent_fp32_download(tiny_paths, tmp_path):
    """The fp16 files exist but fail mid-download: the twice-as-large fp32 files must not be fetched."""
    base = tmp_path / "repo"
    shutil.copytree(tiny_paths.diffusers_folder, base)
    for weights in list(base.glob("*/*.safetensors")):
        shutil.copy(weights, weights.with_name(weights.name.replace(".safetensors", ".fp16.safetensors")))
    with FakeHub({BASE_REPO: base, IP_REPO: tiny_paths.root / "ip-adapter"}) as hub:
        hub.failing.add((BASE_REPO, "unet/diffusion_pytorch_model.fp16.safetensors"))
        answer = load_from_hub(hub, tmp_path / "cache", tmp_path / "out.npy", dtype="fp16")
        fetched = hub.downloaded()
    assert answer["error"].startswith("cannot load instantstyle/tiny-ip-adapter, instantstyle/tiny-sdxl: ")
    assert "check your connection" in answer["error"]  # huggingface_hub's words for a failed request
    plain = [path for repo, path in fetched if path.endswith(".safetensors") and ".fp16." not in path]
    assert all(path.startswith("sdxl_models/") for path in plain), plain  # the adapter's, never the base's
    assert (BASE_REPO, "text_encoder/model.fp16.safetensors") in fetched


def gated_load(engine, gate: threading.Event, fail: str | None = None):
    """A model load the test controls: it reports a download, waits for ``gate``, then returns the
    real tiny engine (or fails as loading a broken file does)."""

    def load(report):
        report(ModelStatus(ModelPhase.DOWNLOADING, "Downloading models: 1.0 of 2.0 MB", 1 << 20, 2 << 20))
        assert gate.wait(60), "the test never opened the gate"
        report(ModelStatus(ModelPhase.LOADING, "Loading tiny"))
        if fail:
            raise ModelLoadError("/models/unet.safetensors", "SDXL UNet weights", fail)
        report(ModelStatus(ModelPhase.WARMING_UP, "Warming up"))
        return engine

    return load


def test_the_server_listens_while_the_model_loads_and_runs_waiting_jobs_once_ready(engine):
    gate = threading.Event()

    async def scenario():
        async with (
            running_server(None, gated_load(engine, gate)) as server,
            InstantStyleClient.connect(server.url) as client,
        ):
            assert client.hello.status.phase in (ModelPhase.LOADING, ModelPhase.DOWNLOADING)
            await client.submit(generate_message(1, content_text="a cat"), {0: STYLE})
            statuses = [client.hello.status]
            while statuses[-1].phase is not ModelPhase.DOWNLOADING:  # the download report
                item = await client.receive()
                if isinstance(item, ModelStatus):
                    statuses.append(item)
                else:
                    assert type(item).__name__ == "Queued" and item.position == 0
            await asyncio.sleep(0.3)  # the job waits, queued, while the model loads
            gate.set()
            outcome = await client.follow(1, on_item=statuses.append)
            async with InstantStyleClient.connect(server.url) as late:
                late_status = late.hello.status
            return statuses, outcome, late_status

    seen, outcome, late_status = run(scenario())
    events = [f"status:{s.phase.value}" if isinstance(s, ModelStatus) else type(s).__name__ for s in seen]
    assert events.index("status:ready") < events.index("Started"), "the job waited for the model"
    statuses = [s for s in seen if isinstance(s, ModelStatus)]
    phases = [s.phase for s in statuses]
    assert phases[-3:] == [ModelPhase.LOADING, ModelPhase.WARMING_UP, ModelPhase.READY], phases
    (download,) = [s for s in statuses if s.phase is ModelPhase.DOWNLOADING]
    assert (download.bytes_done, download.bytes_total) == (1 << 20, 2 << 20)
    assert outcome.error is None and outcome.queued.position == 0 and outcome.result is not None
    assert late_status.ready
    expected = what_the_engine_makes(engine)
    assert np.array_equal(np.asarray(frame_image(outcome.images[0]))[..., :3], expected)


def test_a_model_that_cannot_load_fails_waiting_jobs_refuses_new_ones_and_keeps_serving(engine):
    gate = threading.Event()

    async def scenario():
        load = gated_load(engine, gate, fail="corrupt or truncated safetensors file")
        async with running_server(None, load) as server, InstantStyleClient.connect(server.url) as client:
            await client.submit(generate_message(1), {0: STYLE})
            gate.set()
            waited = await client.follow(1)
            await client.submit(generate_message(2), {0: STYLE})
            refused = await client.follow(2)
            async with InstantStyleClient.connect(server.url) as late:
                late_status = late.hello.status
            return waited, refused, late_status

    waited, refused, late_status = run(scenario())
    line = (
        "the backend could not load its model: cannot load /models/unet.safetensors: expected SDXL UNet "
        "weights (corrupt or truncated safetensors file)"
    )
    assert (waited.error.code, waited.error.message) == (ErrorCode.MODEL_FAILED, line)
    assert (refused.error.code, refused.error.message) == (ErrorCode.MODEL_FAILED, line)
    assert late_status.phase is ModelPhase.FAILED and "corrupt or truncated" in late_status.message
    assert "\n" not in late_status.message


def test_the_plugin_shows_the_loading_phase_then_the_model(engine):
    from tests.test_plugin_client import pump

    gate = threading.Event()
    with ServerThread(None, gated_load(engine, gate)) as server:
        session = Session(Connection(server.url, ""))
        session.connection.start()
        try:
            pump(session, lambda _u: "Downloading models: 1.0 of 2.0 MB" in session.status)
            assert session.status.endswith("jobs wait until the model is ready")
            gate.set()
            pump(session, lambda _u: session.hello is not None and session.hello.status.ready)
            assert (
                session.status == "connected — tiny random-weight SDXL (TEST/DEMO model) — full-size previews"
            )
        finally:
            session.connection.stop()


def wait_for_line(log: Path, start: str, process: subprocess.Popen, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        for line in log.read_text().splitlines():
            if line.startswith(start):
                return line
        time.sleep(0.1)
    raise AssertionError(f"no line starting {start!r}: {log.read_text()[-2000:]}")


def test_serve_listens_first_and_tells_clients_while_it_downloads_from_the_hub(tiny_paths, tmp_path):
    """``python -m backend serve`` with hub ids: the whole path, downloads included, on loopback."""
    repos = {BASE_REPO: tiny_paths.diffusers_folder, IP_REPO: tiny_paths.root / "ip-adapter"}
    with FakeHub(repos) as hub:
        hub.held.add((BASE_REPO, "unet/diffusion_pytorch_model.safetensors"))  # until the client is in
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "backend",
                "serve",
                "--port",
                "0",
                "--device",
                "cpu",
                "--model",
                BASE_REPO,
                "--ip-adapter",
                HUB_ARGS["ip_adapter"],
                "--image-encoder",
                HUB_ARGS["image_encoder"],
            ],
            env=_hub_env(hub, tmp_path / "cache"),
            stdout=(tmp_path / "serve.log").open("w"),
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        try:
            url = wait_for_line(tmp_path / "serve.log", "InstantStyle backend listening on ", server)
            url = url.removeprefix("InstantStyle backend listening on ").split(";")[0]

            async def scenario():
                async with InstantStyleClient.connect(url) as client:
                    seen = [client.hello.status]
                    await client.submit(generate_message(1), {0: STYLE})
                    hub.release.set()
                    outcome = await client.follow(1, on_item=seen.append)
                    return seen, outcome

            seen, outcome = run(scenario(), timeout=240)
        finally:
            server.terminate()
            server.wait(30)
        rest = (tmp_path / "serve.log").read_text()
    statuses = [s for s in seen if isinstance(s, ModelStatus)]
    phases = [s.phase for s in statuses]
    assert phases[0] in (ModelPhase.LOADING, ModelPhase.DOWNLOADING), phases
    assert phases[-3:] == [ModelPhase.LOADING, ModelPhase.WARMING_UP, ModelPhase.READY], phases
    downloads = [s for s in statuses if s.phase is ModelPhase.DOWNLOADING]
    assert downloads and downloads[-1].bytes_done == downloads[-1].bytes_total > 0
    assert downloads[-1].message.startswith("Downloading models: 9.9 of 9.9 MB")
    assert outcome.error is None and outcome.result is not None
    assert "InstantStyle backend ready on" in rest


def test_a_download_says_how_long_it_has_left_once_it_knows_a_rate():
    from backend.engine.downloads import DownloadProgress
    from backend.engine.load_plan import download_status

    gib = 1024**3
    early = download_status(DownloadProgress(gib, 4 * gib, 1, 17, seconds=1.0))
    assert early.message == "Downloading models: 1.0 of 4.0 GB (1 of 17 files)"  # no rate yet
    later = download_status(DownloadProgress(gib, 4 * gib, 1, 17, seconds=60.0))
    assert later.message == "Downloading models: 1.0 of 4.0 GB (1 of 17 files), about 3 min left"
    quick = download_status(DownloadProgress(3 * gib, 4 * gib, 9, 17, seconds=30.0))
    assert quick.message.endswith(", about 10 s left") and (quick.bytes_done, quick.bytes_total) == (
        3 * gib,
        4 * gib,
    )


def test_the_time_left_counts_only_what_was_downloaded_not_what_was_on_disk():
    """3.7 of 10 GB already cached, 0.3 GB fetched in 30 s: 6 GB more take ~10 min, not seconds."""
    from backend.engine.downloads import DownloadProgress

    gb = 10**9
    progress = DownloadProgress(4 * gb, 10 * gb, 3, 17, seconds=30.0, bytes_at_start=int(3.7 * gb))
    assert abs(progress.seconds_left - 6 * gb * 30 / (0.3 * gb)) < 1e-6
