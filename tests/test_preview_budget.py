"""The preview budget: previews cost at most a share of the denoising time, every step still reports
its progress, the first step and the last (the result itself) are always shown, a live job shows none.

The rule is tested on a made-up clock (``PreviewBudget.clock``), so nothing here depends on how fast
this machine is; ``bench/bench_engine.py`` measures what the budget saves.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from backend.cli import build_parser
from backend.engine.preview_budget import HALF_SIDE_COST, Picture, PreviewBudget
from backend.engine.previews import PreviewStream
from backend.engine.request import GenerationRequest, StyleReference
from backend.server.app import config_from_args
from backend.server.config import ConfigError
from tests.conftest import noise_image
from tests.server_helpers import generate_message, run, running_server

STYLE = noise_image(71)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def simulate_sized(
    steps: int, step_seconds: float, render_seconds: float, **budget
) -> tuple[list[tuple[int, Picture]], list]:
    """A job on the made-up clock (a half-side picture costs ``HALF_SIDE_COST`` of a full one): which
    steps got a picture and how big, and the budget after each step."""
    clock = Clock()
    budget = PreviewBudget(clock=clock, **budget)
    budget.resume()
    shown, states = [], []
    for step in range(1, steps + 1):
        clock.now += step_seconds
        picture = budget.step_ended(step)
        if picture:
            cost = render_seconds * (HALF_SIDE_COST if picture is Picture.HALF else 1.0)
            clock.now += cost
            budget.rendered(cost, picture)
            shown.append((step, picture))
        states.append((budget.spent, budget.denoising))
        budget.resume()
    return shown, states


def simulate(steps: int, step_seconds: float, render_seconds: float, **budget) -> tuple[list[int], list]:
    """As ``simulate_sized``, the steps only."""
    shown, states = simulate_sized(steps, step_seconds, render_seconds, **budget)
    return [step for step, _ in shown], states


def test_costly_previews_stay_within_their_share_and_use_it():
    """A preview costing a fifth of a step (the tiny autoencoder at 1024² on this CPU costs 29 %)."""
    shown, states = simulate_sized(100, 0.1, 0.02, share=0.03)
    assert shown[0] == (1, Picture.HALF)  # a blur yet: half the side, a quarter of the cost
    for spent, denoising in states[1:]:
        assert spent <= max(0.005, 0.03 * denoising) + 1e-9  # the first preview is always drawn
    # 3 % of 10 s is 0.3 s: 15 full previews of 0.02 s; the budget spends nearly all of it. A full
    # one fits every 0.67 s, before a half one would be due: never sharp, blurred, sharp again.
    assert 0.28 <= states[-1][0] <= 0.03 * 10.0 + 1e-9
    assert [picture for _, picture in shown[1:]] == [Picture.FULL] * (len(shown) - 1)
    assert len(shown) in (14, 15)


def test_when_a_full_picture_does_not_fit_a_half_one_comes_about_every_second():
    """A CPU job of 2 s whose full preview costs 16 ms (the tiny model at 256²): within 2 % a full
    one fits only after 1 s of denoising; a half-side one (4 ms) when none came for 0.8 s."""
    shown, states = simulate_sized(50, 0.04, 0.016, share=0.02)
    times = [step * 0.04 for step, _ in shown]
    assert shown[0] == (1, Picture.HALF) and len(shown) >= 3
    assert shown[1][1] is Picture.HALF
    assert max(b - a for a, b in itertools.pairwise([*times, 50 * 0.04])) <= 1.0  # then the result
    assert states[-1][0] <= 0.02 * states[-1][1] + 1e-9


def test_a_full_picture_is_drawn_where_it_fits():
    shown, _ = simulate_sized(30, 0.2, 0.01, share=0.1)
    assert shown[0] == (1, Picture.HALF) and all(picture is Picture.FULL for _, picture in shown[1:])


def test_cheap_previews_come_every_step_and_fast_steps_at_most_ten_a_second():
    shown, _ = simulate(30, 0.2, 0.0001, share=0.03)
    assert shown == list(range(1, 31))
    clock_shown, _ = simulate(100, 0.01, 0.0, share=0.03)  # 10 ms steps: one preview per 100 ms
    assert clock_shown == list(range(1, 101, 10))


def test_a_share_of_zero_shows_the_first_step_only_and_a_live_job_none():
    assert simulate(30, 0.1, 0.01, share=0.0)[0] == [1]
    assert simulate(30, 0.1, 0.01, pictures=False)[0] == []


def simulate_deferred(steps: int, step_seconds: float, render_seconds: float, **budget) -> list[int]:
    """As on a GPU: a preview's cost is told at the next step's callback, after its decision."""
    clock = Clock()
    budget = PreviewBudget(clock=clock, **budget)
    budget.resume()
    shown, in_flight = [], None
    for step in range(1, steps + 1):
        clock.now += step_seconds
        wanted = budget.step_ended(step)
        if in_flight is not None:
            share = HALF_SIDE_COST if in_flight is Picture.HALF else 1.0
            budget.rendered(render_seconds * share, in_flight)
            in_flight = None
        if wanted:
            shown.append(step)
            in_flight = wanted
        budget.resume()
    return shown


def test_on_a_gpu_a_preview_whose_cost_is_not_known_yet_holds_the_next_one_back():
    """Before, the step after each preview was drawn too (its cost unknown, the budget looked empty):
    pairs of previews, and step 2 even with a budget of 0."""
    assert simulate_deferred(30, 0.15, 0.01, share=0.0) == [1]
    shown = simulate_deferred(60, 0.15, 0.02, share=0.03)
    assert shown[0] == 1 and len(shown) >= 3
    assert all(b - a > 1 for a, b in itertools.pairwise(shown))  # never two in a row


def test_a_deferred_stream_hands_over_in_step_order_when_the_budget_skips():
    """Step 2 is skipped: step 1's preview (held for the next callback) goes out before step 2's
    progress, then step 3's preview at the end."""
    emitted = []
    answers = iter([Picture.HALF, Picture.NONE, Picture.FULL])

    class Budget(PreviewBudget):
        def step_ended(self, step: int) -> Picture:
            return next(answers)

    stream = PreviewStream(emitted.append, torch.device("cpu"), deferred=True, budget=Budget())
    for step in (1, 2, 3):
        stream.push(step, 3, torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2))
    stream.flush()
    assert [(p.step, p.rgb is None) for p in emitted] == [(1, False), (2, True), (3, False)]


