"""The worker's job events as what goes on the wire: JSON messages and pixel frames."""

from __future__ import annotations

import numpy as np

from protocol import (
    AutoPoint,
    AutoSearch,
    Cancelled,
    Error,
    FrameKind,
    PixelFormat,
    Progress,
    Queued,
    Result,
    Scores,
    Started,
    SweepCell,
    encode_frame_header,
    encode_message,
)
from protocol.frames import HEADER, TILE_PLACE

from .inputs import rgba_bytes
from .outbox import OutboxItem, StepUpdate
from .worker import JobCancelledEvent, JobEvent, JobFinished, JobMoved, JobStarted, JobStep


def encode_event(job_id: int, event: JobEvent, max_bytes: int = 2**31) -> list[OutboxItem]:
    """``max_bytes``: the largest message the client takes (``limits.max_message_bytes``)."""
    if isinstance(event, JobMoved):
        return [encode_message(Queued(job_id, event.position))]
    if isinstance(event, JobStarted):
        return [encode_message(Started(job_id, event.seed, event.total_steps))]
    if isinstance(event, JobStep):
        preview = event.preview
        progress = Progress(
            job_id, preview.step, preview.total, round(event.eta_seconds, 3), preview.tile, preview.tiles
        )
        if preview.rgb is None:  # a tile's report, or a step the preview budget skipped: progress only
            return [StepUpdate(job_id, encode_message(progress), b"")]
        header = encode_frame_header(
            FrameKind.PREVIEW, job_id, preview.step, preview.width, preview.height, PixelFormat.RGB8
        )
        first = preview.step == 1
        return [StepUpdate(job_id, encode_message(progress), header + preview.rgb.tobytes(), kept=first)]
    if isinstance(event, JobFinished):
        result = event.result
        height, width = result.images[0].shape[:2]
        items: list[OutboxItem] = [
            encode_message(
                Result(
                    job_id,
                    len(result.images),
                    width,
                    height,
                    result.seeds,
                    result.model_label,
                    result.is_test_model,
                    round(result.seconds, 3),
                    [wire_scores(scores) for scores in result.scores],
                    [SweepCell(c.style_scale, c.content_scale, c.preset, c.seed) for c in result.cells],
                    wire_auto(result.auto),
                )
            )
        ]
        for index, image in enumerate(result.images):
            items.extend(result_frames(job_id, index, image, max_bytes))
        return items
    if isinstance(event, JobCancelledEvent):
        return [encode_message(Cancelled(job_id, event.last_step))]
    return [encode_message(Error(event.code, event.message, job_id))]


def wire_scores(scores: object) -> Scores:
    """An engine ``ImageScores`` for the wire: 4 decimals, inside -1..1 (float error can step over)."""

    def clean(value: float | None) -> float | None:
        return None if value is None else round(min(1.0, max(-1.0, value)), 4)

    return Scores(
        clean(scores.style),  # type: ignore[attr-defined,arg-type]
        clean(scores.content),  # type: ignore[attr-defined]
        clean(scores.prompt),  # type: ignore[attr-defined]
        scores.style_metric,  # type: ignore[attr-defined]
    )


def wire_auto(outcome: object | None) -> AutoSearch | None:
    """An engine ``AutoOutcome`` (every point searched, the choice) for the wire."""
    if outcome is None:
        return None
    rule = outcome.rule  # type: ignore[attr-defined]
    return AutoSearch(
        [
            AutoPoint(p.style_scale, p.content_scale, p.preset, wire_scores(p.scores), p.stage)
            for p in outcome.points  # type: ignore[attr-defined]
        ],
        outcome.choice.index,  # type: ignore[attr-defined]
        outcome.choice.passed,  # type: ignore[attr-defined]
        outcome.choice.reason[:4000],  # type: ignore[attr-defined]
        outcome.width,  # type: ignore[attr-defined]
        outcome.height,  # type: ignore[attr-defined]
        outcome.steps,  # type: ignore[attr-defined]
        rule.leakage_margin,
        rule.prompt_margin,
    )


def result_frames(job_id: int, index: int, image: np.ndarray, max_bytes: int) -> list[bytes]:
    """One image as RESULT frames: one frame when it fits a message of ``max_bytes``, else RESULT_TILE
    rectangles that each do (a canvas at its own resolution is many times one message)."""
    height, width = image.shape[:2]
    if HEADER.size + width * height * 4 <= max_bytes:
        header = encode_frame_header(FrameKind.RESULT, job_id, index, width, height, PixelFormat.RGBA8)
        return [header + rgba_bytes(image)]
    side = tile_side(max_bytes)
    frames = []
    for y in range(0, height, side):
        for x in range(0, width, side):
            part = image[y : y + side, x : x + side]
            rows, columns = part.shape[:2]
            header = encode_frame_header(
                FrameKind.RESULT_TILE, job_id, index, columns, rows, PixelFormat.RGBA8
            )
            frames.append(header + TILE_PLACE.pack(x, y) + rgba_bytes(np.ascontiguousarray(part)))
    return frames


def tile_side(max_bytes: int) -> int:
    """The largest square of RGBA pixels (a multiple of 64, at most 2048) one message carries."""
    room = (max_bytes - HEADER.size - TILE_PLACE.size) // 4
    side = min(2048, int(room**0.5) // 64 * 64)
    if side < 64:
        raise ValueError(f"messages of {max_bytes} bytes cannot carry a 64-px result tile")
    return side
