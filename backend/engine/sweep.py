"""A strength sweep: the cells of a grid run one after the other as single jobs.

The style, content and prompt encodings are cached after the first cell, so a sweep of N cells
costs what N single jobs cost (``bench/bench_sweep.py``); previews count steps across all cells.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable

from .previews import StepPreview
from .request import GenerationRequest, GenerationResult, SweepCell

StepCallback = Callable[[StepPreview], None]
OneJob = Callable[[GenerationRequest, StepCallback | None, threading.Event | None], GenerationResult]


def run_sweep(
    request: GenerationRequest,
    generate_one: OneJob,
    on_step: StepCallback | None,
    cancel: threading.Event | None,
) -> GenerationResult:
    """Every cell of ``request.sweep`` through ``generate_one``, as one result (one picture a cell)."""
    request.validate()
    cells = request.cells()
    per_cell = request.effective_steps
    total = per_cell * len(cells)
    parts = []
    for index, cell in enumerate(cells):
        parts.append(generate_one(request.for_cell(cell), shifted(on_step, index * per_cell, total), cancel))
    return join_cells(cells, parts)


def shifted(on_step: StepCallback | None, offset: int, total: int) -> StepCallback | None:
    """A part's steps (a sweep's cell, a refine's stage) as steps of the whole job."""
    if on_step is None:
        return None

    def forward(preview: StepPreview) -> None:
        on_step(dataclasses.replace(preview, step=offset + preview.step, total=total))

    return forward


def join_cells(cells: list[SweepCell], parts: list[GenerationResult]) -> GenerationResult:
    """The cells' single-job results as the sweep's one result (its time: the cells' together)."""
    return GenerationResult(
        images=[image for part in parts for image in part.images],
        seeds=[cell.seed for cell in cells],
        model_label=parts[0].model_label,
        is_test_model=parts[0].is_test_model,
        cells=cells,
        scores=[score for part in parts for score in part.scores],
        seconds=sum(part.seconds for part in parts),
    )
