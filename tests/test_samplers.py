"""Samplers: each maps to its diffusers scheduler with the right settings, is deterministic with a seed,
and reaches the engine through the protocol and the server."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from backend.client import InstantStyleClient, frame_image
from backend.engine.request import GenerationRequest, StyleReference
from backend.engine.samplers import SAMPLERS, make_scheduler
from protocol import ErrorCode, Sampler
from tests.conftest import noise_image
from tests.server_helpers import generate_message, run, running_server

STYLE = noise_image(3)


def job(sampler: Sampler | None, steps: int = 4) -> GenerationRequest:
    return GenerationRequest(
        prompt="a lighthouse",
        style_images=[StyleReference(STYLE)],
        width=64,
        height=64,
        steps=steps,
        seed=21,
        sampler=sampler,
    )


def test_every_sampler_has_its_scheduler_and_settings(engine):
    base = engine.pipeline.scheduler.config
    expected = {
        Sampler.EULER: ("EulerDiscreteScheduler", {}),
        Sampler.EULER_A: ("EulerAncestralDiscreteScheduler", {}),
        Sampler.EULER_TRAILING: ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
        Sampler.DPMPP_2M: (
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False},
        ),
        Sampler.DPMPP_2M_KARRAS: ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
        Sampler.DPMPP_SDE_KARRAS: (
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
        ),
        Sampler.DDIM: ("DDIMScheduler", {}),
        Sampler.DDIM_TRAILING: ("DDIMScheduler", {"timestep_spacing": "trailing"}),
        Sampler.UNIPC: ("UniPCMultistepScheduler", {}),
        Sampler.LCM: ("LCMScheduler", {"timestep_spacing": "trailing"}),
        Sampler.TCD: ("TCDScheduler", {"timestep_spacing": "trailing"}),
    }
    assert set(SAMPLERS) == set(Sampler) == set(expected)
    for sampler, (name, settings) in expected.items():
        scheduler = make_scheduler(sampler, base)
        assert type(scheduler).__name__ == name, sampler
        for key, value in settings.items():
            assert scheduler.config[key] == value, (sampler, key)
        # The model's own training settings carry over.
        assert scheduler.config.num_train_timesteps == base.num_train_timesteps
        assert scheduler.config.beta_schedule == base.beta_schedule


def test_the_tiny_models_scheduler_config_is_sdxls_so_ddim_runs_as_on_sdxl(engine):
    """SDXL base 1.0's published scheduler_config.json; DDIM's own defaults (clip_sample and
    set_alpha_to_one True) would make DDIM samplers on the tiny model differ from real SDXL."""
    published = {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "sample_max_value": 1.0,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "prediction_type": "epsilon",
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
    }
    config = engine.pipeline.scheduler.config  # as loaded from the tiny model's folder
    assert {key: config.get(key) for key in published} == published
    for sampler in (Sampler.DDIM, Sampler.DDIM_TRAILING):
        ddim = make_scheduler(sampler, config)
        assert (ddim.config.clip_sample, ddim.config.set_alpha_to_one) == (False, False), sampler
        ddim.set_timesteps(4)
        assert float(ddim.final_alpha_cumprod) == pytest.approx(float(ddim.alphas_cumprod[0]))


@pytest.mark.parametrize("sampler", list(Sampler), ids=lambda s: s.value)
def test_each_sampler_runs_and_is_deterministic_with_a_seed(engine, sampler):
    first = engine.generate(job(sampler)).images[0]
    again = engine.generate(job(sampler)).images[0]
    assert np.array_equal(first, again)
    assert first.shape == (64, 64, 3) and first.std() > 0


def test_samplers_make_different_pictures_and_the_default_is_the_models_own(engine):
    default = engine.generate(job(None)).images[0]
    pictures = {
        sampler: engine.generate(job(sampler)).images[0] for sampler in (Sampler.EULER_A, Sampler.DDIM)
    }
    assert not np.array_equal(pictures[Sampler.EULER_A], pictures[Sampler.DDIM])
    # A job naming no sampler after one that did runs exactly as before it.
    assert np.array_equal(engine.generate(job(None)).images[0], default)


def test_the_sampler_reaches_the_engine_through_the_server_and_hello_lists_them(engine):
    async def scenario():
        async with running_server(engine) as server, InstantStyleClient.connect(server.url) as client:
            await client.submit(generate_message(1, steps=4, seed=21, sampler=Sampler.EULER_A), {0: STYLE})
            done = await client.follow(1)
            await client.connection.send(
                '{"type":"generate","version":1,"job_id":2,"prompt":"x","style_images":[{"input":0}],'
                '"sampler":"k_lms_turbo"}'
            )
            refused = await client.receive()
            return client.hello.samplers, done, refused

    samplers, done, refused = run(scenario())
    assert samplers == list(Sampler)
    expected = engine.generate(job(Sampler.EULER_A)).images[0]
    assert np.array_equal(np.asarray(frame_image(done.images[0]))[..., :3], expected)
    assert refused.code is ErrorCode.BAD_FIELD and "sampler" in refused.message


@pytest.mark.parametrize("sampler", [Sampler.EULER_A, Sampler.TCD], ids=lambda s: s.value)
def test_stochastic_step_noise_is_drawn_on_the_gpu_from_the_jobs_seed(engine, monkeypatch, sampler):
    """Euler a's (and TCD's) per-step noise: from CPU generators it was copied to the GPU every step (a
    copy that waits for the queued kernels). On CUDA it comes from generators there, seeded from the
    job's seed; a CPU generator stands in for the GPU's here (the factory is the one thing that
    differs). Through the real pipeline: diffusers passes ``generator`` and ``eta`` only to a ``step``
    whose signature names them (a wrapper that hid it made the seed and TCD's eta vanish)."""
    from backend.engine import engine as engine_module
    from backend.engine.step_noise import STEP_NOISE_SEED_OFFSET, step_noise_on_device

    made = []

    def stand_in(device, seed):
        made.append((device.type, seed))
        return torch.Generator("cpu").manual_seed(seed)

    def as_on_cuda(scheduler, _device, seed, batch):
        return step_noise_on_device(scheduler, torch.device("cuda"), seed, batch, make=stand_in)

    received = []
    scheduler_class = type(make_scheduler(sampler, engine.pipeline.scheduler.config))
    class_step = scheduler_class.step

    @functools.wraps(class_step)  # diffusers reads the signature: the spy must keep it too
    def spy(self, *args, **kwargs):
        received.append(kwargs)
        return class_step(self, *args, **kwargs)

    on_cpu = engine.generate(job(sampler, steps=3)).images[0]
    monkeypatch.setattr(scheduler_class, "step", spy)
    monkeypatch.setattr(engine_module, "step_noise_on_device", as_on_cuda)
    first = engine.generate(job(sampler, steps=3)).images[0]
    second = engine.generate(job(sampler, steps=3)).images[0]
    assert made == [("cuda", 21 + STEP_NOISE_SEED_OFFSET)] * 2  # job(): seed 21, batch 1
    generators = [kwargs.get("generator") for kwargs in received]
    assert all(g is not None and g.initial_seed() == 21 + STEP_NOISE_SEED_OFFSET for g in generators)
    assert np.array_equal(first, second)  # the same seed, the same pictures
    if sampler is Sampler.TCD:  # the pipeline's eta 0 (not TCD's own 0.3): no step noise at all
        assert all(kwargs.get("eta") == 0.0 for kwargs in received)
        assert np.array_equal(first, on_cpu)
    else:
        assert not np.array_equal(first, on_cpu)  # the step noise came from the device's stream
