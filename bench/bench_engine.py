"""Engine overhead against calling the diffusers pipeline directly, and preview cost.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_engine.py [--size 256] [--steps 30] [--repeats 5]

Both sides run the same inputs in one process, alternately, so the figure is a
ratio from one run: engine (block scales + cached style embedding + per-step
preview callback + uint8 conversion) / raw ``pipe(**kwargs)``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from backend.engine.engine import InstantStyleEngine
from backend.engine.previews import latents_to_rgb
from backend.engine.request import GenerationRequest, StyleReference
from backend.tiny.layouts import ensure_tiny_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from PIL import Image

    engine = InstantStyleEngine.load(ensure_tiny_model().spec(), device="cpu")
    style = Image.open(Path(__file__).resolve().parents[1] / "examples" / "style.png").convert("RGB")
    request = GenerationRequest(
        prompt="a lighthouse",
        style_images=[StyleReference(style)],
        content_text="stripes",
        width=args.size,
        height=args.size,
        steps=args.steps,
    )
    previews: list[int] = []
    engine.generate(request, on_step=lambda p: previews.append(p.step))  # warm-up, fills the caches

    raw_times, engine_times = [], []
    for _ in range(args.repeats):
        pipe, kwargs = engine.prepare(request)
        start = time.perf_counter()
        with torch.inference_mode():
            pipe(**{**kwargs, "output_type": "np"})  # the pipeline decodes itself, as diffusers users run it
        raw_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        engine.generate(request, on_step=lambda p: previews.append(p.step))
        engine_times.append(time.perf_counter() - start)
    raw, eng = statistics.median(raw_times), statistics.median(engine_times)

    latents = torch.randn(1, 4, 128, 128)
    for _ in range(20):
        latents_to_rgb(latents)
    preview_times = []
    for _ in range(200):
        start = time.perf_counter()
        latents_to_rgb(latents)
        preview_times.append(time.perf_counter() - start)

    print(f"tiny model, {args.size}x{args.size}, {args.steps} steps, CPU, median of {args.repeats}")
    print(f"raw diffusers pipeline : {raw * 1000:8.1f} ms")
    print(f"InstantStyleEngine     : {eng * 1000:8.1f} ms  (previews on every step)")
    print(f"engine overhead        : {(eng / raw - 1) * 100:+8.2f} %")
    median, p95 = statistics.median(preview_times) * 1000, sorted(preview_times)[189] * 1000
    print(f"preview 1024x1024 (128x128 latents -> RGB): median {median:.3f} ms, p95 {p95:.3f} ms")


if __name__ == "__main__":
    main()
