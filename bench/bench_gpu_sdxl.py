"""Full-size SDXL architecture with random weights on a GPU: the real compute, no download.

    python bench/bench_gpu_sdxl.py                      # SDXL shapes, cuda, fp16, 1024x1024, 30 steps
    python bench/bench_gpu_sdxl.py --shape tiny --device cpu --size 64 --steps 3   # smoke test anywhere

Random weights cost exactly what trained ones do. Times, in one process:
plain SDXL (no IP-Adapter), then the InstantStyle engine with the style preset
(IP-Adapter on one block, content subtraction, a preview every step) and with
all blocks. Prints JSON (and writes it with --out); figures go to docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from backend.engine.engine import InstantStyleEngine
from backend.engine.loading import ModelSpec
from backend.engine.request import GenerationRequest, StyleReference
from backend.tiny.components import FULL_LABEL, SDXL, TINY, build_models
from protocol import BlockPreset


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, function, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=["sdxl", "tiny"], default="sdxl")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    shape = SDXL if args.shape == "sdxl" else TINY
    started = time.perf_counter()
    with torch.device(device), tempfile.TemporaryDirectory() as scratch:
        models = build_models(Path(scratch), shape)
    pipe = models.pipeline
    pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    build_seconds = time.perf_counter() - started

    from PIL import Image

    style = Image.effect_noise((512, 512), 60).convert("RGB")
    size, steps = args.size, args.steps
    generator = lambda: torch.Generator("cpu").manual_seed(0)  # noqa: E731

    def plain() -> None:
        pipe(
            prompt="a lighthouse",
            num_inference_steps=steps,
            width=size,
            height=size,
            guidance_scale=5.0,
            generator=generator(),
            output_type="np",
        )

    plain_warm = timed(
        device, lambda: pipe(prompt="x", num_inference_steps=2, width=size, height=size, output_type="np"), 1
    )
    plain_times = timed(device, plain, args.repeats)

    pipe.register_modules(image_encoder=models.image_encoder.to(device=device, dtype=dtype))
    pipe.load_ip_adapter(models.ip_adapter_state, subfolder="", weight_name="", image_encoder_folder=None)
    pipe.to(device=device, dtype=dtype)
    engine = InstantStyleEngine(
        pipe, ModelSpec(label=FULL_LABEL if shape is SDXL else "tiny", is_test_model=True)
    )

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

    previews: list[int] = []
    first_job = timed(
        device, lambda: engine.generate(job(BlockPreset.STYLE), on_step=lambda p: previews.append(1)), 1
    )
    style_times = timed(
        device, lambda: engine.generate(job(BlockPreset.STYLE), on_step=lambda p: None), args.repeats
    )
    all_times = timed(
        device, lambda: engine.generate(job(BlockPreset.ALL), on_step=lambda p: None), args.repeats
    )

    def summary(times: list[float]) -> dict[str, float]:
        median = statistics.median(times)
        return {"seconds": round(median, 3), "ms_per_step": round(median / steps * 1000, 2)}

    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "shape": args.shape,
        "dtype": args.dtype,
        "size": size,
        "steps": steps,
        "build_seconds": round(build_seconds, 1),
        "first_call_seconds": round(plain_warm[0], 2),
        "plain_sdxl": summary(plain_times),
        "instantstyle_style_preset": summary(style_times),
        "instantstyle_all_blocks": summary(all_times),
        "first_instantstyle_job_seconds": round(first_job[0], 3),
        "style_overhead_vs_plain": round(
            statistics.median(style_times) / statistics.median(plain_times) - 1, 4
        ),
        "previews_per_job": len(previews),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.type == "cuda"
        else None,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
