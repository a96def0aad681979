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

from protocol.enums import BlockPreset, Mode, SearchStage
from protocol.generate import Auto
from protocol.limits import MAX_LORAS
from protocol.messages import ModelFeatures, SpeedPresetInfo

from .auto_rule import Choice, SearchPoint, choose
from .previews import StepPreview
from .refine import first_stage_size
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

STYLE_LEVELS = {3: (0.5, 1.0, 1.5), 2: (0.6, 1.2)}
CONTENT_LEVELS = {3: (0.0, 0.5, 1.0), 2: (0.25, 0.75)}
GRIDS = ((3, 3, 4), (3, 2, 4), (3, 3, 2), (3, 2, 2), (2, 2, 4), (2, 2, 2), (3, 1, 2), (2, 1, 2))
GRIDS += ((3, 1, 0), (2, 1, 0))
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

    @classmethod
    def limit_only(cls, max_cells: int) -> SearchContext:
        """The server's cell limit, before the model (and with it the rest) is known."""
        return cls(0, (), max_cells)


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


def job_size(request: GenerationRequest, native_side: int) -> tuple[int, int]:
    """The size the job's first picture is made at: a canvas job's first stage (``refine``)."""
    if request.refine is None:
        return request.width, request.height
    return first_stage_size(request.width, request.height, native_side)


def search_size(request: GenerationRequest, native_side: int) -> tuple[int, int]:
    """Half the job's sides (a canvas job's first stage's), but no shorter a long side than half the
    model's native one (a smaller picture is not one the model can make); multiples of 8."""
    width, height = job_size(request, native_side)
    longest = max(width, height)
    target = min(longest, max(longest // 2, native_side // 2))
    scale = target / longest
    return (max(8, int(width * scale) // 8 * 8), max(8, int(height * scale) // 8 * 8))


def speed_settings(
    request: GenerationRequest, context: SearchContext, presets: Sequence[BlockPreset]
) -> dict[str, object]:
    """What a search cell changes to run fast: nothing where the job uses a speed preset already (its
    steps are few); else the cheapest preset the server offers (one with CFG where ``precise`` is
    searched: it works through the negative branch; not where the job has every LoRA slot taken);
    else a quarter of the job's steps (at least ``MIN_SEARCH_STEPS``, never more than the job's).
    An img2img cell keeps at least one step to run."""
    floor = math.ceil(1 / request.strength) if request.mode in (Mode.IMG2IMG, Mode.INPAINT) else 1
    in_use = {name for name, _ in request.loras}
    if any(p.lora in in_use for p in context.speed_presets):
        return {}
    offered = [
        p for p in context.speed_presets if p.guidance_scale > 1.0 or BlockPreset.PRECISE not in presets
    ]
    if offered and len(request.loras) < MAX_LORAS:
        preset = min(offered, key=lambda p: p.steps * (2 if p.guidance_scale > 1.0 else 1))
        return {
            "steps": max(preset.steps, floor),
            "sampler": preset.sampler,
            "guidance_scale": preset.guidance_scale,
            "loras": (*request.loras, (preset.lora, preset.lora_weight)),
        }
    steps = min(request.steps, max(MIN_SEARCH_STEPS, math.ceil(request.steps / STEP_SHARE)))
    return {"steps": max(steps, min(floor, request.steps))}


def searched_presets(request: GenerationRequest) -> tuple[BlockPreset, ...]:
    """The job's own preset, and with ``auto.presets`` ``precise`` (or ``style`` for a precise job);
    not ``precise`` for a job without guidance (its render could not run it)."""
    assert request.auto is not None
    if not request.auto.presets or request.guidance_scale <= 1.0:
        return (request.preset,)
    other = BlockPreset.STYLE if request.preset is BlockPreset.PRECISE else BlockPreset.PRECISE
    return (request.preset, other)


def plan_search(request: GenerationRequest, context: SearchContext) -> SearchPlan:
    """The most thorough grid within the budget and the cell limit (the smallest, baseline and two
    style scales, otherwise: a search of one setting would be no search)."""
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
        **speed_settings(request, context, presets),  # type: ignore[arg-type]
    )
    final_width, final_height = job_size(request, context.native_side)
    final = replace(request, auto=None, batch=1, refine=None, width=final_width, height=final_height)
    cell_cost = unet_cost(template) / unet_cost(final)  # a canvas's refining stage: not counted
    affordable = int(SEARCH_SHARE / cell_cost) if cell_cost > 0 else context.max_cells
    allowed = min(affordable, context.max_cells) - 1  # the baseline always runs
    subtracts = bool(request.content_text.strip())
    grids = [g for g in GRIDS if subtracts or g[1] == 1]
    fits = [g for g in grids if g[0] * g[1] * len(presets) + g[2] <= allowed]
    styles, contents, fine = fits[0] if fits else grids[-1]
    if styles * contents * len(presets) + fine > context.max_cells - 1:  # the smallest: within the limit
        presets = presets[:1]
    style_levels = STYLE_LEVELS[styles]
    content_levels = CONTENT_LEVELS.get(contents, (request.content_scale,))
    # The baseline has no style, so its content scale changes no pixel; the largest one searched
    # makes a content tower that loads on demand (ViT-H, SD1.5) load before the first score.
    baseline = SearchPoint(0.0, max(content_levels), BlockPreset.STYLE, SearchStage.BASELINE)
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
    """``plan.fine`` new points around the winner: halfway to a stronger and a weaker style first,
    then more and less content subtraction, then the diagonals and a whole step further; within the
    wire's 0..2 (so that the steps announced at the start all run)."""
    half_style, half_content = plan.style_step / 2, plan.content_step / 2
    offsets = [(half_style, 0.0), (-half_style, 0.0)]
    if half_content:
        offsets += [(0.0, half_content), (0.0, -half_content)]
        offsets += [(ds, dc) for ds in (half_style, -half_style) for dc in (half_content, -half_content)]
    offsets += [(2 * half_style, 0.0), (-2 * half_style, 0.0), (3 * half_style, 0.0), (-3 * half_style, 0.0)]
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


def with_plan(request: GenerationRequest, features: ModelFeatures | None) -> GenerationRequest:
    """An auto ``request`` planned with the loaded model's ``features`` and the cell limit its server
    set (``SearchContext.limit_only``, for a job sent before the model was ready); others as they are."""
    context = request.search_context
    if request.auto is None or features is None or (context is not None and context.native_side):  # type: ignore[attr-defined]
        return request
    cells = context.max_cells if isinstance(context, SearchContext) else DEFAULT_SEARCH_CELLS
    return planned(request, SearchContext.of(features, cells))


def planned(request: GenerationRequest, context: SearchContext) -> GenerationRequest:
    """``request`` with its search planned in ``context``: its ``total_steps`` then count the search's
    cells and the render."""
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
