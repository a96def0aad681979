"""Full-size SDXL architecture with random weights on a GPU: the real compute, no download.

    python bench/bench_gpu_sdxl.py                      # SDXL shapes, cuda, fp16, 1024x1024, 30 steps
    python bench/bench_gpu_sdxl.py --shape tiny --device cpu --size 64 --steps 3   # smoke test anywhere

Random weights cost exactly what trained ones do. Reports, each on its own:
the UNet's milliseconds per step (from step to step, synchronised), the VAE
decode, the prompt and style encoders, whole jobs with previews on and off, the
first job after loading, and peak memory after a reset (the fp32 build copies
are gone by then), for plain SDXL, the InstantStyle style preset and all
blocks. Prints JSON (and writes it with --out); about a minute on one H100/H200
at the defaults. Figures go to docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import itertools

import torch

from backend.engine.decode import decode
from backend.engine.engine import InstantStyleEngine
from backend.engine.loading import ModelSpec
from backend.engine.request import GenerationRequest, StyleReference
from backend.tiny.components import FULL_LABEL, SDXL, TINY, build_models
from protocol import BlockPreset


class Clock:
    """Wall-clock timing that waits for the device, and peak memory since the last reset."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def seconds(self, function: Callable[[], object], repeats: int = 1) -> float:
        times = []
        for _ in range(repeats):
            self.sync()
            start = time.perf_counter()
            function()
            self.sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)


def step_milliseconds(clock: Clock, run: Callable[[Callable], object]) -> float:
    """Median time from one denoising step's end to the next, synchronised at each step."""
    stamps: list[float] = []

    def on_step(*_args: object) -> None:
        clock.sync()
        stamps.append(time.perf_counter())

    run(on_step)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return round(statistics.median(gaps) * 1000, 2) if gaps else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=["sdxl", "tiny"], default="sdxl")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time the InstantStyle jobs with the UNet's blocks compiled",
    )
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    shape = SDXL if args.shape == "sdxl" else TINY
    clock = Clock(device)
    started = time.perf_counter()
    with torch.device(device), tempfile.TemporaryDirectory() as scratch:
        models = build_models(Path(scratch), shape)
    pipe = models.pipeline
    pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    load_seconds = time.perf_counter() - started

    from PIL import Image

    style = Image.effect_noise((512, 512), 60).convert("RGB")
    size, steps = args.size, args.steps

    def job(preset: BlockPreset) -> GenerationRequest:
        return GenerationRequest(
            prompt="a lighthouse",
            style_images=[StyleReference(style)],
            content_text="a cat",
            preset=preset,
            width=size,
            height=size,
            steps=steps,
            seed=0,
        )

    def plain(on_step=None) -> torch.Tensor:
        """SDXL as diffusers runs it, before the IP-Adapter is loaded."""
        return pipe(
            prompt="a lighthouse",
            num_inference_steps=steps,
            width=size,
            height=size,
            guidance_scale=5.0,
            generator=torch.Generator("cpu").manual_seed(0),
            output_type="latent",
            callback_on_step_end=(lambda p, i, t, k: (on_step(), k)[1]) if on_step else None,
        ).images

    plain(None)  # warm-up
    latents = plain()
    clock.reset_peak()
    results: dict[str, object] = {
        "plain_sdxl": {
            "unet_ms_per_step": step_milliseconds(clock, lambda mark: plain(mark)),
            "denoise_seconds": round(clock.seconds(plain, args.repeats), 3),
            "vae_decode_seconds": round(clock.seconds(lambda: decode(pipe, latents), args.repeats), 3),
            "peak_gib": clock.peak_gib(),
        }
    }

    pipe.register_modules(image_encoder=models.image_encoder.to(device=device, dtype=dtype))
    pipe.load_ip_adapter(models.ip_adapter_state, subfolder="", weight_name="", image_encoder_folder=None)
    pipe.to(device=device, dtype=dtype)
    del models
    engine = InstantStyleEngine(
        pipe, ModelSpec(label=FULL_LABEL if shape is SDXL else "tiny", is_test_model=True)
    )
    # The first InstantStyle job after loading: what an artist waits for (kernels, caches, allocator).
    clock.reset_peak()
    first_job = clock.seconds(lambda: engine.generate(job(BlockPreset.STYLE), on_step=lambda p: None))

    def engine_job(preset: BlockPreset, previews: bool) -> Callable[[], object]:
        return lambda: engine.generate(job(preset), on_step=(lambda p: None) if previews else None)

    for preset in (BlockPreset.STYLE, BlockPreset.ALL):
        clock.reset_peak()
        results[f"instantstyle_{preset.value}"] = {
            "unet_ms_per_step": step_milliseconds(
                clock, lambda mark, preset=preset: engine.generate(job(preset), on_step=lambda p: mark())
            ),
            "job_seconds_previews_on": round(clock.seconds(engine_job(preset, True), args.repeats), 3),
            "job_seconds_previews_off": round(clock.seconds(engine_job(preset, False), args.repeats), 3),
            "peak_gib": clock.peak_gib(),
        }

    if args.compile:  # last: compiling changes the engine for good
        compile_started = time.perf_counter()
        engine.compile_unet()
        engine.warm_up(size=size, steps=2)  # compiles both branches (see compile_unet)
        compile_seconds = time.perf_counter() - compile_started
        results["instantstyle_style_compiled"] = {
            "compile_and_warm_up_seconds": round(compile_seconds, 1),
            "unet_ms_per_step": step_milliseconds(
                clock, lambda mark: engine.generate(job(BlockPreset.STYLE), on_step=lambda p: mark())
            ),
            "job_seconds_previews_off": round(
                clock.seconds(engine_job(BlockPreset.STYLE, False), args.repeats), 3
            ),
        }

    def style_uncached() -> None:
        engine.encoder.image_cache.clear()
        engine.encoder.text_cache.clear()
        engine.encoder.style_embedding([style], [1.0], "a cat", 0.5)

    encoders = {
        "prompt_seconds": clock.seconds(
            lambda: pipe.encode_prompt("a lighthouse", device=device), args.repeats
        ),
        "style_image_and_content_seconds": clock.seconds(style_uncached, args.repeats),
    }
    on, off = (
        results["instantstyle_style"][k] for k in ("job_seconds_previews_on", "job_seconds_previews_off")
    )
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "shape": args.shape,
        "dtype": args.dtype,
        "size": size,
        "steps": steps,
        "memory_tier": "full (every module on the GPU)",
        "load_seconds": round(load_seconds, 1),
        "first_job_after_load_seconds": round(first_job, 3),
        **results,
        "encoders": {k: round(v, 4) for k, v in encoders.items()},
        "preview_cost_ratio": round(on / off - 1, 4),
        "style_step_overhead_vs_plain": round(
            results["instantstyle_style"]["unet_ms_per_step"] / results["plain_sdxl"]["unet_ms_per_step"] - 1,
            4,
        ),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
