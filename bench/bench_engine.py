"""Engine overhead against calling the diffusers pipeline directly, with each kind of preview.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_engine.py [--size 256] [--steps 30] [--repeats 5]

Each figure is a ratio from one run: the engine's job (block scales, cached style embedding, a
step callback, uint8 conversion, scores) against a raw ``pipe(**kwargs)`` of the same inputs, in one
process: each round times every setting right beside a raw run of its own (before it in even
rounds, after it in odd ones), and a setting's figure is the median of its time against its raw
time over the rounds, with the quartiles (this shared machine's speed drifts within seconds). Five settings:

- no step callback at all (the engine's own overhead, without previews);
- linear previews on every step (``--preview-vae none``);
- tiny-autoencoder previews on every step (``preview_share=None``);
- the preview budget on (the default: 2 % of the denoising time, first step and result always);
- the preview budget at 3 %, for comparison.

It also times a tiny-autoencoder preview decoded at the image's size against one at half its side
(latents scaled first), and a live job (4 steps at the live default of 768²) with and without step
pictures: what decides that live jobs send none.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from backend.engine.engine import InstantStyleEngine
from backend.engine.previews import tiny_vae_rgb
from backend.engine.request import GenerationRequest, StyleReference
from backend.tiny.layouts import ensure_tiny_model


@dataclasses.dataclass
class Variant:
    """One way of running the engine's job, timed against the same raw pipeline runs."""

    engine: InstantStyleEngine
    request: GenerationRequest
    times: list[float] = dataclasses.field(default_factory=list)
    pictures: int = 0
    """Steps that got a preview picture (last run)."""
    longest_gap: float = 0.0
    """Longest time from the job's start or a picture to the next picture (last run)."""

    callback: bool = True

    def run(self) -> None:
        moments = [time.perf_counter()]

        def on_step(preview) -> None:
            if preview.rgb is not None:
                moments.append(time.perf_counter())

        self.engine.generate(self.request, on_step=on_step if self.callback else None)
        self.times.append(time.perf_counter() - moments[0])
        self.pictures = len(moments) - 1
        self.longest_gap = max((b - a for a, b in itertools.pairwise(moments)), default=0.0)


def raw_pipeline(engine: InstantStyleEngine, request: GenerationRequest) -> float:
    pipe, kwargs = engine.prepare(request)
    start = time.perf_counter()
    with torch.inference_mode():
        pipe(**{**kwargs, "output_type": "np"})  # the pipeline decodes itself, as diffusers users run it
    return time.perf_counter() - start


def decode_ms(vae: torch.nn.Module, side: int, preview_side: int, repeats: int = 5) -> float:
    latents = torch.randn(1, 4, side // 8, side // 8)
    with torch.inference_mode():
        tiny_vae_rgb(vae, latents, (preview_side, preview_side))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            tiny_vae_rgb(vae, latents, (preview_side, preview_side))
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=12)
    args = parser.parse_args()

    from PIL import Image

    spec = ensure_tiny_model().spec()
    engine = InstantStyleEngine.load(spec, device="cpu")
    linear = InstantStyleEngine.load(dataclasses.replace(spec, preview_vae="none"), device="cpu")
    style = Image.open(Path(__file__).resolve().parents[1] / "examples" / "style.png").convert("RGB")
    request = GenerationRequest(
        prompt="a lighthouse",
        style_images=[StyleReference(style)],
        content_text="stripes",
        width=args.size,
        height=args.size,
        steps=args.steps,
    )
    every_step = dataclasses.replace(request, preview_share=None)
    variants = {
        "no step callback": Variant(engine, request, callback=False),
        "linear previews, every step": Variant(linear, every_step),
        "tiny autoencoder, every step": Variant(engine, every_step),
        "preview budget on (default)": Variant(engine, request),
        "preview budget at 3 %": Variant(engine, dataclasses.replace(request, preview_share=0.03)),
    }
    for variant in variants.values():
        variant.run()  # warm-up: caches filled
    raw_times: list[float] = []
    ratios: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_ in range(args.repeats):
        # Each setting is timed right beside its own raw run, the order of the two and of the settings
        # turning with the round: this machine's speed drifts by ±10 % within seconds.
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            variant = variants[name]
            if round_ % 2 == 0:
                raw = raw_pipeline(engine, variant.request)
                variant.run()
            else:
                variant.run()
                raw = raw_pipeline(engine, variant.request)
            raw_times.append(raw)
            ratios[name].append(variant.times[-1] / raw)
    print(f"tiny model, {args.size}x{args.size}, {args.steps} steps, CPU, {args.repeats} rounds, one run")
    print(f"raw diffusers pipeline: {statistics.median(raw_times) * 1000:.1f} ms (median)")
    for name, variant in variants.items():
        quartiles = statistics.quantiles([r - 1 for r in ratios[name]], n=4)
        print(
            f"{name:30s}: engine overhead {quartiles[1] * 100:+6.2f} % "
            f"(quartiles {quartiles[0] * 100:+.1f} / {quartiles[2] * 100:+.1f} %)"
            + (
                f", {variant.pictures:2d} of {args.steps} steps with a picture, "
                f"longest wait for one {variant.longest_gap * 1000:.0f} ms"
                if variant.callback
                else ""
            )
        )

    vae = engine.preview_vae.vae
    full, half = decode_ms(vae, 1024, 1024), decode_ms(vae, 1024, 512)
    shares = f"1024 px {full:.1f} ms, 512 px {half:.1f} ms ({half / full:.2f} of it)"
    print(f"tiny autoencoder preview of a 1024² job: {shares}")

    live = dataclasses.replace(request, width=768, height=768, steps=4)
    times = {}
    for pictures in (True, False):
        job = dataclasses.replace(live, preview_share=None, step_pictures=pictures)
        engine.generate(job, on_step=lambda p: None)
        runs = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            engine.generate(job, on_step=lambda p: None)
            runs.append(time.perf_counter() - start)
        times[pictures] = statistics.median(runs)
    print(
        f"live job, 4 steps at 768²: {times[False] * 1000:.0f} ms without step pictures, "
        f"{times[True] * 1000:.0f} ms with one every step ({(times[True] / times[False] - 1) * 100:+.1f} %)"
    )


if __name__ == "__main__":
    main()
