"""Auto strength: find the style and content scales for these references, then render them.

A coarse grid of style scale × content scale (× preset, on request) runs at a reduced size, with a
few-step speed preset where the server has one, next to one no-style baseline; the rule in
``auto_rule`` picks a winner, its halfway neighbours run, the rule picks again among all, and the
winner is rendered at the job's own size. The search is planned against a cost budget (``SEARCH_SHARE``
of the final render, so search plus render stay within 1.5× one job): the grid shrinks before the
budget is broken, and never has more cells than the server's sweep limit.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from protocol.enums import BlockPreset, SearchStage
from protocol.generate import Auto
from protocol.messages import ModelFeatures, SpeedPresetInfo

from .auto_rule import Choice, SearchPoint, choose
from .previews import StepPreview
from .request import GenerationRequest, GenerationResult
from .sweep import shifted

StepCallback = Callable[[StepPreview], None]
OneJob = Callable[[GenerationRequest, StepCallback | None, threading.Event | None], GenerationResult]

SEARCH_SHARE = 0.5
"""The search's budget as a share of the final render's cost (UNet evaluations × pixels)."""
MIN_SEARCH_STEPS = 4
"""Fewer steps than this leave a picture too unfinished to score (without a few-step preset)."""
STEP_SHARE = 4
"""Without a speed preset the search runs a quarter of the job's steps (at least ``MIN_SEARCH_STEPS``)."""
DEFAULT_SEARCH_CELLS = 16
"""The search's cells (baseline included) when no server limit says otherwise: the sweep limit."""

STYLE_LEVELS = {3: (0.5, 1.0, 1.5), 2: (0.6, 1.2), 1: (1.0,)}
CONTENT_LEVELS = {3: (0.0, 0.5, 1.0), 2: (0.25, 0.75)}
GRIDS = ((3, 3, 4), (3, 2, 4), (3, 3, 2), (3, 2, 2), (2, 2, 4), (2, 2, 2), (3, 1, 2), (2, 1, 2))
GRIDS += ((3, 1, 0), (2, 1, 0), (1, 1, 0))
"""(style levels, content levels, fine points), most thorough first: the first that fits is planned."""


@dataclass(frozen=True)
class SearchContext:
    """What the server offers that shapes a search: its native side, its few-step presets, its cell
    limit (from the features it announces, so that the server and the engine plan alike)."""

    native_side: int
    speed_presets: tuple[SpeedPresetInfo, ...] = ()
    max_cells: int = DEFAULT_SEARCH_CELLS

    @classmethod
    def of(cls, features: ModelFeatures, max_cells: int = DEFAULT_SEARCH_CELLS) -> SearchContext:
        return cls(features.native_side or 1024, tuple(features.speed_presets), max_cells)


@dataclass(frozen=True)
class SearchPlan:
    """The search's cells before it runs, and the request each runs as (its size, steps, sampler)."""

    template: GenerationRequest
    """The job as a search cell runs it: reduced size, few steps, no auto, progress-only steps."""
    coarse: list[SearchPoint]
    """The baseline first, then the grid row by row."""
    fine: int
    """Halfway neighbours of the coarse winner the budget leaves room for."""
    style_step: float
    content_step: float
    cost: float
    """The planned search's cost as a share of the final render's."""

    @property
    def cells(self) -> int:
        return len(self.coarse) + self.fine

    @property
    def total_steps(self) -> int:
        return self.cells * self.template.effective_steps


@dataclass
class AutoOutcome:
    """How the search went: every point with its scores, the chosen one and why."""

    points: list[SearchPoint]
    choice: Choice
    width: int
    height: int
    steps: int
    rule: Auto

    @property
    def chosen(self) -> SearchPoint:
        return self.points[self.choice.index]


def unet_cost(request: GenerationRequest) -> float:
    """UNet evaluations × pixels: what a step-bound job costs, up to a constant (CFG doubles a step)."""
    passes = 2 if request.guidance_scale > 1.0 else 1
    return request.effective_steps * passes * request.width * request.height


