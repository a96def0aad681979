"""PyTorch's CPU thread counts, pinned so that the same job gives the same pixels in every process.

A CPU reduction (a matrix product, a convolution, a softmax) sums in another order when it is split
over another number of threads, so the same seed can differ by one level in a pixel between a process
with 1 thread and one with 2 (seen on two AVX-512 machines, on the AVX-512 path of one and the AVX2
path of the other; elsewhere the kernels happened to agree).
Results reproduce exactly for the same seed, device, dtype, CPU kernel path (``ATEN_CPU_CAPABILITY``)
and thread count: every process of ours that runs jobs (``serve``, ``generate``, a Ray actor, the
tests' reference engine) takes its count from here, so an operator or a test sets it in one place.
"""

from __future__ import annotations

import contextlib
import os

THREADS_VARIABLE = "INSTANTSTYLE_TORCH_THREADS"
"""Environment variable with the intra-op thread count, read when ``--threads`` is not given."""


class ThreadCountError(ValueError):
    """A thread count that is not a positive whole number."""


def requested_threads(explicit: int | None = None) -> int | None:
    """``explicit`` if given, else ``$INSTANTSTYLE_TORCH_THREADS``, else None (PyTorch's own choice:
    one thread per core, or what Ray's ``OMP_NUM_THREADS`` says in an actor)."""
    if explicit is not None:
        if explicit < 1:
            raise ThreadCountError(f"--threads {explicit}: expected 1 or more")
        return explicit
    text = os.environ.get(THREADS_VARIABLE, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ThreadCountError(f"{THREADS_VARIABLE}={text!r}: expected a whole number, 1 or more")
    return int(text)


def pin_threads(explicit: int | None = None) -> int:
    """Use the requested count (``requested_threads``) for intra-op work, and the same for inter-op
    work where that can still be set; returns the intra-op count now in force.

    ``torch.set_num_threads`` applies to every Python thread of the process (the server's inference
    thread too). The inter-op count can only be set before the first parallel work; it decides no
    arithmetic, so a process that has already started keeps its own.
    """
    import torch

    threads = requested_threads(explicit)
    if threads is not None:
        torch.set_num_threads(threads)
        if torch.get_num_interop_threads() != threads:
            with contextlib.suppress(RuntimeError):  # already set, or inter-op work already ran
                torch.set_num_interop_threads(threads)
    return torch.get_num_threads()


def describe_numerics() -> str:
    """``2 CPU threads, AVX512 kernels``: what decides the last bits of a CPU job's pixels."""
    import torch

    return f"{torch.get_num_threads()} CPU threads, {torch.backends.cpu.get_cpu_capability()} kernels"
