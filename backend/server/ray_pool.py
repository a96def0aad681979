"""A pool of Ray actors, one engine each (one per GPU), behind the server's executor interface.

The server keeps its connections, authentication, queue and fairness; each slot here is one
``ray_actor.EngineActor``. A job's events stream back through Ray's streaming generators while it
runs; a cancel reaches the actor through a second, concurrent method call. An actor that dies
(killed, out of host memory, its node lost) fails only its current job with ``worker_lost``, and is
replaced in its slot while the others go on. Ray is imported only here, and only when asked for
(``--ray``): a single-GPU artist never loads it.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import time
import weakref
from dataclasses import dataclass, field

from backend.engine.auto_search import with_plan
from backend.engine.previews import StepPreview
from protocol import ErrorCode, ModelStatus

from .executor import Executor, WorkerInfo, step_reporter
from .jobs import Job, JobCancelledEvent, JobFailed, JobFinished, JobStarted
from .ray_actor import ActorPlan, EngineActor

log = logging.getLogger(__name__)

STYLE_KEYS_REMEMBERED = 64
"""Style images per actor whose encodings are assumed still cached (the engine keeps 64)."""
READY_TIMEOUT_SECONDS = 1800.0
"""How long an actor may take to download and load its model."""
RETRY_SECONDS = 5.0
"""Wait between attempts to replace a lost worker."""


@dataclass(frozen=True)
class PoolPlan:
    info: object
    """An ``EngineInfo``."""
    modes: list


class RayUnavailable(RuntimeError):
    """Ray could not be started or reached: one line for the console."""


@dataclass(frozen=True)
class RaySettings:
    """Where the pool's actors run (``--ray``, ``--workers``)."""

    address: str
    """``local`` (start Ray in this process), ``auto`` (the cluster this machine belongs to) or a
    cluster address (``ray://head:10001`` or ``head:6379``)."""
    workers: int | None = None
    """Actors to start (default: one per GPU in the cluster, or one)."""
    gpus_per_worker: float | None = None
    """GPUs each actor reserves (default: 1 when the cluster has GPUs, else 0: a CPU actor)."""
    cpus_per_worker: float = 1.0


def check_worker_device(device: str | None) -> None:
    """``--device`` as every actor reads it: each sees only its own GPU, as ``cuda`` (``cuda:0``)."""
    if device is None or device in ("auto", "cpu", "cuda", "cuda:0"):
        return
    raise RayUnavailable(
        f"--device {device}: with --ray each worker sees only the GPU Ray gives it, as cuda; "
        "use --device cuda (or auto), or cpu for CPU workers"
    )


def gpus_per_worker(device: str | None, settings: RaySettings, cluster_gpus: float) -> float:
    """GPUs each actor reserves: ``--device cpu`` reserves none, else one where the cluster has GPUs."""
    if settings.gpus_per_worker is not None:
        return settings.gpus_per_worker
    if device == "cpu":
        return 0.0
    return 1.0 if cluster_gpus >= 1 else 0.0


