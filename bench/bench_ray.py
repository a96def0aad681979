"""The Ray worker pool against the local worker, on the tiny model (CPU), in one run.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_ray.py [--jobs 8] [--size 256] [--steps 30]

1. Added latency per job: the same jobs (30 steps, previews on, at ``size``²) one after the other,
   alternating between a server with the local worker and one with a single Ray worker using as many
   PyTorch threads as the local one; median submit-to-last-result-frame time, the ratio, and the
   quartiles of the job-by-job differences (this machine's speed drifts).
2. Throughput: two clients send ``jobs`` jobs each at once; jobs per minute with 1 and 2 Ray workers
   (one CPU and one PyTorch thread each, Ray started with 2 CPUs), and the ratio.

Ray starts with as many CPUs as this machine has; on a 2-core machine two CPU workers share the cores
the one local worker used alone, so the throughput ratio here says what the pool's scheduling costs
or gains, not what two GPUs give (``--device cuda`` where a machine with GPUs is lent: one GPU each).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray
import torch

from backend.client import InstantStyleClient
from backend.engine.engine import InstantStyleEngine
from backend.engine.loading import quiet_libraries
from backend.server.ray_actor import ActorPlan
from backend.server.ray_pool import RaySettings, RayWorkerPool
from backend.tiny.layouts import ensure_tiny_model
from tests.conftest import noise_image
from tests.server_helpers import generate_message, running_server

STYLE = noise_image(4)


async def latencies(local, remote, jobs: int, size: int, steps: int) -> tuple[list[float], list[float]]:
    """Submit-to-last-frame seconds of the same job on two servers, alternating local and Ray job by
    job (this machine's speed drifts by ±20 % over a minute: alternating cancels the drift out)."""
    times: tuple[list[float], list[float]] = ([], [])
    async with (
        running_server(local) as local_server,
        running_server(remote) as ray_server,
        InstantStyleClient.connect(local_server.url) as local_client,
        InstantStyleClient.connect(ray_server.url) as ray_client,
    ):
        for job_id in range(1, jobs + 2):
            for side, client in enumerate((local_client, ray_client)):
                started = time.perf_counter()
                message = generate_message(job_id, steps=steps, width=size, height=size)
                await client.submit(message, {0: STYLE})
                outcome = await client.follow(job_id)
                assert outcome.error is None and len(outcome.previews) > 0, outcome.error
                if job_id > 1:  # the first one warms up
                    times[side].append(time.perf_counter() - started)
    return times


async def throughput(executor, jobs: int, size: int, steps: int) -> float:
    """Jobs per minute, two clients sending ``jobs`` each at once."""

    async def client_jobs(url: str, first: int) -> None:
        async with InstantStyleClient.connect(url) as client:
            ids = list(range(first, first + jobs))
            for job_id in ids:
                await client.submit(
                    generate_message(job_id, steps=steps, width=size, height=size), {0: STYLE}
                )
            outcomes = await client.follow_all(ids)
            assert all(o.error is None for o in outcomes.values())

    async with running_server(executor) as server:
        await client_jobs(server.url, 1000)  # warm-up: one round
        started = time.perf_counter()
        await asyncio.gather(client_jobs(server.url, 1), client_jobs(server.url, 100))
        return 2 * jobs / (time.perf_counter() - started) * 60


def pool(paths, device: str, workers: int, threads: int | None) -> RayWorkerPool:
    plan = ActorPlan(paths.spec("diffusers"), device=device, torch_threads=threads)
    gpus = 1.0 if device.startswith("cuda") else 0.0
    return RayWorkerPool(plan, RaySettings("local", workers=workers, gpus_per_worker=gpus)).start()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--latency-jobs", type=int, default=12)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    quiet_libraries()
    paths = ensure_tiny_model()
    threads = torch.get_num_threads()
    cpus = os.cpu_count() or 2
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    print(f"tiny model, {args.size}², {args.steps} steps, previews on, {args.device}, {cpus} CPUs")

    local = InstantStyleEngine.load(paths.spec("diffusers"), device=args.device)
    remote = pool(paths, args.device, 1, threads)
    local_times, ray_times = asyncio.run(latencies(local, remote, args.latency_jobs, args.size, args.steps))
    local_ms, ray_ms = statistics.median(local_times) * 1000, statistics.median(ray_times) * 1000
    spread = statistics.quantiles([r - lo for r, lo in zip(ray_times, local_times, strict=True)], n=4)
    print(
        f"\n1. latency per job, median of {args.latency_jobs}, alternating ({threads} PyTorch threads each):"
    )
    print(f"   local worker      {local_ms:8.1f} ms")
    print(
        f"   one Ray worker    {ray_ms:8.1f} ms   ratio {ray_ms / local_ms:.3f} ({ray_ms - local_ms:+.1f} ms)"
    )
    print(f"   Ray minus local, job by job: quartiles {', '.join(f'{q * 1000:+.0f}' for q in spread)} ms")

    one = asyncio.run(throughput(pool(paths, args.device, 1, 1), args.jobs, args.size, args.steps))
    two = asyncio.run(throughput(pool(paths, args.device, 2, 1), args.jobs, args.size, args.steps))
    print(f"\n2. throughput, 2 clients x {args.jobs} jobs (1 PyTorch thread per worker):")
    print(f"   1 Ray worker      {one:8.1f} jobs/min")
    print(f"   2 Ray workers     {two:8.1f} jobs/min   ratio {two / one:.3f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
