"""The server's jobs on a Ray worker pool: a local Ray cluster started here (2 CPUs), two tiny-model
actors. Results equal the local worker's; previews stream while a job runs; a cancel stops the actor
within a step; a killed actor fails only its job and is replaced; shutdown stops the actors."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np
import pytest
import ray

from backend.client import InstantStyleClient, frame_image
from backend.engine.request import GenerationRequest, StyleReference
from backend.server.ray_actor import ActorPlan
from backend.server.ray_pool import RaySettings, RayWorkerPool
from protocol import Cancel, ErrorCode, Mode, encode_message
from tests.conftest import noise_image
from tests.server_helpers import generate_message, run, running_server

STYLES = [noise_image(21), noise_image(22), noise_image(23)]


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture
def pool(ray_cluster, tiny_paths):
    """Two actors; a server that closes kills them, so each test starts its own."""
    plan = ActorPlan(tiny_paths.spec("diffusers"), device="cpu")
    pool = RayWorkerPool(plan, RaySettings("local", workers=2)).start()
    yield pool
    pool.close()


def local_result(engine, message, style) -> np.ndarray:
    request = GenerationRequest(
        prompt=message.prompt,
        style_images=[StyleReference(style)],
        width=message.width,
        height=message.height,
        steps=message.steps,
        seed=message.seed,
    )
    return engine.generate(request).images[0]


def test_three_clients_get_the_local_workers_results_with_streamed_previews(pool, engine):
    assert pool.slots == 2 and [w.device for w in pool.workers()] == ["cpu", "cpu"]
    messages = [generate_message(1, steps=4, seed=s, width=64, height=64) for s in (3, 4, 5)]

    async def one_client(server, index):
        async with InstantStyleClient.connect(server.url) as client:
            await client.submit(messages[index], {0: STYLES[index]})
            return client.hello, await client.follow(1)

    async def scenario():
        async with running_server(pool) as server:
            return await asyncio.gather(*(one_client(server, index) for index in range(3)))

    outcomes = run(scenario(), timeout=120)
    hello = outcomes[0][0]
    assert [w.device for w in hello.status.features.workers] == ["cpu", "cpu"]
    for index, (_hello, outcome) in enumerate(outcomes):
        assert outcome.error is None, outcome.error
        indices = [f.index for f in outcome.previews]  # the preview budget: first and last always
        assert indices == sorted(set(indices)) and {1, 4} <= set(indices)
        assert [p.step for p in outcome.progress] == [1, 2, 3, 4]
        assert outcome.order.index("Result") > outcome.order.index("PREVIEW")
        expected = local_result(engine, messages[index], STYLES[index])
        received = np.asarray(frame_image(outcome.images[0]).convert("RGB"))
        assert np.array_equal(received, expected), f"client {index} differs from the local worker"
    # Each actor remembers the style images it encoded: the next job with one of them prefers it.
    from backend.server.worker import Job

    remembered = [slot.styles for slot in pool._slots]
    assert sum(len(styles) for styles in remembered) == 3
    again = Job(9, GenerationRequest(prompt="again", style_images=[StyleReference(STYLES[0])]), print)
    assert [pool.prefers(slot, again) for slot in range(2)].count(True) == 1


def test_a_cancel_after_a_preview_stops_the_actor_within_a_step(pool):
    """Previews come while the job runs (else the cancel would find it finished), and the actor stops
    at the step boundary after the cancel reaches it."""

    async def scenario():
        async with running_server(pool) as server, InstantStyleClient.connect(server.url) as client:
            await client.submit(generate_message(1, steps=40, width=256, height=256), {0: STYLES[0]})
            seen = []

            def on_item(item):
                if getattr(item, "kind", None) is not None and item.kind.name == "PREVIEW" and not seen:
                    seen.append(item.index)
                    asyncio.get_running_loop().create_task(client.connection.send(encode_message(Cancel(1))))

            outcome = await client.follow(1, on_item)
            return seen[0], outcome

    first_seen, outcome = run(scenario(), timeout=120)
    assert outcome.cancelled is not None and outcome.result is None
    # The actor may have finished one more step before the cancel arrived, and stops at the next.
    print("seen", first_seen, "stopped", outcome.cancelled.step)
    assert first_seen <= outcome.cancelled.step <= first_seen + 2 < 40


def test_a_killed_actor_fails_only_its_job_and_is_replaced(pool, engine):
    async def scenario():
        async with (
            running_server(pool) as server,
            InstantStyleClient.connect(server.url) as victim,
            InstantStyleClient.connect(server.url) as other,
        ):
            await victim.submit(generate_message(1, steps=60, width=256, height=256), {0: STYLES[0]})
            doomed = await victim.follow(1, kill_on_first_preview(pool, 1))
            fine_message = generate_message(2, steps=3, seed=8)
            await other.submit(fine_message, {0: STYLES[1]})
            fine = await other.follow(2)
            await victim.submit(generate_message(3, steps=3, seed=9), {0: STYLES[2]})
            after = await victim.follow(3)
            deadline = time.monotonic() + 60  # the replacement loads its model meanwhile
            while not all(pool.usable(slot) for slot in range(pool.slots)) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            return doomed, fine, fine_message, after, all(pool.usable(slot) for slot in range(pool.slots))

    doomed, fine, fine_message, after, replaced = run(scenario(), timeout=150)
    assert doomed.error is not None and doomed.error.code is ErrorCode.WORKER_LOST
    assert "lost" in doomed.error.message and "\n" not in doomed.error.message
    received = np.asarray(frame_image(fine.images[0]).convert("RGB"))
    assert fine.error is None and np.array_equal(received, local_result(engine, fine_message, STYLES[1]))
    assert after.error is None and after.result is not None
    assert replaced, "the lost worker was not replaced"


def kill_on_first_preview(pool: RayWorkerPool, job_id: int):
    killed = []

    def on_item(item):
        if not killed and getattr(item, "kind", None) is not None and item.kind.name == "PREVIEW":
            slot = next(s for s in pool._slots if s.running == job_id)
            ray.kill(slot.actor)
            killed.append(slot)

    return on_item


def test_server_shutdown_stops_the_actors(ray_cluster, tiny_paths):
    plan = ActorPlan(tiny_paths.spec("diffusers"), device="cpu")
    own = RayWorkerPool(plan, RaySettings("local", workers=1)).start()
    actor = own._slots[0].actor
    assert ray.get(actor.ping.remote(), timeout=30)

    async def scenario():
        async with running_server(own):
            pass

    run(scenario(), timeout=60)
    # ray.kill reaches the actor through Ray's control plane while a call goes to the actor directly:
    # on a loaded machine one call can still get through right after the kill (a CI run saw it).
    deadline = time.monotonic() + 30
    while True:
        try:
            ray.get(actor.ping.remote(), timeout=10)
        except ray.exceptions.RayActorError:
            break
        assert time.monotonic() < deadline, "the actor still answers 30 s after the server stopped"
        time.sleep(0.2)


def test_hello_before_the_pool_is_up_names_ray_and_the_worker_count(ray_cluster, tiny_paths):
    spec = dataclasses.replace(tiny_paths.spec("diffusers"), controlnet=None, tile_controlnet=None)
    plan = ActorPlan(spec, device="cpu")
    pending = RayWorkerPool(plan, RaySettings("local", workers=2))
    info = pending.load_plan_info()
    assert info.info.device == "ray: 2 workers (CPU)" and "control" not in [m.value for m in info.modes]
    tile_only = ActorPlan(
        dataclasses.replace(spec, tile_controlnet=str(tiny_paths.tile_controlnet)), device="cpu"
    )
    assert Mode.CONTROL in RayWorkerPool(tile_only, RaySettings("local", workers=2)).load_plan_info().modes


def ray_processes() -> int:
    """Ray's own daemons on this machine (each cluster has one raylet and one GCS server)."""
    import subprocess

    found = subprocess.run(["pgrep", "-c", "-f", "raylet|gcs_server"], capture_output=True, text=True)
    return int(found.stdout.strip() or 0)