def connect(settings: RaySettings) -> bool:
    """Start or join Ray; True when this process started it (and so stops it). One line on failure."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--ray needs the 'ray' package: pip install 'ray==2.60.0'") from None
    if ray.is_initialized():
        return False
    check_tls(settings)
    if settings.address not in ("local", "auto"):
        probe(settings.address)  # ray.init itself retries an unreachable address for minutes
    try:
        if settings.address == "local":
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=settings.address, log_to_driver=False)
    except Exception as error:  # Ray raises ConnectionError, RuntimeError, ValueError...
        raise RayUnavailable(
            f"cannot reach the Ray cluster at {settings.address}: {first_line(error)}"
        ) from None
    return True


def check_tls(settings: RaySettings) -> None:
    """With ``RAY_USE_TLS=1``, the certificate files Ray will use, or one line: Ray itself crashes or
    retries for minutes on a missing file or a certificate its peers refuse (docs/SCALING.md)."""
    from . import ray_tls

    if not ray_tls.enabled():
        return
    node_ip = None
    if settings.address == "local":  # the address this Ray's processes will dial each other on
        from ray._private.services import get_node_ip_address

        node_ip = get_node_ip_address()
    reason = ray_tls.problem(node_ip=node_ip)
    if reason is not None:
        raise RayUnavailable(f"Ray's TLS (RAY_USE_TLS=1): {reason}")


PROBE_SECONDS = 5.0


def probe(address: str) -> None:
    """One TCP connection to a cluster address (``host:port`` or ``ray://host:port``), or one line."""
    import socket

    text = address.removeprefix("ray://")
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailable(f"--ray {address}: expected local, auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_SECONDS):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise RayUnavailable(f"cannot reach the Ray cluster at {address}: {reason}") from None


@dataclass
class _Slot:
    actor: object | None = None
    info: WorkerInfo | None = None
    styles: collections.OrderedDict[str, None] = field(default_factory=collections.OrderedDict)
    running: int | None = None
    """The job id running here."""


class RayWorkerPool(Executor):
    """``workers`` Ray actors, each with a loaded engine."""

    def __init__(self, plan: ActorPlan, settings: RaySettings, owns_ray: bool = False) -> None:
        import ray

        self._ray = ray
        self.plan = plan
        self.settings = settings
        self.owns_ray = owns_ray
        resources = ray.cluster_resources()
        gpus = gpus_per_worker(plan.device, settings, resources.get("GPU", 0))
        self.gpus_per_worker = gpus
        count = settings.workers or (int(resources.get("GPU", 0) // gpus) if gpus else 1) or 1
        self._remote = ray.remote(EngineActor).options(
            num_gpus=gpus, num_cpus=settings.cpus_per_worker, max_concurrency=2, max_restarts=0
        )
        self._slots = [_Slot() for _ in range(count)]
        self._closed = False
        self._keys: weakref.WeakKeyDictionary[Job, list[str]] = weakref.WeakKeyDictionary()
        """Each queued job's style keys, hashed once: the queue asks ``prefers`` under its lock."""
        self.features = None
        self.modes: list = []
        self.info = None

    # ------------------------------------------------------------------ start-up

    def load_plan_info(self) -> PoolPlan:
        """What hello says before the workers are up (``run_server``'s plan)."""
        from backend.engine.control import offered_modes
        from backend.engine.load_plan import EngineInfo

        spec = self.plan.spec
        device = f"ray: {self.slots} workers" + (" (1 GPU each)" if self.gpus_per_worker else " (CPU)")
        info = EngineInfo(spec.label, spec.is_test_model, device, self.plan.dtype or "auto", "per worker")  # type: ignore[attr-defined]
        modes = offered_modes(spec.controls)  # type: ignore[attr-defined]  # a canny or a tile ControlNet
        return PoolPlan(info, modes)

    def start(self, report=None) -> RayWorkerPool:
        """Create every actor and wait until each has loaded its model (they load in parallel)."""
        from protocol import ModelPhase

        say = report or (lambda status: None)
        say(
            ModelStatus(ModelPhase.LOADING, f"Starting {len(self._slots)} Ray workers (each loads the model)")
        )
        actors = [self._remote.remote(self.plan) for _ in self._slots]
        try:
            described = self._ray.get([a.describe.remote() for a in actors], timeout=READY_TIMEOUT_SECONDS)
        except self._ray.exceptions.RayError as error:  # e.g. a model file the workers cannot load
            for actor in actors:
                with contextlib.suppress(Exception):
                    self._ray.kill(actor)
            raise RuntimeError(f"a Ray worker could not start: {last_line(error)}") from None
        for index, (slot, actor, about) in enumerate(zip(self._slots, actors, described, strict=True)):
            slot.actor, slot.info = actor, about.worker(index)
        first = described[0]
        self.features, self.modes, self.info = first.features, first.modes, first.info
        log.info("Ray workers ready: %s", ", ".join(f"{s.info.name} ({s.info.device})" for s in self._slots))
        return self

    @property
    def slots(self) -> int:
        return len(self._slots)

    def workers(self) -> list[WorkerInfo]:
        return [slot.info for slot in self._slots if slot.info is not None]

    def usable(self, slot: int) -> bool:
        return self._slots[slot].actor is not None

    def restore(self, slot: int) -> None:
        self._replace(slot)

    def prefers(self, slot: int, job: Job) -> bool:
        keys = self._style_keys(job)
        return bool(keys) and all(key in self._slots[slot].styles for key in keys)

    def _style_keys(self, job: Job) -> list[str]:
        keys = self._keys.get(job)
        if keys is None:
            keys = self._keys[job] = style_keys(job)
        return keys

    # ------------------------------------------------------------------ jobs

    def run(self, slot: int, job: Job) -> None:
        state = self._slots[slot]
        if job.cancel_event.is_set():
            job.emit(JobCancelledEvent(0))
            return
        actor = state.actor
        if actor is None:  # lost between the queue's check and now
            job.emit(
                JobFailed(ErrorCode.WORKER_LOST, "no worker is available to run this job; send it again")
            )
            return
        # A job sent before the workers were ready is planned now that they are (an auto search's steps).
        request = job.request = with_plan(job.request, self.features)
        job.emit(JobStarted(request.seed, request.total_steps))
        on_step = step_reporter(job, time.perf_counter())
        state.running = job.job_id
        cancel_sent = False
        try:
            for ref in actor.generate.remote(job.job_id, request):
                event = self._ray.get(ref)
                if isinstance(event, StepPreview):
                    on_step(event)
                    if job.cancel_event.is_set() and not cancel_sent:  # a cancel raced the job's start
                        actor.cancel.remote(job.job_id)
                        cancel_sent = True
                    continue
                if isinstance(event, JobFinished):
                    self._remember(state, job)
                elif isinstance(event, JobFailed):
                    name = state.info.name if state.info else slot
                    log.error("job %s failed on %s: %s", job.job_id, name, event.message)
                job.emit(event)
                return
            job.emit(JobFailed(ErrorCode.INTERNAL, "the worker ended the job without a result"))
        except self._ray.exceptions.RayActorError as error:
            self._lost(slot, job, error)
        except self._ray.exceptions.RayError as error:  # e.g. the object store lost a preview
            log.error("job %s on %s: %s", job.job_id, state.info, error)
            job.emit(
                JobFailed(
                    ErrorCode.ENGINE_ERROR, f"the worker could not return the job: {type(error).__name__}"
                )
            )
        finally:
            state.running = None

    def interrupt(self, slot: int, job: Job) -> None:
        actor = self._slots[slot].actor
        if actor is not None:
            actor.cancel.remote(job.job_id)

    def _remember(self, state: _Slot, job: Job) -> None:
        for key in self._style_keys(job):
            state.styles[key] = None
            state.styles.move_to_end(key)
        while len(state.styles) > STYLE_KEYS_REMEMBERED:
            state.styles.popitem(last=False)

    # ------------------------------------------------------------------ faults

    def _lost(self, slot: int, job: Job, error: BaseException) -> None:
        state = self._slots[slot]
        name = state.info.name if state.info else slot
        log.error("%s was lost running job %s: %s", name, job.job_id, first_line(error))
        job.emit(
            JobFailed(
                ErrorCode.WORKER_LOST,
                f"the worker running this job was lost ({type(error).__name__}); it is being replaced, "
                "send the job again",
            )
        )
        with contextlib.suppress(Exception):
            self._ray.kill(state.actor)
        # Unusable from now: the queue restores the slot on its own thread (``restore``), the other
        # slots go on meanwhile.
        state.actor, state.styles = None, collections.OrderedDict()

    def _replace(self, slot: int) -> None:
        """Start a new actor in a lost worker's slot and wait for its model (on the slot's thread)."""
        state = self._slots[slot]
        if self._closed or state.actor is not None:
            return
        actor = None
        try:
            actor = self._remote.remote(self.plan)
            about = self._wait(actor.describe.remote())
            if about is None:  # closed meanwhile, or too slow
                raise TimeoutError(f"not ready within {READY_TIMEOUT_SECONDS:.0f} s")
        except Exception as error:
            if actor is not None:
                with contextlib.suppress(Exception):
                    self._ray.kill(actor)
            if self._closed:
                return
            log.error("could not replace worker %s (retrying in %.0f s): %s", slot + 1, RETRY_SECONDS, error)
            time.sleep(RETRY_SECONDS)
            return
        if self._closed:
            with contextlib.suppress(Exception):
                self._ray.kill(actor)
            return
        state.actor, state.info = actor, about.worker(slot)
        log.info("%s replaced (%s)", state.info.name, state.info.device)

    def _wait(self, ref) -> object | None:
        """``ray.get`` a second at a time, so that closing the pool never waits for a loading actor."""
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not self._closed and time.monotonic() < deadline:
            ready, _ = self._ray.wait([ref], timeout=1.0)
            if ready:
                return self._ray.get(ref)
        return None

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        """Kill every actor, and stop Ray when this process started it."""
        self._closed = True
        for state in self._slots:
            if state.actor is not None:
                with contextlib.suppress(Exception):
                    self._ray.kill(state.actor)
                state.actor = None
        if self.owns_ray:
            with contextlib.suppress(Exception):
                self._ray.shutdown()


def first_line(error: BaseException) -> str:
    """What a Ray error says first (Ray's own errors: what happened; the details follow)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:500] if lines else type(error).__name__


def last_line(error: BaseException) -> str:
    """The line that says what went wrong in a Ray error (its text ends with the remote traceback's)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1][:500] if lines else type(error).__name__


def style_keys(job: Job) -> list[str]:
    """What identifies the job's style images (their pixels), as the engines' caches key them."""
    request = job.request
    images = [ref.image for ref in request.style_images]
    images += [ref.image for region in request.regions for ref in region.style_images]
    keys = []
    for image in images:
        digest = hashlib.blake2b(image.tobytes(), digest_size=16)
        digest.update(f"{image.mode}{image.size}".encode())
        keys.append(digest.hexdigest())
    return keys
