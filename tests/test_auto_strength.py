"""Auto strength: the selection rule on scripted scores, the search's plan (cells, order, cost), and the
search on the tiny model: its render is exactly the job with the chosen settings."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from backend.engine.auto_rule import SearchPoint, choose
from backend.engine.auto_search import SEARCH_SHARE, SearchContext, fine_points, plan_search, unet_cost
from backend.engine.request import GenerationRequest, JobCancelled, Refine, RequestError, StyleReference
from backend.engine.scores import ImageScores
from backend.engine.style_embedding import EmbeddingSpaceMismatch
from protocol import (
    Auto,
    BlockPreset,
    ErrorCode,
    Limits,
    Mode,
    ProtocolError,
    Region,
    SearchStage,
    SpeedPresetInfo,
    StyleImage,
    SweepAxis,
    SweepValues,
)
from protocol.codec import decode_client_message, encode_message
from protocol.enums import Sampler
from tests.conftest import noise_image

STYLE = noise_image(71)
RULE = Auto(leakage_margin=0.02, prompt_margin=0.03)


def point(style_scale: float, style: float, content: float | None = 0.2, prompt: float | None = 0.3, **kw):
    stage = kw.pop("stage", SearchStage.COARSE if style_scale else SearchStage.BASELINE)
    content_scale = kw.pop("content_scale", 0.5)
    return SearchPoint(
        style_scale, content_scale, BlockPreset.STYLE, stage, ImageScores(style, content, prompt)
    )


BASELINE = point(0.0, 0.5, 0.20, 0.30)


# ---------------------------------------------------------------- the rule on scripted scores


def test_the_strongest_style_within_both_margins_wins():
    points = [
        BASELINE,
        point(0.5, 0.60, 0.205, 0.29),
        point(1.0, 0.70, 0.219, 0.28),  # within both: the winner
        point(1.5, 0.90, 0.25, 0.29),  # the strongest style, but leaks 0.05 over the baseline
        point(2.0, 0.95, 0.20, 0.26),  # no leakage, but the prompt falls 0.04
    ]
    choice = choose(points, RULE)
    assert (choice.index, choice.passed) == (2, True)
    assert choice.reason.startswith("style 1.00, content 0.50: the strongest style (clip style 0.700")
    assert "leakage +0.019" in choice.reason and "prompt -0.020" in choice.reason
    wider = choose(points, Auto(leakage_margin=0.06, prompt_margin=0.03))
    assert wider.index == 3  # a wider margin lets the leaking one in


def test_ties_go_to_less_leakage_then_the_weaker_setting_then_the_earlier_point():
    points = [BASELINE, point(1.5, 0.8, 0.21), point(1.0, 0.8, 0.205), point(0.5, 0.8, 0.205)]
    assert choose(points, RULE).index == 3  # equal style: less leakage (2, 3), then the weaker (3)
    same = [BASELINE, point(1.0, 0.8), point(1.0, 0.8, content_scale=0.5)]
    assert choose(same, RULE).index == 1


def test_nothing_within_the_margins_chooses_the_closest_miss_and_says_so():
    points = [BASELINE, point(1.0, 0.9, 0.30), point(0.5, 0.7, 0.23), point(1.5, 0.95, 0.5)]
    choice = choose(points, RULE)
    assert (choice.index, choice.passed) == (2, False)  # misses by 0.01, the others by 0.08 and 0.28
    assert "no setting kept within the margins, this one misses them least" in choice.reason


def test_one_cell_grids_and_unmeasured_scores():
    only = [BASELINE, point(1.0, 0.1, 0.9)]
    assert choose(only, RULE).index == 1 and not choose(only, RULE).passed
    blind = [point(0.0, 0.5, None, None), point(0.5, 0.6, None, None), point(1.5, 0.9, None, None)]
    choice = choose(blind, RULE)  # no content text, no text space: nothing constrains
    assert (choice.index, choice.passed) == (2, True)
    assert "leakage not measured" in choice.reason and "prompt not measured" in choice.reason
    with pytest.raises(ValueError, match="one scored baseline"):
        choose([BASELINE], RULE)
    with pytest.raises(ValueError, match="one scored baseline"):
        choose([point(1.0, 0.5), point(0.5, 0.4)], RULE)


# ---------------------------------------------------------------- the plan


def job(**overrides) -> GenerationRequest:
    fields = {
        "prompt": "a lighthouse at dusk",
        "style_images": [StyleReference(STYLE)],
        "content_text": "a cat",
        "width": 1024,
        "height": 1024,
        "steps": 30,
        "auto": Auto(),
    }
    fields.update(overrides)
    return GenerationRequest(**fields)


LIGHTNING = SpeedPresetInfo("lightning-4", "Lightning", "sdxl-lightning", 1.0, Sampler.EULER_TRAILING, 4, 1.0)
HYPER = SpeedPresetInfo("hyper-8-cfg", "Hyper", "hyper-8", 1.0, Sampler.DDIM_TRAILING, 8, 5.0)


def test_without_a_speed_preset_the_search_fits_half_a_job_at_half_the_side():
    plan = plan_search(job(), SearchContext(1024))
    assert (plan.template.width, plan.template.height, plan.template.steps) == (512, 512, 8)
    assert plan.template.auto is None and not plan.template.step_pictures
    assert [p.stage for p in plan.coarse][:2] == [SearchStage.BASELINE, SearchStage.COARSE]
    assert plan.coarse[0].style_scale == 0.0
    assert [(p.style_scale, p.content_scale) for p in plan.coarse[1:]] == [
        (0.6, 0.25),
        (0.6, 0.75),
        (1.2, 0.25),
        (1.2, 0.75),
    ]
    assert plan.fine == 2 and plan.cells == 7
    assert plan.cost <= SEARCH_SHARE
    assert plan.cost == pytest.approx(
        7 * unet_cost(plan.template) / unet_cost(dataclasses.replace(job(), auto=None))
    )


def test_a_lightning_preset_buys_the_full_grid_within_the_sweep_limit():
    plan = plan_search(job(), SearchContext(1024, (HYPER, LIGHTNING)))
    template = plan.template
    assert (template.steps, template.sampler, template.guidance_scale) == (4, Sampler.EULER_TRAILING, 1.0)
    assert template.loras == (("sdxl-lightning", 1.0),)
    assert len(plan.coarse) == 10 and plan.fine == 4 and plan.cells == 14 <= 16
    styles = sorted({p.style_scale for p in plan.coarse[1:]})
    assert styles == [0.5, 1.0, 1.5] and plan.cost <= SEARCH_SHARE
    small = plan_search(job(), SearchContext(1024, (LIGHTNING,), max_cells=5))
    assert small.cells <= 5


def test_searching_precise_needs_a_preset_with_guidance_and_doubles_the_grid():
    plan = plan_search(job(auto=Auto(presets=True)), SearchContext(1024, (LIGHTNING, HYPER)))
    assert plan.template.loras == (("hyper-8", 1.0),)  # lightning turns CFG off: precise cannot work
    presets = [p.preset for p in plan.coarse[1:]]
    assert set(presets) == {BlockPreset.STYLE, BlockPreset.PRECISE}
    assert presets.count(BlockPreset.STYLE) == presets.count(BlockPreset.PRECISE)


def test_without_a_content_description_only_the_style_scale_is_searched():
    plan = plan_search(job(content_text="", content_scale=0.3), SearchContext(1024, (LIGHTNING,)))
    assert {p.content_scale for p in plan.coarse} == {0.3}
    assert [p.style_scale for p in plan.coarse[1:]] == [0.5, 1.0, 1.5]


def test_an_expensive_cell_still_gets_the_smallest_grid():
    plan = plan_search(job(width=512, height=512, steps=4), SearchContext(1024))
    assert [p.style_scale for p in plan.coarse] == [0.0, 0.6, 1.2] and plan.fine == 0


def test_a_job_on_a_speed_preset_searches_with_it_and_never_stacks_another():
    lightning_job = job(loras=(("sdxl-lightning", 1.0),), steps=4, guidance_scale=1.0, sampler=Sampler.LCM)
    plan = plan_search(
        dataclasses.replace(lightning_job, auto=Auto(presets=True)), SearchContext(1024, (HYPER, LIGHTNING))
    )
    template = plan.template
    assert template.loras == (("sdxl-lightning", 1.0),) and template.steps == 4
    assert template.guidance_scale == 1.0 and template.sampler is Sampler.LCM
    assert {p.preset for p in plan.coarse[1:]} == {BlockPreset.STYLE}  # no precise without guidance
    full = job(loras=tuple((f"l{i}", 1.0) for i in range(8)))
    assert plan_search(full, SearchContext(1024, (LIGHTNING,))).template.loras == full.loras


def test_a_weak_img2img_search_still_runs_a_step_and_a_canvas_searches_its_first_stage():
    weak = job(mode=Mode.IMG2IMG, init_image=STYLE, strength=0.2)
    for context in (SearchContext(1024), SearchContext(1024, (LIGHTNING,))):
        template = plan_search(weak, context).template
        assert template.effective_steps >= 1
        template.validate()
    canvas = job(width=4096, height=3072, refine=Refine())
    template = plan_search(canvas, SearchContext(1024)).template
    assert (template.width, template.height) == (576, 448) and template.refine is None  # of 1152x896


def test_the_fine_stage_always_runs_the_points_announced():
    plan = plan_search(job(), SearchContext(1024, (LIGHTNING,)))
    for corner in ((0.5, 0.0), (1.5, 1.0), (0.5, 1.0), (1.5, 0.0)):
        winner = SearchPoint(*corner, BlockPreset.STYLE, SearchStage.COARSE)
        assert len(fine_points(plan, winner, plan.coarse)) == plan.fine == 4, corner
    small = plan_search(job(content_text=""), SearchContext(1024, (LIGHTNING,)))
    for style in (0.5, 1.5):
        winner = SearchPoint(style, 0.5, BlockPreset.STYLE, SearchStage.COARSE)
        assert len(fine_points(small, winner, small.coarse)) == small.fine, style


def test_fine_points_are_halfway_neighbours_in_range_and_new():
    plan = plan_search(job(), SearchContext(1024, (LIGHTNING,)))
    winner = SearchPoint(1.5, 0.0, BlockPreset.STYLE, SearchStage.COARSE)
    fine = fine_points(plan, winner, plan.coarse)
    assert [(p.style_scale, p.content_scale) for p in fine] == [
        (1.75, 0.0),
        (1.25, 0.0),
        (1.5, 0.25),  # no content scale below 0: the first diagonal takes its place
        (1.75, 0.25),
    ]
    assert all(p.stage is SearchStage.FINE for p in fine)
    two = dataclasses.replace(plan, fine=2)
    assert len(fine_points(two, winner, plan.coarse)) == 2


# ---------------------------------------------------------------- bad input


def wire(**overrides) -> dict:
    fields = {"job_id": 3, "prompt": "p", "style_images": [StyleImage(0)], "auto": Auto()}
    fields.update(overrides)
    return fields


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"auto": Auto(leakage_margin=1.5)}, ErrorCode.OUT_OF_RANGE, "auto.leakage_margin must be between"),
        ({"auto": Auto(prompt_margin=-0.1)}, ErrorCode.OUT_OF_RANGE, "auto.prompt_margin must be between"),
        (
            {"sweep": [SweepValues(SweepAxis.SEED, [1, 2])]},
            ErrorCode.BAD_FIELD,
            "a job with auto cannot have a sweep",
        ),
        ({"style_images": []}, ErrorCode.MISSING_FIELD, "auto strength needs style_images"),
        ({"regions": [Region(1, [StyleImage(0)])]}, ErrorCode.BAD_FIELD, "cannot have regions"),
        ({"live": True}, ErrorCode.BAD_FIELD, "a job with auto cannot have live"),
    ],
)
def test_bad_auto_jobs_are_refused_in_one_line(fields, code, words):
    from protocol import Generate

    with pytest.raises(ProtocolError) as raised:
        message = decode_client_message(encode_message(Generate(**wire(**fields))))
        message.check_limits(Limits())
    assert raised.value.code is code and words in raised.value.message
    assert "\n" not in raised.value.message


def test_a_request_made_in_python_meets_the_same_rules():
    with pytest.raises(RequestError, match="cannot have a sweep"):
        job(sweep=[(SweepAxis.SEED, (1, 2))]).validate()
    with pytest.raises(RequestError, match="needs style references"):
        job(style_images=[], regions=[object()]).validate()
    with pytest.raises(RequestError, match="leakage_margin must be from 0 to 1"):
        job(auto=Auto(leakage_margin=2.0)).validate()


# ---------------------------------------------------------------- on the tiny model


def tiny_job(**overrides) -> GenerationRequest:
    fields = {"width": 64, "height": 64, "steps": 8, "seed": 3}
    fields.update(overrides)
    return job(**fields)


def test_the_render_is_exactly_the_job_with_the_chosen_settings(engine):
    steps: list[tuple[int, int]] = []
    request = tiny_job(search_context=SearchContext(engine.native_side, max_cells=16))
    result = engine.generate(request, on_step=lambda p: steps.append((p.step, p.total)))
    outcome = result.auto
    plan = plan_search(request, SearchContext(engine.native_side))
    assert [p.stage for p in outcome.points[: len(plan.coarse)]] == [p.stage for p in plan.coarse]
    assert all(p.scores is not None for p in outcome.points)
    assert (outcome.width, outcome.height) == (plan.template.width, plan.template.height)
    chosen = outcome.chosen
    assert outcome.choice == choose(outcome.points, request.auto)
    plain = engine.generate(
        dataclasses.replace(
            request,
            auto=None,
            style_scale=chosen.style_scale,
            content_scale=chosen.content_scale,
            preset=chosen.preset,
        )
    )
    assert np.array_equal(result.images[0], plain.images[0])
    assert result.scores == plain.scores
    total = len(outcome.points) * outcome.steps + 8
    assert steps[-1] == (total, total) and [s for s, _ in steps] == list(range(1, total + 1))


def test_each_searched_point_is_the_small_job_with_its_settings(engine):
    request = tiny_job()
    result = engine.generate(request)
    plan = plan_search(request, SearchContext.of(engine.features))
    for searched in result.auto.points[:3]:
        cell = dataclasses.replace(
            plan.template,
            style_scale=searched.style_scale,
            content_scale=searched.content_scale,
            preset=searched.preset,
        )
        assert engine.generate(cell).scores[0] == searched.scores


def test_a_cancel_during_the_search_stops_the_job(engine):
    cancel = threading.Event()
    seen = []

    def on_step(preview):
        seen.append(preview.step)
        if preview.step == 2:
            cancel.set()

    with pytest.raises(JobCancelled):
        engine.generate(tiny_job(), on_step=on_step, cancel=cancel)
    assert seen[-1] <= 3


def test_an_auto_job_through_the_server_shows_its_search_and_keeps_serving(engine):
    from backend.client import InstantStyleClient, frame_image
    from protocol import Progress
    from tests.server_helpers import generate_message, run, running_server

    async def scenario():
        async with running_server(engine) as server, InstantStyleClient.connect(server.url) as client:
            bad = generate_message(1, auto=Auto(), sweep=[SweepValues(SweepAxis.SEED, [1, 2])])
            await client.submit(bad, {0: STYLE})
            refused = (await client.follow(1)).error
            good = generate_message(2, steps=8, seed=3, content_text="a cat", auto=Auto(prompt_margin=0.05))
            await client.submit(good, {0: STYLE})
            return refused, await client.follow(2)

    refused, done = run(scenario())
    assert refused.code is ErrorCode.BAD_FIELD and "cannot have a sweep" in refused.message
    auto = done.result.auto
    assert auto is not None and auto.prompt_margin == 0.05 and auto.points[0].stage is SearchStage.BASELINE
    steps = [p.step for p in done.progress if isinstance(p, Progress)]
    assert done.started.total_steps == len(auto.points) * auto.steps + 8 == steps[-1]
    chosen = auto.points[auto.chosen]
    request = tiny_job(
        prompt="a lighthouse",
        auto=None,
        style_scale=chosen.style_scale,
        content_scale=chosen.content_scale,
        preset=chosen.preset,
    )
    expected = engine.generate(request).images[0]
    assert np.array_equal(np.asarray(frame_image(done.images[0]))[..., :3], expected)
    assert auto.reason.startswith(f"style {chosen.style_scale:.2f}")


def test_auto_on_sd15_and_on_a_plus_adapter(sd15_engine, plus_engine):
    sd15 = sd15_engine.generate(tiny_job())  # its content tower loads with the first content job
    assert all(p.scores.content is not None for p in sd15.auto.points)  # the baseline's too
    chosen = sd15.auto.chosen
    plain = sd15_engine.generate(
        tiny_job(auto=None, style_scale=chosen.style_scale, content_scale=chosen.content_scale)
    )
    assert np.array_equal(sd15.images[0], plain.images[0])
    plus = plus_engine.generate(tiny_job(content_text=""))  # plus adapters subtract nothing
    assert {p.content_scale for p in plus.auto.points} == {0.5}
    assert "leakage not measured" in plus.auto.choice.reason
    with pytest.raises(EmbeddingSpaceMismatch, match="content subtraction is not available"):
        plus_engine.generate(tiny_job())  # the first cell's one line, as for a plain job


def test_an_auto_job_sent_before_the_model_is_ready_announces_every_step_it_runs(engine):
    import asyncio

    from backend.client import InstantStyleClient
    from protocol import Progress
    from tests.server_helpers import generate_message, run, running_server
    from tests.test_watchable_loading import gated_load

    gate = threading.Event()

    async def scenario():
        async with (
            running_server(None, gated_load(engine, gate), limits=Limits(max_sweep_cells=6)) as server,
            InstantStyleClient.connect(server.url) as client,
        ):
            message = generate_message(1, steps=8, seed=3, content_text="a cat", auto=Auto())
            await client.submit(message, {0: STYLE})
            await asyncio.sleep(0.3)  # queued while the model loads
            gate.set()
            return await client.follow(1)

    done = run(scenario())
    steps = [p.step for p in done.progress if isinstance(p, Progress)]
    assert done.started.total_steps == steps[-1] == len(done.result.auto.points) * done.result.auto.steps + 8
    assert len(done.result.auto.points) <= 6  # the server's cell limit, though planned after loading
