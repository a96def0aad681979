"""Canvas resolution: what the tiled refine costs per megapixel, and its peak memory, on the tiny
model (CPU).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_refine.py [--sizes 1024 2048 4096 8192] [--tile 512]

Each size runs in its own process (its peak RSS is its own): a square canvas of that side made with
``refine`` (first stage at the tiny model's native area, then upscaled and refined in tiles of
``--tile`` px), 8 steps at strength 0.6 and a refine strength of 0.35. The table gives the seconds,
seconds per megapixel of canvas and the process's peak RSS; the baseline row is one job at the
first stage's size. On the tiny model the UNet is cheap: the figures show what tiling, the tiled
VAE and the canvas-sized buffers cost, not an SDXL job's time (GPU figures: not measured here).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one(side: int, tile: int) -> dict:
    """Runs in the child process: one job, its seconds and this process's peak RSS."""
    from PIL import Image

    from backend.engine.engine import InstantStyleEngine
    from backend.engine.request import GenerationRequest, Refine, StyleReference
    from backend.tiny.layouts import ensure_tiny_model
    from protocol import Mode

    engine = InstantStyleEngine.load(ensure_tiny_model().spec(), device="cpu")
    style = Image.open(ROOT / "examples" / "style.png").convert("RGB")
    source = style.resize((side, side))
    refine = Refine(strength=0.35, tile=tile, overlap=tile // 8) if side > engine.native_side else None
    request = GenerationRequest(
        prompt="a lighthouse",
        style_images=[StyleReference(style)],
        content_text="stripes",
        mode=Mode.IMG2IMG,
        init_image=source,
        strength=0.6,
        width=side,
        height=side,
        steps=8,
        refine=refine,
    )
    engine.generate(request)  # warm: the first job pays for lazy set-up
    started = time.perf_counter()
    engine.generate(request)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"side": side, "seconds": seconds, "peak_rss_mib": peak, "native": engine.native_side}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one(args.child, args.tile)))
        return
    rows = []
    for side in [64, *args.sizes]:  # 64: the tiny model's native side, one plain job
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(side), "--tile", str(args.tile)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        row = rows[-1]
        megapixels = side * side / 1e6
        print(
            f"{side:>5}²  {row['seconds']:8.2f} s  {row['seconds'] / megapixels:8.2f} s/MP  "
            f"peak RSS {row['peak_rss_mib']:7.0f} MiB",
            flush=True,
        )


if __name__ == "__main__":
    main()
