"""The trade-off map of a "Find strength" search, Qt-free: where each setting the server tried lands
in a plot of its style score (up) against its content leakage (right), its colour (prompt alignment),
the no-style baseline, the chosen one, the leakage the rule allowed, and which point a click hits.

The docker's painter (``tradeoff_view``) only draws what this computes, in widget pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

from .deps import protocol
from .jobs import describe_point, describe_scores

RGB = tuple[int, int, int]

COLOUR_STOPS: tuple[RGB, ...] = (
    (68, 1, 84),
    (59, 82, 139),
    (33, 145, 140),
    (94, 201, 98),
    (253, 231, 37),
)
"""Viridis (dark purple: least like the prompt, yellow: most), readable with colour blindness and
on Krita's dark and light themes."""
NO_SCORE: RGB = (150, 150, 150)
"""A point without a prompt score (the image encoder has no text space)."""
PADDING = (10, 15, 10, 15)
"""Left, top, right, bottom pixels around the plot area (the top and bottom hold the axes' words)."""
MIN_COLOUR_SPAN = 0.01
"""The least prompt likeness the colours run over (a search with a prompt margin of 0)."""
HIT_RADIUS = 9.0
"""How far from a point's centre a click still picks it, in pixels."""
SLACK = 0.08
"""Each axis reaches this share of its span beyond the outermost values: no point on the border."""
METRICS = {
    protocol.StyleMetric.CLIP: "CLIP image likeness (sees subject as much as style)",
    protocol.StyleMetric.CSD: "CSD style descriptors (style, not subject)",
}


def colour_at(fraction: float) -> RGB:
    """The colour scale at ``fraction`` (0..1, clamped), interpolated between its stops."""
    fraction = min(1.0, max(0.0, fraction)) * (len(COLOUR_STOPS) - 1)
    low = min(int(fraction), len(COLOUR_STOPS) - 2)
    t = fraction - low
    a, b = COLOUR_STOPS[low], COLOUR_STOPS[low + 1]
    return (
        round(a[0] + (b[0] - a[0]) * t),
        round(a[1] + (b[1] - a[1]) * t),
        round(a[2] + (b[2] - a[2]) * t),
    )


@dataclass(frozen=True)
class Axis:
    """One axis: what it shows and the values at its two ends."""

    name: str
    low: float
    high: float

    @classmethod
    def around(cls, name: str, values: list[float]) -> Axis:
        low, high = min(values), max(values)
        span = high - low
        if span < 1e-9:  # one value (or all alike): a small span around it
            span = max(abs(low) * 0.1, 0.05)
            return cls(name, low - span / 2, high + span / 2)
        return cls(name, low - span * SLACK, high + span * SLACK)

    def fraction(self, value: float) -> float:
        return (value - self.low) / (self.high - self.low)


@dataclass(frozen=True)
class MapPoint:
    """One searched setting where the map draws it."""

    index: int
    """Its index in ``AutoSearch.points``."""
    x: float
    y: float
    colour: RGB
    baseline: bool
    """The no-style picture the rule compares with (drawn as a square)."""
    chosen: bool
    within: bool
    """Within both margins of the baseline (the others are drawn faded)."""
    point: protocol.AutoPoint

    @property
    def label(self) -> str:
        """``style 1.25 content 0.5`` (the baseline: ``no style (baseline)``)."""
        return "no style (baseline)" if self.baseline else describe_point(self.point)

    @property
    def tip(self) -> str:
        """The tooltip: the setting, its scores, and what a click does."""
        said = [self.label + (" — chosen" if self.chosen else ""), describe_scores(self.point.scores)]
        if not self.within:
            said.append("outside the margins")
        return "\n".join([*said, "click: paint this setting at full size"])


def _within(point: protocol.AutoPoint, baseline: protocol.AutoPoint | None, search) -> bool:
    """The server's rule: leakage at most the baseline's plus its margin, prompt alignment at least
    the baseline's less its margin; a score that is not measured does not count."""
    if baseline is None or point.stage is protocol.SearchStage.BASELINE:
        return True
    scores, base = point.scores, baseline.scores
    leaks = (
        scores.content is not None
        and base.content is not None
        and scores.content > base.content + search.leakage_margin + 1e-9
    )
    drifts = (
        scores.prompt is not None
        and base.prompt is not None
        and scores.prompt < base.prompt - search.prompt_margin - 1e-9
    )
    return not leaks and not drifts


