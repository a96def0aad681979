"""Auto strength's selection rule, as a pure function of scored points: explicit, shown, testable.

The rule (InstantStyle's open problem, made a decision): among the searched settings, the strongest
style score whose content leakage stays within ``leakage_margin`` of a no-style picture's (the same
prompt and seed with style scale 0) and whose prompt alignment stays within ``prompt_margin`` of it.
A score that cannot be measured (no content description; an image encoder without a text space)
does not constrain. When no setting passes, the one that misses the margins by least wins and the
reason says so: the artist still gets a picture and knows it is a compromise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from protocol.enums import BlockPreset, SearchStage
from protocol.generate import Auto

from .scores import ImageScores


@dataclass(frozen=True)
class SearchPoint:
    """One setting of the search, with its picture's scores once it has run."""

    style_scale: float
    content_scale: float
    preset: BlockPreset
    stage: SearchStage
    scores: ImageScores | None = None

    def describe(self) -> str:
        """ "style 1.25, content 0.50 (precise)"."""
        preset = "" if self.preset is BlockPreset.STYLE else f" ({self.preset.value})"
        return f"style {self.style_scale:.2f}, content {self.content_scale:.2f}{preset}"


@dataclass(frozen=True)
class Choice:
    index: int
    """Index of the chosen point in the list given to ``choose``."""
    passed: bool
    """Whether it kept within both margins (false: the closest miss)."""
    reason: str


def excess(point: ImageScores, baseline: ImageScores, rule: Auto) -> tuple[float, float]:
    """How far a point's leakage and prompt alignment fall outside the margins (0: within)."""
    leakage = prompt = 0.0
    if point.content is not None and baseline.content is not None:
        leakage = max(0.0, point.content - (baseline.content + rule.leakage_margin))
    if point.prompt is not None and baseline.prompt is not None:
        prompt = max(0.0, (baseline.prompt - rule.prompt_margin) - point.prompt)
    return leakage, prompt


def rank(point: SearchPoint, index: int) -> tuple:
    """Strongest style first; ties: less leakage, better prompt, the weaker setting, the earlier."""
    scores = point.scores
    assert scores is not None
    leakage = scores.content if scores.content is not None else 0.0
    prompt = scores.prompt if scores.prompt is not None else 0.0
    return (-scores.style, leakage, -prompt, point.style_scale, point.content_scale, index)


def choose(points: Sequence[SearchPoint], rule: Auto) -> Choice:
    """The rule above over ``points``: exactly one baseline (style scale 0) and at least one other,
    every one scored."""
    baselines = [p for p in points if p.stage is SearchStage.BASELINE]
    candidates = [(i, p) for i, p in enumerate(points) if p.stage is not SearchStage.BASELINE]
    if len(baselines) != 1 or not candidates or any(p.scores is None for p in points):
        raise ValueError("auto strength needs one scored baseline and at least one scored setting")
    baseline = baselines[0].scores
    assert baseline is not None
    passing = [(i, p) for i, p in candidates if excess(p.scores, baseline, rule) == (0.0, 0.0)]  # type: ignore[arg-type]
    if passing:
        index, point = min(passing, key=lambda item: rank(item[1], item[0]))
        return Choice(
            index, True, f"{point.describe()}: the strongest style {measures(point, baseline, rule)}"
        )

    def miss(item: tuple[int, SearchPoint]) -> tuple:
        index, point = item
        return (max(excess(point.scores, baseline, rule)), rank(point, index))  # type: ignore[arg-type]

    index, point = min(candidates, key=miss)
    return Choice(
        index,
        False,
        f"{point.describe()}: no setting kept within the margins, this one misses them least "
        f"{measures(point, baseline, rule)}",
    )


def measures(point: SearchPoint, baseline: ImageScores, rule: Auto) -> str:
    """What the chosen point's scores were against the baseline's, in one parenthesis."""
    scores = point.scores
    assert scores is not None
    parts = [f"{scores.style_metric.value} style {scores.style:.3f}"]
    if scores.content is not None and baseline.content is not None:
        parts.append(
            f"leakage {scores.content - baseline.content:+.3f} of the no-style picture's "
            f"(margin {rule.leakage_margin:g})"
        )
    else:
        parts.append("leakage not measured (no content description)")
    if scores.prompt is not None and baseline.prompt is not None:
        parts.append(f"prompt {scores.prompt - baseline.prompt:+.3f} (margin {rule.prompt_margin:g})")
    else:
        parts.append("prompt not measured (the image encoder has no text space)")
    return "(" + "; ".join(parts) + ")"
