"""A real server process under each attack: its resident memory stays within a documented bound, a
normal job succeeds afterwards, and SIGTERM ends it within 3 s with every probe running at once.

The bound (docs/RELIABILITY.md): the loaded model, plus the working memory of the job that runs, plus
512 MiB, whatever clients do. It holds because every byte a client can make the server keep is budgeted
per server (see backend/server/budgets.py). The working memory of the largest job the server accepts
(its UNet, VAE and preview decodes at 1024²) is measured first, with no probe running.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from backend.client import InstantStyleClient
from protocol import ErrorCode
from tests.attack_probes import PROBES, STYLE, ServerProcess, a_largest_job, a_normal_job
from tests.server_helpers import generate_message, run

BOUND_MIB = 512
PROBE_SECONDS = 3.0


MAX_SIDE = 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ServerProcess("--max-side", str(MAX_SIDE), log=tmp_path_factory.mktemp("attacks") / "serve.log")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def job_working_mib(server) -> float:
    """Peak growth while one largest-size job runs alone (a few hundred MiB on the tiny model)."""
    assert run(a_normal_job(server.url), timeout=120)
    baseline = server.rss_kib()
    with server.sampling():
        assert run(a_largest_job(server.url, MAX_SIDE), timeout=180)
    working = (server.peak_kib - baseline) / 1024
    assert working < BOUND_MIB, f"one {MAX_SIDE}² job alone grew the server by {working:.0f} MiB"
    return working


@pytest.mark.parametrize("name", list(PROBES))
def test_memory_stays_bounded_and_a_normal_job_follows(server, job_working_mib, name):
    assert run(a_normal_job(server.url), timeout=120)
    baseline = server.rss_kib()
    with server.sampling():
        run(PROBES[name](server.url, PROBE_SECONDS), timeout=180)
    growth_mib = (server.peak_kib - baseline) / 1024
    bound = BOUND_MIB + job_working_mib
    assert growth_mib < bound, f"{name}: the server grew by {growth_mib:.0f} MiB (bound {bound:.0f})"
    assert run(a_normal_job(server.url), timeout=180), f"no normal job after {name}"


def test_sigterm_ends_the_server_within_3_s_with_every_probe_running(tmp_path):
    server = ServerProcess("--max-side", "1024", log=tmp_path / "serve.log")

    async def scenario():
        async with InstantStyleClient.connect(server.url, client="listener") as listener:
            await listener.submit(generate_message(1, steps=150, width=512, height=512), {0: STYLE})
            probes = [asyncio.create_task(probe(server.url, 60)) for probe in PROBES.values()]
            await asyncio.sleep(5)  # every probe under way
            seconds = await asyncio.to_thread(server.stop)
            told = await listener.follow(1)
            for task in probes:
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*probes, return_exceptions=True)
            return seconds, told

    try:
        seconds, told = run(scenario(), timeout=120)
    finally:
        server.stop()
    steps = [line for line in server.log.read_text().splitlines() if "backend.server.app:" in line]
    assert seconds < 3.0, f"SIGTERM took {seconds:.1f} s; the server said: {steps[-3:]}"
    assert told.error is not None and told.error.code is ErrorCode.SHUTTING_DOWN
