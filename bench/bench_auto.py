"""Auto strength's cost against one job of the same size, on the tiny model (CPU), and the planned
cost of real SDXL searches (computed from the plan: UNet evaluations × pixels, not timed).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_auto.py [--size 256] [--steps 30] [--repeats 3]

The auto job searches (its plan's cells, at half the side and a quarter of the steps without a
speed preset) and renders; the figure is the median auto job over the median plain job with the
chosen settings (goal: at most 1.5), with the search's share of it.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image

from backend.engine.auto_search import SearchContext, plan_search
from backend.engine.engine import InstantStyleEngine
from backend.engine.request import GenerationRequest, StyleReference
from backend.tiny.layouts import ensure_tiny_model
from protocol import Auto, SpeedPresetInfo
from protocol.enums import Sampler

LIGHTNING = SpeedPresetInfo("lightning-4", "Lightning", "lightning", 1.0, Sampler.EULER_TRAILING, 4, 1.0)
HYPER = SpeedPresetInfo("hyper-8-cfg", "Hyper", "hyper", 1.0, Sampler.DDIM_TRAILING, 8, 5.0)


def planned_sdxl() -> None:
    """What the plan costs on real SDXL jobs (1024², 30 steps, CFG 5), by what the server offers."""
    request = GenerationRequest(
        "a lighthouse", [StyleReference(Image.new("RGB", (8, 8)))], content_text="a cat", auto=Auto()
    )
    print("\nplanned SDXL searches (1024x1024 job, 30 steps, CFG 5; computed, not timed):")
    for label, context in (
        ("no speed preset", SearchContext(1024)),
        ("hyper-8-cfg", SearchContext(1024, (HYPER,))),
        ("lightning-4", SearchContext(1024, (LIGHTNING,))),
    ):
        plan = plan_search(request, context)
        template = plan.template
        print(
            f"  {label:16}: {plan.cells:2} cells at {template.width}x{template.height}, "
            f"{template.steps} steps: search = {plan.cost:.3f} job, with the render {1 + plan.cost:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    engine = InstantStyleEngine.load(ensure_tiny_model().spec(), device="cpu")
    style = Image.open(Path(__file__).resolve().parents[1] / "examples" / "style.png").convert("RGB")
    request = GenerationRequest(
        prompt="a lighthouse",
        style_images=[StyleReference(style)],
        content_text="stripes",
        width=args.size,
        height=args.size,
        steps=args.steps,
        auto=Auto(),
    )
    context = SearchContext(args.size)  # a job at the model's native side, as a 1024² SDXL job: half the side
    request = dataclasses.replace(request, search_context=context)
    chosen = engine.generate(request).auto.chosen  # warm-up, and the setting the plain job renders
    plain = dataclasses.replace(
        request, auto=None, style_scale=chosen.style_scale, content_scale=chosen.content_scale
    )
    autos, plains = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        engine.generate(request)
        autos.append(time.perf_counter() - started)
        started = time.perf_counter()
        engine.generate(plain)
        plains.append(time.perf_counter() - started)
    auto, single = statistics.median(autos), statistics.median(plains)
    plan = plan_search(request, context)
    template = plan.template
    print(f"tiny model, {args.size}x{args.size}, {args.steps} steps, CPU, median of {args.repeats}")
    print(f"search: {plan.cells} cells at {template.width}x{template.height}, {template.steps} steps")
    print(f"one plain job          : {single * 1000:9.1f} ms")
    print(f"one auto job           : {auto * 1000:9.1f} ms")
    print(f"auto / plain           : {auto / single:9.3f}  (goal <= 1.5; planned {1 + plan.cost:.3f})")
    planned_sdxl()


if __name__ == "__main__":
    main()