def job(**overrides) -> GenerationRequest:
    fields = {"prompt": "a lighthouse", "style_images": [StyleReference(STYLE)], "width": 64, "height": 64}
    return GenerationRequest(**{**fields, "steps": 12, "seed": 3, **overrides})


@pytest.mark.parametrize("share", [0.03, 0.0])
def test_every_step_reports_and_the_last_preview_is_the_result_itself(engine, share):
    previews = []
    result = engine.generate(job(preview_share=share), on_step=previews.append)
    assert [p.step for p in previews] == list(range(1, 13)) and all(p.total == 12 for p in previews)
    assert previews[0].rgb is not None and previews[0].rgb.shape == (32, 32, 3)  # at half the side
    assert np.array_equal(previews[-1].rgb, result.images[0])  # at preview size: the picture itself
    if share == 0.0:
        assert all(p.rgb is None for p in previews[1:-1])
    assert np.array_equal(result.images[0], engine.generate(job()).images[0])  # previews change nothing


def test_the_last_preview_is_the_result_scaled_to_the_asked_size(engine):
    previews = []
    result = engine.generate(job(width=128, preview_side=48), on_step=previews.append)
    last = previews[-1].rgb
    assert last.shape == (24, 48, 3)
    from PIL import Image

    scaled = np.asarray(Image.fromarray(result.images[0]).resize((48, 24), Image.Resampling.BILINEAR))
    assert np.array_equal(last, scaled)


def test_through_the_server_a_preview_follows_its_progress_and_a_live_job_sends_none(engine):
    from backend.client import InstantStyleClient

    async def scenario():
        async with running_server(engine) as server, InstantStyleClient.connect(server.url) as client:
            await client.submit(generate_message(1, steps=8), {0: STYLE})
            normal = await client.follow(1)
            await client.submit(generate_message(2, steps=4, live=True), {0: STYLE})
            return normal, await client.follow(2)

    normal, live = run(scenario())
    assert [p.step for p in normal.progress] == list(range(1, 9))
    assert {1, 8} <= {f.index for f in normal.previews}
    order = normal.order
    for index, kind in enumerate(order):
        if kind == "PREVIEW":  # right after the progress of its own step
            assert order[index - 1] == "Progress"
    assert [p.step for p in live.progress] == [1, 2, 3, 4] and live.previews == []
    assert live.error is None and live.result.count == 1


def test_the_servers_preview_budget_is_a_percentage_of_the_denoising_time():
    parse = build_parser().parse_args
    assert config_from_args(parse(["serve"])).preview_share == pytest.approx(0.02)
    assert config_from_args(parse(["serve", "--preview-budget", "100"])).preview_share == 1.0
    with pytest.raises(ConfigError, match="the preview budget must be 0 to 100 %, got 150"):
        config_from_args(parse(["serve", "--preview-budget", "150"])).check()


def test_with_linear_previews_the_last_picture_stays_as_small_as_they_are(tiny_paths):
    """The result as the last preview, at latent resolution: not 3 MiB at 1024² to a client that asked
    for rough previews."""
    import dataclasses

    from backend.engine.engine import InstantStyleEngine

    linear = InstantStyleEngine.load(dataclasses.replace(tiny_paths.spec("diffusers"), preview_vae="none"))
    previews = []
    result = linear.generate(job(width=128, height=64, steps=4), on_step=previews.append)
    assert previews[0].rgb.shape == (8, 16, 3) and previews[-1].rgb.shape == (8, 16, 3)
    from PIL import Image

    scaled = np.asarray(Image.fromarray(result.images[0]).resize((16, 8), Image.Resampling.BILINEAR))
    assert np.array_equal(previews[-1].rgb, scaled)
