"""The queue with several executor slots (what a Ray pool is to it), with a scripted executor: jobs go
to idle slots, clients still take turns, a slot that knows a job's style gets it, a lost slot waits for
its replacement while the others go on, and stop interrupts every running job."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator

from backend.engine.request import GenerationRequest, StyleReference
from backend.server.executor import Executor
from backend.server.worker import GpuWorker, Job, JobFinished, JobStarted
from protocol import WorkerInfo
from tests.conftest import noise_image

TIMEOUT = 10.0


class ScriptedExecutor(Executor):
    """``slots`` slots; a job runs until the test releases it; records where each job ran."""

    def __init__(self, slots: int, knows: dict[int, set[str]] | None = None) -> None:
        self._slots = slots
        self.knows = knows or {}
        self.started: queue.Queue[tuple[int, str]] = queue.Queue()
        self.release: dict[str, threading.Event] = {}
        self.interrupted: list[str] = []
        self.unusable: set[int] = set()
        self.restored: list[int] = []
        self.closed = False

    @property
    def slots(self) -> int:
        return self._slots

    def run(self, slot: int, job: Job) -> None:
        name = job.request.prompt
        gate = self.release.setdefault(name, threading.Event())
        job.emit(JobStarted(job.request.seed, 1))
        self.started.put((slot, name))
        gate.wait(TIMEOUT)
        job.emit(JobFinished(None))  # type: ignore[arg-type]

    def interrupt(self, slot: int, job: Job) -> None:
        self.interrupted.append(job.request.prompt)
        self.release.setdefault(job.request.prompt, threading.Event()).set()

    def prefers(self, slot: int, job: Job) -> bool:
        return job.request.style_images[0].image.info.get("name") in self.knows.get(slot, set())

    def usable(self, slot: int) -> bool:
        return slot not in self.unusable

    def restore(self, slot: int) -> None:
        self.restored.append(slot)

    def workers(self) -> list[WorkerInfo]:
        return [WorkerInfo(f"worker {slot + 1}", "cpu") for slot in range(self._slots)]

    def close(self) -> None:
        self.closed = True


def job(job_id: int, client: str, style: str = "a") -> Job:
    image = noise_image(job_id)
    image.info["name"] = style
    request = GenerationRequest(prompt=f"{client}{job_id}", style_images=[StyleReference(image)])
    return Job(job_id, request, lambda event: None, client=client)


def started(executor: ScriptedExecutor, count: int) -> list[tuple[int, str]]:
    return [executor.started.get(timeout=TIMEOUT) for _ in range(count)]


@contextlib.contextmanager
def running(worker: GpuWorker, executor: ScriptedExecutor) -> Iterator[GpuWorker]:
    """The worker started; afterwards every held job released and the worker stopped."""
    worker.start()
    try:
        yield worker
    finally:
        for gate in executor.release.values():
            gate.set()
        worker.stop(TIMEOUT)


def test_two_slots_run_two_jobs_at_once_and_clients_still_take_turns():
    executor = ScriptedExecutor(2)
    worker = GpuWorker(executor)
    for job_id in (1, 2, 3):  # all queued before the slots start: a deterministic order
        worker.submit(job(job_id, "a"))
    worker.submit(job(4, "b"))
    worker.submit(job(5, "c"))
    with running(worker, executor):
        first = started(executor, 2)
        assert sorted(name for _, name in first) == ["a1", "b4"] and {slot for slot, _ in first} == {0, 1}
        assert worker.workers() == [WorkerInfo("worker 1", "cpu"), WorkerInfo("worker 2", "cpu")]
        # Round-robin across clients: c's only job before a's second and third.
        order = []
        for name in ("a1", "b4", "c5"):
            executor.release[name].set()
            order.append(started(executor, 1)[0][1])
        assert order == ["c5", "a2", "a3"]
    assert executor.closed


def test_an_idle_slot_that_knows_the_style_gets_the_job():
    executor = ScriptedExecutor(2, knows={1: {"ink"}})
    with running(GpuWorker(executor), executor) as worker:
        worker.submit(job(1, "a", style="ink"))
        assert started(executor, 1) == [(1, "a1")]
        worker.submit(job(2, "b", style="oil"))  # nobody knows it: the idle slot 0 takes it
        assert started(executor, 1) == [(0, "b2")]


def test_a_lost_slot_is_restored_while_the_other_runs_the_queue():
    executor = ScriptedExecutor(2)
    executor.unusable.add(0)
    with running(GpuWorker(executor), executor) as worker:
        for job_id in (1, 2):
            worker.submit(job(job_id, "a"))
        assert started(executor, 1) == [(1, "a1")]
        assert 0 in executor.restored  # the lost slot's thread tried to restore it, outside the lock
        executor.release["a1"].set()
        assert started(executor, 1) == [(1, "a2")]
        executor.unusable.clear()  # the replacement is ready: slot 0 takes jobs again
        worker.submit(job(3, "b"))
        assert started(executor, 1) == [(0, "b3")]


def test_stop_interrupts_every_running_job_and_closes_the_executor():
    executor = ScriptedExecutor(2)
    worker = GpuWorker(executor)
    worker.start()
    worker.submit(job(1, "a"))
    worker.submit(job(2, "b"))
    started(executor, 2)
    worker.stop(TIMEOUT)
    assert sorted(executor.interrupted) == ["a1", "b2"] and executor.closed and not worker.busy


def test_the_local_server_and_its_command_line_never_import_ray():
    import subprocess
    import sys

    from tests.conftest import REPO

    code = (
        "import sys\n"
        "from backend import cli\n"
        "from backend.server import app, connection, worker\n"
        "from backend.server.executor import LocalExecutor\n"
        "assert cli.main(['serve', '--port', '70000']) == 2\n"  # the CLI path up to its checks
        "print('ray' in sys.modules)\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "False"