def test_serve_with_ray_local_runs_jobs_on_two_workers_and_stops_ray_on_sigterm(ray_cluster, tmp_path):
    from tests.attack_probes import ServerProcess

    before = ray_processes()
    server = ServerProcess("--ray", "local", "--workers", "2", "--device", "cpu", log=tmp_path / "serve.log")
    try:

        async def scenario():
            async with InstantStyleClient.connect(server.url) as client:
                await client.submit(generate_message(1, steps=2), {0: STYLES[0]})
                return client.hello, await client.follow(1)

        hello, done = run(scenario(), timeout=120)
    finally:
        server.stop()
    assert hello.model.device == "ray: 2 workers (CPU)"
    assert [w.device for w in hello.status.features.workers] == ["cpu", "cpu"]
    assert done.error is None and len(done.images) == 1
    assert server.process.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
    deadline = time.monotonic() + 30  # the server's own Ray cluster is gone with it
    while ray_processes() > before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray_processes() == before


def test_workers_that_cannot_load_the_model_say_why_in_one_line(ray_cluster, tiny_paths, tmp_path):
    spec = dataclasses.replace(
        tiny_paths.spec("diffusers"), preview_vae=str(tmp_path / "missing.safetensors")
    )
    broken = RayWorkerPool(ActorPlan(spec, device="cpu"), RaySettings("local", workers=1))
    with pytest.raises(RuntimeError) as caught:
        broken.start()
    message = str(caught.value)
    assert message.startswith("a Ray worker could not start: ") and "\n" not in message
    assert f"cannot load {tmp_path / 'missing.safetensors'}" in message


def test_a_worker_sees_its_one_gpu_as_cuda_and_cpu_workers_reserve_none():
    from backend.server.ray_pool import RayUnavailable, check_worker_device, gpus_per_worker

    for device in (None, "auto", "cpu", "cuda", "cuda:0"):
        check_worker_device(device)
    # Ray gives each actor one GPU, which it sees as cuda:0: cuda:1 was an "invalid device ordinal".
    with pytest.raises(RayUnavailable, match="--device cuda:1: with --ray each worker sees only the GPU"):
        check_worker_device("cuda:1")
    local = RaySettings("local")
    assert gpus_per_worker("cpu", local, cluster_gpus=4) == 0.0  # reserved a GPU per CPU actor before
    assert gpus_per_worker("auto", local, cluster_gpus=4) == 1.0
    assert gpus_per_worker("cuda", local, cluster_gpus=0) == 0.0
    assert gpus_per_worker("cpu", RaySettings("local", gpus_per_worker=0.5), cluster_gpus=4) == 0.5
