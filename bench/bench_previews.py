"""What a step preview costs: the tiny autoencoder (TAESD-XL) against the linear factors, at 1024².

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_previews.py [--size 1024] [--repeats 5] [--device cpu]

1. One preview from a (1, 4, size/8, size/8) x0 estimate, median of ``--repeats``: the linear factors
   (latent resolution), the tiny model's tiny autoencoder and TAESD-XL's real shapes (random weights:
   the cost does not depend on the values), both decoded at full size, plus the full-size one sent at
   512 px (decode, then resize). On CUDA each is timed with a synchronisation around it.
2. The same job (the tiny model, ``size``², 4 steps) without previews, with linear ones and with the
   tiny model's tiny autoencoder: the ratio of the job times, and the preview's share of a step.

On a CPU the tiny model's UNet step is far cheaper than SDXL's, so shares measured here overstate
what a GPU run of the real model pays; ``bench_gpu_sdxl.py`` measures the real one where a GPU is lent.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from backend.engine.engine import InstantStyleEngine
from backend.engine.loading import quiet_libraries
from backend.engine.preview_vae import LoadedPreviewVae
from backend.engine.previews import rgb_tensor, tiny_vae_rgb
from backend.engine.request import GenerationRequest, StyleReference
from backend.tiny.layouts import ensure_tiny_model
from backend.tiny.preview_vae import build_tiny_autoencoder
from tests.conftest import noise_image


def timed(run: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median seconds of ``run`` after one warm-up call."""
    times = []
    for index in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def preview_costs(size: int, repeats: int, device: torch.device) -> dict[str, float]:
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    latents = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))
    latents = latents.to(device=device, dtype=dtype)
    tiny = build_tiny_autoencoder().to(device=device, dtype=dtype)
    full = build_tiny_autoencoder(full_size=True).to(device=device, dtype=dtype)
    params = sum(p.numel() for p in full.decoder.parameters())
    print(f"TAESD-XL decoder shapes: {params / 1e6:.2f} M parameters ({params * 2 / 2**20:.1f} MiB in fp16)")
    with torch.inference_mode():
        return {
            "linear (latent resolution)": timed(lambda: rgb_tensor(latents).cpu(), repeats, device),
            "tiny model's autoencoder": timed(
                lambda: tiny_vae_rgb(tiny, latents, (size, size)).cpu(), repeats, device
            ),
            "TAESD-XL shapes": timed(
                lambda: tiny_vae_rgb(full, latents, (size, size)).cpu(), repeats, device
            ),
            "TAESD-XL shapes, sent at 512": timed(
                lambda: tiny_vae_rgb(full, latents, (512, 512)).cpu(), repeats, device
            ),
        }


def job_times(size: int, repeats: int, device: torch.device) -> None:
    """A UNet step's time is the difference between an 8-step and a 4-step job (the encoding and the
    final decode cancel out); a preview's cost per step the difference between 8-step jobs with and
    without previews, divided by 8."""
    paths = ensure_tiny_model()
    engine = InstantStyleEngine.load(paths.spec("diffusers"), device=str(device))
    tiny_vae = engine.preview_vae

    def job(steps: int) -> GenerationRequest:
        return GenerationRequest(
            prompt="a lighthouse",
            style_images=[StyleReference(noise_image(1))],
            width=size,
            height=size,
            steps=steps,
            seed=3,
        )

    def run(steps: int, previews: LoadedPreviewVae | None) -> float:
        engine.preview_vae = previews or tiny_vae
        on_step = None if previews is None else (lambda preview: None)
        return timed(lambda: engine.generate(job(steps), on_step=on_step), repeats, device)

    plain8, plain4 = run(8, None), run(4, None)
    step = (plain8 - plain4) / 4
    rows = {"linear": run(8, LoadedPreviewVae(None, "none")), "tiny autoencoder": run(8, tiny_vae)}
    engine.preview_vae = tiny_vae
    print(f"\nThe tiny model at {size}² ({device}), median of {repeats}: a UNet step {step * 1000:.1f} ms")
    print(f"  8-step job without previews {plain8 * 1000:9.1f} ms")
    for name, seconds in rows.items():
        per_step = (seconds - plain8) / 8
        print(
            f"  8-step job, {name:16s} previews {seconds * 1000:9.1f} ms  x{seconds / plain8:.3f}  "
            f"preview {per_step * 1000:+.1f} ms/step = {per_step / step:+.1%} of a step"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    quiet_libraries()
    torch.manual_seed(0)
    print(f"One preview at {args.size}² ({device}), median of {args.repeats}:")
    costs = preview_costs(args.size, args.repeats, device)
    for name, seconds in costs.items():
        print(f"  {name:30s} {seconds * 1000:9.2f} ms")
    job_times(args.size, args.repeats, device)


if __name__ == "__main__":
    main()