class TradeoffMap:
    """A search's points laid out in a ``width`` × ``height`` widget."""

    def __init__(self, search: protocol.AutoSearch, width: int, height: int) -> None:
        self.search = search
        self.width, self.height = width, height
        left, top, right, bottom = PADDING
        self.area = (left, top, max(1, width - left - right), max(1, height - top - bottom))
        points = search.points
        baseline = next((p for p in points if p.stage is protocol.SearchStage.BASELINE), None)
        self.leakage = all(p.scores.content is not None for p in points)
        """Whether the x axis is the leakage score (else, no content was described: the style setting)."""
        self.limit: float | None = None
        """The most leakage the rule allowed (the baseline's plus the margin), when measured."""
        if self.leakage and baseline is not None and baseline.scores.content is not None:
            self.limit = baseline.scores.content + search.leakage_margin
        xs = [self._x_value(p) for p in points]
        self.x_axis = Axis.around("leakage →" if self.leakage else "style setting →", xs)
        self.y_axis = Axis.around("style ↑", [p.scores.style for p in points])
        prompts = [p.scores.prompt for p in points if p.scores.prompt is not None]
        self.prompt_range: tuple[float, float] | None = None
        """The prompt likeness the colours run over: up to the best point's (yellow), from the worst's
        or, where they differ by less, the best's less the prompt margin (dark): differences far
        below the margin stay near one colour."""
        if prompts:
            span = max(max(prompts) - min(prompts), search.prompt_margin, MIN_COLOUR_SPAN)
            self.prompt_range = (max(prompts) - span, max(prompts))
        self.points = [
            MapPoint(
                index,
                *self.place(x, point.scores.style),
                self._colour(point.scores.prompt),
                point.stage is protocol.SearchStage.BASELINE,
                index == search.chosen,
                _within(point, baseline, search),
                point,
            )
            for index, (x, point) in enumerate(zip(xs, points, strict=True))
        ]

    @staticmethod
    def _x_value(point: protocol.AutoPoint) -> float:
        content = point.scores.content
        return content if content is not None else point.style_scale

    def place(self, x_value: float, y_value: float) -> tuple[float, float]:
        """Widget pixels of a value pair (y grows downwards on screen: more style is higher)."""
        left, top, width, height = self.area
        x = left + self.x_axis.fraction(x_value) * width
        y = top + (1.0 - self.y_axis.fraction(y_value)) * height
        return x, y

    def _colour(self, prompt: float | None) -> RGB:
        if prompt is None or self.prompt_range is None:
            return NO_SCORE
        low, high = self.prompt_range
        return colour_at((prompt - low) / (high - low))

    @property
    def limit_x(self) -> float | None:
        """Where the allowed leakage's line is drawn (None: not measured, or beyond every point)."""
        if self.limit is None or not self.x_axis.low <= self.limit <= self.x_axis.high:
            return None
        return self.place(self.limit, self.y_axis.low)[0]

    @property
    def chosen(self) -> MapPoint:
        return self.points[self.search.chosen]

    def hit(self, x: float, y: float, radius: float = HIT_RADIUS) -> int | None:
        """The index of the point nearest to a click at (``x``, ``y``) within ``radius``, else None
        (equally near: the chosen one, then the first)."""
        best: tuple[float, int, int] | None = None
        for point in self.points:
            distance = ((point.x - x) ** 2 + (point.y - y) ** 2) ** 0.5
            if distance <= radius:
                rank = (distance, 0 if point.chosen else 1, point.index)
                best = rank if best is None or rank < best else best
        return best[2] if best is not None else None

    # ------------------------------------------------------------------ words under the map

    @property
    def title(self) -> str:
        """``12 settings tried at 256×256, 8 steps`` (and when none kept the margins, that)."""
        s = self.search
        title = f"{len(s.points)} settings tried at {s.width}×{s.height}, {s.steps} steps"
        return title if s.passed else f"{title}; none kept within the margins"

    @property
    def legend(self) -> str:
        """What the colours and the style axis mean on this search."""
        if self.prompt_range is None:
            colours = "colour: no prompt score (the image encoder has no text space)"
        else:
            low, high = self.prompt_range
            colours = f"colour: prompt likeness, {high:.3f} yellow to {low:.3f} or less dark"
        metrics = {p.scores.style_metric for p in self.search.points}
        metric = " / ".join(METRICS[m] for m in protocol.StyleMetric if m in metrics)
        shapes = "square: no style; ring: chosen"
        if self.limit_x is not None:
            shapes += "; dashed line: most leakage allowed"
        elif self.limit is not None:
            shapes += "; every setting leaks less than the margin allows"
        across = "" if self.leakage else " No leakage score (no content text): across is the style setting."
        return f"style score: {metric}. {colours}. {shapes}.{across}"

    @property
    def reason(self) -> str:
        """The server's one line on why the chosen setting won (or which missed the margins least)."""
        return self.search.reason
