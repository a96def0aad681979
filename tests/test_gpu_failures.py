"""What goes wrong on artists' GPUs, simulated on the tiny model on the CPU: each failed before its fix.

- an out-of-memory error inside the fp16 VAE's fp32 decode must not leave the VAE in fp32;
- memory is released only once the failed job's tensors are really gone, and never after a success;
- NaN output (fp16 overflow) is an error that says what to do, not a silent black picture.
"""

from __future__ import annotations

import queue
import weakref

import numpy as np
import pytest
import torch

from backend.engine.decode import NonFiniteOutput
from backend.engine.engine import InstantStyleEngine
from backend.engine.request import GenerationRequest, StyleReference
from backend.server.worker import GpuWorker, Job, JobFailed, JobFinished
from protocol import ErrorCode


def request_for(style_image, **fields) -> GenerationRequest:
    fields = {"width": 64, "height": 64, "steps": 3, "seed": 5, **fields}
    return GenerationRequest(prompt="a cat", style_images=[StyleReference(style_image)], **fields)


def test_an_oom_in_the_fp16_decode_leaves_the_vae_in_fp16(tiny_paths, style_image):
    engine = InstantStyleEngine.load(tiny_paths.spec("diffusers"), device="cpu", dtype="fp16")
    vae = engine.pipeline.vae
    vae.register_to_config(force_upcast=True)  # as SDXL's own VAE: decode in fp32
    request = request_for(style_image)
    clean = engine.generate(request).images[0]
    assert vae.dtype == torch.float16

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated in the decode)")

    vae.decode = out_of_memory
    with pytest.raises(torch.OutOfMemoryError):
        engine.generate(request)
    del vae.decode  # the GPU has room again
    assert vae.dtype == torch.float16
    assert np.array_equal(engine.generate(request).images[0], clean)  # the next job is as good as new


def run_on_worker(engine, request) -> object:
    """One job through the server's real worker; returns its last event."""
    events: queue.Queue = queue.Queue()
    worker = GpuWorker(engine)
    worker.start()
    try:
        worker.submit(Job(1, request, events.put))
        while True:
            event = events.get(timeout=60)
            if isinstance(event, JobFinished | JobFailed):
                return event
    finally:
        worker.stop()


def test_memory_is_released_once_the_failed_jobs_tensors_are_gone(engine, style_image, monkeypatch):
    held: list[weakref.ref] = []
    releases: list[bool] = []

    def fail_on_second_step(module, args, kwargs):
        held.append(weakref.ref(kwargs["encoder_hidden_states"]))  # the prompt embeddings of the call
        if len(held) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated at step 2)")

    def release_memory() -> None:
        releases.append(all(ref() is None for ref in held))

    monkeypatch.setattr(engine, "release_memory", release_memory)
    hook = engine.pipeline.unet.register_forward_pre_hook(fail_on_second_step, with_kwargs=True)
    try:
        failed = run_on_worker(engine, request_for(style_image))
    finally:
        hook.remove()
    assert isinstance(failed, JobFailed) and failed.code is ErrorCode.OUT_OF_MEMORY
    assert releases == [True], "memory was released while the failed job's tensors were still held"

    assert isinstance(run_on_worker(engine, request_for(style_image)), JobFinished)
    assert releases == [True]  # a successful job releases nothing (re-allocating GBs costs time)


def test_nan_output_is_an_error_that_says_what_to_do(engine, style_image):
    def nan_noise(module, args, output):
        output[0].fill_(float("nan"))
        return output

    hook = engine.pipeline.unet.register_forward_hook(nan_noise)
    try:
        with pytest.raises(NonFiniteOutput, match="--dtype fp32"):
            engine.generate(request_for(style_image))
        failed = run_on_worker(engine, request_for(style_image))
    finally:
        hook.remove()
    assert isinstance(failed, JobFailed) and failed.code is ErrorCode.ENGINE_ERROR
    assert "black image" in failed.message and "fp16-fix" in failed.message
    assert isinstance(run_on_worker(engine, request_for(style_image)), JobFinished)


def test_nan_pixels_from_the_vae_are_caught_too(engine, style_image, monkeypatch):
    decode = engine.pipeline.vae.decode

    def nan_decode(*args, **kwargs):
        image = decode(*args, **kwargs)[0]
        return (image * float("nan"),)

    monkeypatch.setattr(engine.pipeline.vae, "decode", nan_decode)
    with pytest.raises(NonFiniteOutput, match="decoded image"):
        engine.generate(request_for(style_image))
