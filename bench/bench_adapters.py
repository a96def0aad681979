"""What each IP-Adapter kind costs at SDXL's real shapes: weights counted, and a job's time as ratios.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_adapters.py [--size 256] [--steps 2] [--rounds 3]

SDXL with random weights in bf16 on this machine's CPU (``backend/tiny/real_shapes.py``), one pipeline
whose adapter is swapped: ``ip-adapter_sdxl`` on ViT-bigG (4 tokens), ``ip-adapter_sdxl_vit-h`` on
ViT-H (4 tokens; content through ViT-H's text tower) and ``ip-adapter-plus_sdxl_vit-h`` (16 tokens
from ViT-H's 257 patch features through a Resampler). Each kind runs a txt2img job with a new
reference (the image encoder runs) and one with a cached reference (denoising and decoding only),
``--rounds`` times; the figures are medians, as ratios to the plain bigG adapter's, from one run. The
weights are counted from the shapes (GiB in fp16). A CPU's ratios are not a GPU's: the UNet's share
of a step is larger on a GPU, so the image-token cost weighs less there.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from backend.engine.engine import InstantStyleEngine
from backend.engine.loading import ModelSpec
from backend.engine.memory import GIB
from backend.engine.request import GenerationRequest, StyleReference
from backend.tiny.components import FULL_LABEL, tiny_tokenizer
from backend.tiny.real_shapes import (
    attach_ip_adapter,
    attach_plus_adapter,
    build_sdxl_pipeline,
    build_vit_h_text_tower,
)
from tests.conftest import noise_image

KINDS = ("ip-adapter_sdxl", "ip-adapter_sdxl_vit-h", "ip-adapter-plus_sdxl_vit-h")


def gib(module: torch.nn.Module | None, names: tuple[str, ...] = ()) -> float:
    """fp16 GiB of a module's parameters (those whose names hold one of ``names``, if given)."""
    if module is None:
        return 0.0
    count = sum(p.numel() for n, p in module.named_parameters() if not names or any(k in n for k in names))
    return count * 2 / GIB


def attach(pipe: object, kind: str) -> None:
    if getattr(pipe, "image_encoder", None) is not None:
        pipe.unload_ip_adapter()  # type: ignore[attr-defined]
        gc.collect()
    if kind == "ip-adapter-plus_sdxl_vit-h":
        attach_plus_adapter(pipe)
    else:
        attach_ip_adapter(pipe, "vit-bigg" if kind == "ip-adapter_sdxl" else "vit-h")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    scratch = Path(tempfile.mkdtemp(prefix="bench-adapters-"))
    pipe = build_sdxl_pipeline(scratch)
    pipe.set_progress_bar_config(disable=True)
    tower = build_vit_h_text_tower()
    tower.save_pretrained(scratch / "clip-vit-h")
    tiny_tokenizer(scratch / "tokenizer").save_pretrained(scratch / "clip-vit-h")
    tower_gib = gib(tower)
    del tower
    spec = ModelSpec(label=FULL_LABEL, is_test_model=True, content_text_encoder=str(scratch / "clip-vit-h"))
    rows: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        attach(pipe, kind)
        engine = InstantStyleEngine(pipe, spec, device=torch.device("cpu"))
        content = "a cat" if engine.encoder.content_subtraction else ""
        new, cached = [], []
        for round_ in range(args.rounds):
            request = GenerationRequest(
                prompt="a lighthouse at dusk",
                style_images=[StyleReference(noise_image(100 + round_, 96))],
                content_text=content,
                width=args.size,
                height=args.size,
                steps=args.steps,
                seed=5,
            )
            for times in (new, cached):  # a new reference, then the same one again (cached)
                started = time.perf_counter()
                engine.generate(request)
                times.append(time.perf_counter() - started)
        unet = pipe.unet
        projection = unet.encoder_hid_proj
        rows[kind] = {
            "new": statistics.median(new),
            "cached": statistics.median(cached),
            "encoder": gib(pipe.image_encoder),
            "adapter": gib(projection) + gib(unet, ("to_k_ip", "to_v_ip")),
            "tower": tower_gib if engine.encoder.content_tower is not None else 0.0,
            "tokens": engine.adapter.tokens,
        }
        del engine
        gc.collect()
    base = rows[KINDS[0]]
    print(f"SDXL real shapes, bf16, CPU, {args.size}² x {args.steps} steps, median of {args.rounds}")
    print("| adapter | tokens | image encoder GiB | adapter GiB | text tower GiB | new reference | cached |")
    print("|---|---|---|---|---|---|---|")
    for kind, row in rows.items():
        print(
            f"| `{kind}` | {row['tokens']:.0f} | {row['encoder']:.2f} | {row['adapter']:.2f} "
            f"| {row['tower']:.2f} | {row['new'] / base['new']:.2f} | {row['cached'] / base['cached']:.2f} |"
        )
    print(f"(plain bigG: {base['new']:.1f} s with a new reference, {base['cached']:.1f} s cached)")


if __name__ == "__main__":
    main()
