"""The worker's job events as what goes on the wire: JSON messages and pixel frames."""

from __future__ import annotations

from protocol import (
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

from .inputs import rgba_bytes
from .outbox import OutboxItem, StepUpdate
from .worker import JobCancelledEvent, JobEvent, JobFinished, JobMoved, JobStarted, JobStep


def encode_event(job_id: int, event: JobEvent) -> list[OutboxItem]:
    if isinstance(event, JobMoved):
        return [encode_message(Queued(job_id, event.position))]
    if isinstance(event, JobStarted):
        return [encode_message(Started(job_id, event.seed, event.total_steps))]
    if isinstance(event, JobStep):
        preview = event.preview
        progress = Progress(job_id, preview.step, preview.total, round(event.eta_seconds, 3))
        if preview.rgb is None:  # the preview budget skipped this step: its progress only
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
                )
            )
        ]
        for index, image in enumerate(result.images):
            header = encode_frame_header(FrameKind.RESULT, job_id, index, width, height, PixelFormat.RGBA8)
            items.append(header + rgba_bytes(image))
        return items
    if isinstance(event, JobCancelledEvent):
        return [encode_message(Cancelled(job_id, event.last_step))]
    return [encode_message(Error(event.code, event.message, job_id))]


def wire_scores(scores: object) -> Scores:
    """An engine ``ImageScores`` for the wire: 4 decimals, inside -1..1 (float error can step over)."""

    def clean(value: float | None) -> float | None:
        return None if value is None else round(min(1.0, max(-1.0, value)), 4)

    return Scores(clean(scores.style), clean(scores.content), clean(scores.prompt))  # type: ignore[attr-defined,arg-type]
