"""A strength sweep against the same cells sent as single jobs, on the tiny model (CPU).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_sweep.py [--size 256] [--steps 8] [--repeats 3]

The grid is style strength 0.4/0.6/0.8/1.0 x content scale 0/0.5/1.0 (12 cells). Each side starts
with empty caches (the style image, content text and prompt are encoded once in either: the single
jobs reuse the caches filled by the first one, as a server would) and both run alternately; the
figure is the ratio of the medians (goal: at most 1.05).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image

from backend.engine.engine import InstantStyleEngine
from backend.engine.request import GenerationRequest, StyleReference
from backend.tiny.layouts import ensure_tiny_model
from protocol import SweepAxis


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
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
        sweep=[(SweepAxis.STYLE_SCALE, (0.4, 0.6, 0.8, 1.0)), (SweepAxis.CONTENT_SCALE, (0.0, 0.5, 1.0))],
    )
    cells = request.cells()
    engine.generate(request.for_cell(cells[0]))  # warm-up

    def cold() -> None:
        engine.encoder.image_cache.clear()
        engine.encoder.text_cache.clear()
        engine.prompts.clear()

    sweeps, singles = [], []
    for _ in range(args.repeats):
        cold()
        started = time.perf_counter()
        engine.generate(request)
        sweeps.append(time.perf_counter() - started)
        cold()
        started = time.perf_counter()
        for cell in cells:
            engine.generate(request.for_cell(cell))
        singles.append(time.perf_counter() - started)
    sweep, single = statistics.median(sweeps), statistics.median(singles)
    shape = f"{args.size}x{args.size}, {args.steps} steps, {len(cells)} cells"
    print(f"tiny model, {shape}, CPU, median of {args.repeats}")
    print(f"one sweep job          : {sweep * 1000:9.1f} ms")
    print(f"{len(cells)} single jobs         : {single * 1000:9.1f} ms")
    print(f"sweep / single jobs    : {sweep / single:9.3f}  (goal <= 1.05)")


if __name__ == "__main__":
    main()
