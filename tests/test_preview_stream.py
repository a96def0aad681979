"""Previews handed over one step late (the GPU path's order) are the same previews, in the same order,
and a cancelled job still shows the last step that ran.

The asynchronous copy into pinned memory itself needs CUDA; here the deferred hand-over runs with
plain copies, which is the same code apart from that copy.
"""

from __future__ import annotations

import functools
import threading

import numpy as np
import torch

from backend.engine import previews as previews_module
from backend.engine.previews import PreviewStream, latents_to_rgb
from backend.engine.request import GenerationRequest, JobCancelled, StyleReference
from tests.conftest import noise_image


def test_a_deferred_preview_is_handed_over_at_the_next_step_and_flushed_at_the_end():
    emitted = []
    stream = PreviewStream(emitted.append, torch.device("cpu"), deferred=True)
    latents = [torch.randn(1, 4, 3, 5, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    stream.push(1, 3, latents[0], latents[0])
    assert emitted == []
    stream.push(2, 3, latents[1], latents[1])
    assert [p.step for p in emitted] == [1]
    stream.push(3, 3, latents[2], latents[2])
    stream.flush()
    stream.flush()  # nothing left: a second flush sends nothing
    assert [p.step for p in emitted] == [1, 2, 3] and all(p.total == 3 for p in emitted)
    for preview, latent in zip(emitted, latents, strict=True):
        assert np.array_equal(preview.rgb, latents_to_rgb(latent)) and preview.latents is latent


def test_immediate_previews_go_out_in_their_own_step():
    emitted = []
    stream = PreviewStream(emitted.append, torch.device("cpu"))
    assert not stream.deferred  # a CPU run has nothing to overlap
    stream.push(1, 2, torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2))
    assert [p.step for p in emitted] == [1]


def _job(steps: int = 4) -> GenerationRequest:
    return GenerationRequest(
        prompt="a lighthouse",
        style_images=[StyleReference(noise_image(3))],
        width=64,
        height=64,
        steps=steps,
        seed=9,
        preview_share=None,  # every step drawn: immediate and deferred hand-overs compared one by one
    )


def test_the_engine_with_deferred_previews_streams_the_same_previews_and_result(engine, monkeypatch):
    immediate = []
    plain = engine.generate(_job(), on_step=immediate.append)
    monkeypatch.setattr(previews_module, "PreviewStream", functools.partial(PreviewStream, deferred=True))
    deferred = []
    late = engine.generate(_job(), on_step=deferred.append)
    assert [p.step for p in deferred] == [p.step for p in immediate] == [1, 2, 3, 4]
    assert all(np.array_equal(a.rgb, b.rgb) for a, b in zip(immediate, deferred, strict=True))
    assert np.array_equal(plain.images[0], late.images[0])


def test_a_cancelled_job_with_deferred_previews_still_shows_its_last_step(engine, monkeypatch):
    monkeypatch.setattr(previews_module, "PreviewStream", functools.partial(PreviewStream, deferred=True))
    cancel = threading.Event()
    seen = []

    def on_step(preview):
        seen.append(preview.step)
        if preview.step == 2:
            cancel.set()

    try:
        engine.generate(_job(steps=6), on_step=on_step, cancel=cancel)
    except JobCancelled:
        pass
    else:
        raise AssertionError("the job was not cancelled")
    # Step 2's preview arrives in step 3's callback; step 4's callback sees the cancel and first hands
    # over step 3's preview, so the artist sees the last step handed to the stream, as without deferral.
    assert seen == [1, 2, 3]
