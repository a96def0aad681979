"""A job as the artist sees it: where its result goes, what it was sent, its state, its pictures.

Plain data (Qt-free and Krita-free), shared by the session that runs jobs, the canvas that reads their
inputs and writes their results, and the docker that lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from .deps import protocol


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.CANCELLED, JobState.FAILED)


@dataclass(frozen=True)
class Image:
    """Raw 8-bit pixels; ``channels`` 1 (gray), 3 (RGB) or 4 (RGBA)."""

    width: int
    height: int
    channels: int
    data: bytes

    @property
    def pixel_format(self) -> protocol.PixelFormat:
        return {1: protocol.PixelFormat.GRAY8, 3: protocol.PixelFormat.RGB8, 4: protocol.PixelFormat.RGBA8}[
            self.channels
        ]

    @classmethod
    def from_frame(cls, frame: protocol.PixelFrame) -> Image:
        return cls(frame.width, frame.height, frame.format.channels, frame.payload)


@dataclass(frozen=True)
class Target:
    """Where the result goes: an area of a document, above a layer."""

    x: int
    y: int
    width: int
    height: int
    document_id: object = None
    above_layer: str = ""
    """uniqueId of the layer the result goes above (empty: top)."""


@dataclass(frozen=True)
class RegionInput:
    """A region's mask (gray, the target's size) and its references."""

    name: str
    mask: Image
    styles: list[tuple[Image, float]]


@dataclass(frozen=True)
class ResultPart:
    """A rectangle of result ``index``, as it arrives (a canvas-sized result comes in tiles)."""

    index: int
    x: int
    y: int
    image: Image


@dataclass(frozen=True)
class JobInputs:
    styles: list[tuple[Image, float]]
    init_image: Image | None = None
    mask: Image | None = None
    regions: list[RegionInput] = field(default_factory=list)


@dataclass
class Job:
    job_id: int
    prompt: str
    seed: int
    target: Target
    width: int
    height: int
    state: JobState = JobState.QUEUED
    position: int = 0
    step: int = 0
    total: int = 0
    eta_seconds: float = 0.0
    tile: int = 0
    tiles: int = 0
    """A step of a canvas refined at its own size runs in tiles: ``tile`` of ``tiles`` done in the
    step after ``step`` (0: no tiles)."""
    preview: Image | None = None
    preview_step: int = 0
    """The step ``preview`` shows."""
    result: protocol.Result | None = None
    images: list[Image] = field(default_factory=list)
    assembling: dict[int, protocol.ResultImage] = field(default_factory=dict)
    """Results arriving in tiles (a canvas at its own resolution), by image index."""
    message: str = ""
    is_test_model: bool = False
    live: bool = False
    """A live job: its result goes to the live layer, not to the history (``live.py``)."""
    note: str = ""
    """What its layers' names add after the seed: a point of a trade-off map's settings."""
    auto: bool = False
    """Sent as "Find strength" (``generate.auto``): its result says which setting it chose."""

    @property
    def label(self) -> str:
        return self.prompt.strip().replace("\n", " ")[:40] or "untitled"

    @property
    def layer_names(self) -> list[str]:
        suffix = " [TEST MODEL]" if self.is_test_model else ""
        if self.result is not None and self.result.cells:
            return [
                f"InstantStyle: {self.label} ({describe_cell(cell)}){suffix}" for cell in self.result.cells
            ]
        seeds = self.result.seeds if self.result else [self.seed]
        search = self.search
        note = f" {describe_point(search.points[search.chosen])} (auto)" if search else self.note_text
        return [f"InstantStyle: {self.label} (seed {seed}){note}{suffix}" for seed in seeds]

    @property
    def note_text(self) -> str:
        return f" {self.note}" if self.note else ""

    @property
    def search(self) -> protocol.AutoSearch | None:
        """A "Find strength" job's search (every setting tried, the chosen one), once it finished."""
        return self.result.auto if self.result is not None else None

    @property
    def is_sweep(self) -> bool:
        return self.result is not None and bool(self.result.cells)

    @property
    def progress(self) -> tuple[int, int, str]:
        """The progress bar's value, maximum and text: "step 3 / 30", or "step 6 / 25 · tile 7 / 24"
        while a tiled step runs (the bar moves with each tile)."""
        if self.tiles:
            step = min(self.step + 1, self.total)
            text = f"step {step} / {self.total} · tile {self.tile} / {self.tiles}"
            return self.step * self.tiles + self.tile, self.total * self.tiles, text
        lead = "finding strength · " if self.auto else ""  # the search's steps and the render's
        return self.step, self.total, f"{lead}step {self.step} / {self.total}"

    def scores(self, index: int) -> protocol.Scores | None:
        scores = self.result.scores if self.result is not None else []
        return scores[index] if index < len(scores) else None


def describe_point(point: protocol.AutoPoint | protocol.SweepCell) -> str:
    """A searched setting as a layer name ends: ``style 1.25 content 0.5`` (and its preset unless it
    is the plain style one: ``style 1.25 content 0.5 precise``)."""
    preset = "" if point.preset is protocol.BlockPreset.STYLE else f" {point.preset.value}"
    return f"style {point.style_scale:g} content {point.content_scale:g}{preset}"


def describe_cell(cell: protocol.SweepCell) -> str:
    """A sweep cell's settings, as its layer is named: ``style 0.6, content 0.5, precise, seed 7``."""
    return (
        f"style {cell.style_scale:g}, content {cell.content_scale:g}, {cell.preset.value}, seed {cell.seed}"
    )


SCORE_NAMES = (("style", "style"), ("content", "leakage"), ("prompt", "prompt"))
"""Each score's field and the word an artist reads: the content score is how much content leaked."""


def describe_scores(scores: protocol.Scores | None, lines: bool = False) -> str:
    """``style 0.81 · leakage 0.10 · prompt 0.30`` (``lines``: one score per line, for a thumbnail)."""
    if scores is None:
        return ""
    parts = [(word, getattr(scores, name)) for name, word in SCORE_NAMES]
    words = [f"{word} {value:.2f}" for word, value in parts if value is not None]
    return ("\n" if lines else " · ").join(words)