def search_size(request: GenerationRequest, native_side: int) -> tuple[int, int]:
    """Half the job's sides, but no shorter a long side than half the model's native one (a smaller
    picture is not one the model can make); multiples of 8."""
    longest = max(request.width, request.height)
    target = min(longest, max(longest // 2, native_side // 2))
    scale = target / longest
    return (max(8, int(request.width * scale) // 8 * 8), max(8, int(request.height * scale) // 8 * 8))


def speed_settings(
    request: GenerationRequest, context: SearchContext, presets: Sequence[BlockPreset]
) -> dict:
    """The few-step preset a search cell runs with: the job's own if it uses one, else the cheapest
    the server offers (one with CFG where ``precise`` is searched: it works through the negative
    branch), else a quarter of the job's steps."""
    offered = list(context.speed_presets)
    if BlockPreset.PRECISE in presets:
        offered = [p for p in offered if p.guidance_scale > 1.0]
    in_use = {name for name, _ in request.loras}
    if any(p.lora in in_use for p in offered) or not offered:
        steps = max(MIN_SEARCH_STEPS, math.ceil(request.steps / STEP_SHARE))
        return {"steps": min(request.steps, steps)}
    preset = min(offered, key=lambda p: p.steps * (2 if p.guidance_scale > 1.0 else 1))
    return {
        "steps": preset.steps,
        "sampler": preset.sampler,
        "guidance_scale": preset.guidance_scale,
        "loras": (*request.loras, (preset.lora, preset.lora_weight)),
    }


def searched_presets(request: GenerationRequest) -> tuple[BlockPreset, ...]:
    """The job's own preset, and with ``auto.presets`` ``precise`` (or ``style`` for a precise job)."""
    assert request.auto is not None
    if not request.auto.presets:
        return (request.preset,)
    other = BlockPreset.STYLE if request.preset is BlockPreset.PRECISE else BlockPreset.PRECISE
    return (request.preset, other)


def plan_search(request: GenerationRequest, context: SearchContext) -> SearchPlan:
    """The most thorough grid within the budget and the cell limit (the smallest grid otherwise)."""
    presets = searched_presets(request)
    width, height = search_size(request, context.native_side)
    template = replace(
        request,
        auto=None,
        width=width,
        height=height,
        batch=1,
        refine=None,
        step_pictures=False,
        **speed_settings(request, context, presets),
    )
    final = replace(request, auto=None, batch=1, refine=None)
    cell_cost = unet_cost(template) / unet_cost(final)
    affordable = int(SEARCH_SHARE / cell_cost) if cell_cost > 0 else context.max_cells
    allowed = min(affordable, context.max_cells) - 1  # the baseline always runs
    subtracts = bool(request.content_text.strip())
    grids = [g for g in GRIDS if subtracts or g[1] == 1]
    fits = [g for g in grids if g[0] * g[1] * len(presets) + g[2] <= allowed]
    styles, contents, fine = fits[0] if fits else grids[-1]
    if styles * contents * len(presets) + fine > context.max_cells - 1:  # even the smallest: never over
        presets = presets[:1]
    style_levels = STYLE_LEVELS[styles]
    content_levels = CONTENT_LEVELS.get(contents, (request.content_scale,))
    baseline = SearchPoint(0.0, request.content_scale, BlockPreset.STYLE, SearchStage.BASELINE)
    grid = [
        SearchPoint(style, content, preset, SearchStage.COARSE)
        for preset in presets
        for style in style_levels
        for content in content_levels
    ]
    return SearchPlan(
        template,
        [baseline, *grid],
        fine,
        spacing(style_levels, 0.5),
        spacing(content_levels, 0.5) if len(content_levels) > 1 else 0.0,
        cell_cost * (1 + len(grid) + fine),
    )


def spacing(levels: Sequence[float], alone: float) -> float:
    return levels[1] - levels[0] if len(levels) > 1 else alone


def fine_points(plan: SearchPlan, winner: SearchPoint, searched: Sequence[SearchPoint]) -> list[SearchPoint]:
    """The winner's halfway neighbours not yet searched: a stronger and a weaker style first, then
    more and less content subtraction; within the wire's 0..2."""
    half_style, half_content = plan.style_step / 2, plan.content_step / 2
    offsets = [(half_style, 0.0), (-half_style, 0.0)]
    if half_content:
        offsets += [(0.0, half_content), (0.0, -half_content)]
    seen = {(p.style_scale, p.content_scale, p.preset) for p in searched}
    found = []
    for d_style, d_content in offsets:
        style = round(winner.style_scale + d_style, 4)
        content = round(winner.content_scale + d_content, 4)
        key = (style, content, winner.preset)
        if 0.0 < style <= 2.0 and 0.0 <= content <= 2.0 and key not in seen:
            seen.add(key)
            found.append(SearchPoint(style, content, winner.preset, SearchStage.FINE))
    return found[: plan.fine]


def planned(request: GenerationRequest, context: SearchContext) -> GenerationRequest:
    """``request`` with its search planned in ``context``: its ``total_steps`` then count the search's
    cells (a fine neighbour off the scale's range is skipped: the last steps may come sooner)."""
    return replace(request, search_context=context, search_steps=plan_search(request, context).total_steps)


def run_auto(
    request: GenerationRequest,
    generate_one: OneJob,
    on_step: StepCallback | None,
    cancel: threading.Event | None,
    context: SearchContext,
    render: OneJob,
) -> GenerationResult:
    """Search (cells through ``generate_one``), choose, render (through ``render``: a canvas job
    refines); one job to the client, its steps counted across all cells."""
    request.validate()
    plan = plan_search(request, context)
    request = replace(request, search_context=context, search_steps=plan.total_steps)
    per_cell = plan.template.effective_steps
    final = replace(request, auto=None)
    total = request.total_steps
    points: list[SearchPoint] = []

    def run(batch: list[SearchPoint]) -> None:
        for point in batch:
            cell = replace(
                plan.template,
                style_scale=point.style_scale,
                content_scale=point.content_scale,
                preset=point.preset,
            )
            result = generate_one(cell, shifted(on_step, len(points) * per_cell, total), cancel)
            points.append(replace(point, scores=result.scores[0]))

    run(plan.coarse)
    coarse = choose(points, request.auto)  # type: ignore[arg-type]
    run(fine_points(plan, points[coarse.index], points))
    choice = choose(points, request.auto)  # type: ignore[arg-type]
    chosen = points[choice.index]
    final = replace(
        final, style_scale=chosen.style_scale, content_scale=chosen.content_scale, preset=chosen.preset
    )
    result = render(final, shifted(on_step, plan.total_steps, total), cancel)
    result.auto = AutoOutcome(
        points, choice, plan.template.width, plan.template.height, per_cell, request.auto
    )  # type: ignore[arg-type]
    return result
