"""Live mode's loop overhead, LoRA switch time and the prompt cache, on the tiny model (CPU).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_live.py [--sizes 64 256 512] [--repeats 8]

1. The live loop without Krita's own calls: a "stroke" changes the layer's bytes; the plugin's
   change signature (blake2b of the bytes, as ``live_layer.signature``), its Qt-free session sending
   a live img2img job with the Lightning preset (tiny LoRA) to a real server on 127.0.0.1, the
   result back, and the BGRA swap for ``setPixelData``. Overhead = loop time − the engine's own
   time (``result.seconds``), as a ratio to the engine time. The debounce (0.35 s after the last
   change, a deliberate wait for the artist to pause) is not part of it.
2. Switching LoRAs between jobs: ``set_adapters`` time per switch, and a job after a switch against
   a job with the same LoRAs as before.
3. The prompt cache: one ``encode_prompt`` (miss) against a cache hit, and a whole job each way.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import Image

from backend.engine.engine import InstantStyleEngine
from backend.engine.loading import LoraSource
from backend.engine.prompt_cache import PromptKey
from backend.engine.request import GenerationRequest, StyleReference
from backend.tiny.layouts import ensure_tiny_model
from krita_plugin.instantstyle.jobs import Image as PluginImage
from krita_plugin.instantstyle.jobs import JobInputs, JobState, Target
from krita_plugin.instantstyle.live import live_settings, pick_preset
from krita_plugin.instantstyle.pixels import swap_red_blue
from krita_plugin.instantstyle.settings import GenerationSettings
from tests.server_helpers import ServerThread
from tests.test_plugin_client import connect, pump

ROOT = Path(__file__).resolve().parents[1]


def load_engine() -> InstantStyleEngine:
    paths = ensure_tiny_model()
    spec = dataclasses.replace(
        paths.spec("diffusers"),
        loras=(
            LoraSource("sdxl-lightning-4step", str(paths.lora("other-peft"))),
            LoraSource("style", str(paths.lora("style-peft"))),
        ),
        speed_presets=("lightning-4",),
    )
    return InstantStyleEngine.load(spec, device="cpu")


def live_loop(engine: InstantStyleEngine, sizes: list[int], repeats: int) -> None:
    style = Image.open(ROOT / "examples" / "style.png").convert("RGB")
    rng = np.random.default_rng(0)
    print("1. live loop (stroke -> live layer pixels), Lightning preset, tiny model, CPU")
    print(f"   {'size':>9} {'loop ms':>9} {'engine ms':>10} {'overhead ms':>12} {'overhead':>9}")
    with ServerThread(engine) as server:
        session = connect(server.url)
        try:
            preset = pick_preset(session.features.speed_presets, "")
            base = GenerationSettings(prompt="ink wash harbour", strength=1.0, live_max_side=4096)
            for size in sizes:
                layer = bytearray(rng.integers(0, 256, size * size * 4, dtype=np.uint8).tobytes())
                reference = PluginImage(style.width, style.height, 3, style.tobytes())
                loops, engines = [], []
                for repeat in range(repeats + 1):  # the first is a warm-up
                    layer[(repeat * 4096) % len(layer)] ^= 0xFF  # a stroke
                    started = time.perf_counter()
                    hashlib.blake2b(bytes(layer), digest_size=16).digest()  # the change check
                    target = Target(0, 0, size, size)
                    inputs = JobInputs([(reference, 1.0)], PluginImage(size, size, 4, bytes(layer)))
                    job = session.submit(live_settings(base, preset, size, size), inputs, target, live=True)
                    pump(session, lambda _u, job=job: job.state.finished)
                    assert job.state is JobState.DONE, job.message
                    swap_red_blue(job.images[0].data)  # what setPixelData gets
                    loop = time.perf_counter() - started
                    if repeat:
                        loops.append(loop)
                        engines.append(job.result.seconds)
                loop_ms, engine_ms = statistics.median(loops) * 1000, statistics.median(engines) * 1000
                over = loop_ms - engine_ms
                ratio = over / engine_ms
                print(f"   {size:>4}x{size:<4} {loop_ms:9.1f} {engine_ms:10.1f} {over:12.1f} {ratio:9.1%}")
        finally:
            session.connection.stop()


def lora_switch(engine: InstantStyleEngine, repeats: int) -> None:
    style = Image.open(ROOT / "examples" / "style.png").convert("RGB")
    selections = [
        (("style", 1.0),),
        (("sdxl-lightning-4step", 1.0),),
        (("style", 0.5), ("sdxl-lightning-4step", 1.0)),
        (),
    ]
    switches = []
    for index in range(repeats * len(selections)):
        started = time.perf_counter()
        engine.loras.activate(selections[index % len(selections)])
        switches.append(time.perf_counter() - started)

    def job(loras) -> GenerationRequest:
        return GenerationRequest(
            prompt="a lighthouse",
            style_images=[StyleReference(style)],
            width=256,
            height=256,
            steps=4,
            loras=loras,
        )

    same, switched = [], []
    engine.generate(job(selections[0]))
    for index in range(repeats):
        started = time.perf_counter()
        engine.generate(job(selections[0]))
        same.append(time.perf_counter() - started)
        started = time.perf_counter()
        engine.generate(job(selections[1 + index % 3]))  # another LoRA set than the job before
        switched.append(time.perf_counter() - started)
        engine.generate(job(selections[0]))
    print("2. LoRA switch (set_adapters between jobs, nothing reloaded)")
    median, worst = statistics.median(switches) * 1000, max(switches) * 1000
    print(f"   one switch: median {median:.2f} ms, max {worst:.2f} ms")
    same_ms, switched_ms = statistics.median(same) * 1000, statistics.median(switched) * 1000
    print(f"   256x256 4-step job: same LoRAs {same_ms:.1f} ms, after a switch {switched_ms:.1f} ms")


def prompt_cache(engine: InstantStyleEngine, repeats: int) -> None:
    style = Image.open(ROOT / "examples" / "style.png").convert("RGB")
    misses, hits = [], []
    for index in range(repeats):
        key = PromptKey(f"a lighthouse, take {index}", "blurry", True)
        started = time.perf_counter()
        engine.prompts.encodings(engine.pipeline, key)
        misses.append(time.perf_counter() - started)
        started = time.perf_counter()
        engine.prompts.encodings(engine.pipeline, key)
        hits.append(time.perf_counter() - started)
    request = GenerationRequest(
        prompt="a lighthouse", style_images=[StyleReference(style)], width=64, height=64, steps=2
    )
    cold, warm = [], []
    for _ in range(repeats):
        engine.prompts.clear()
        started = time.perf_counter()
        engine.generate(request)
        cold.append(time.perf_counter() - started)
        started = time.perf_counter()
        engine.generate(request)
        warm.append(time.perf_counter() - started)
    print("3. prompt cache")
    print(
        f"   encode_prompt: miss {statistics.median(misses) * 1000:.2f} ms, "
        f"hit {statistics.median(hits) * 1000:.4f} ms"
    )
    print(
        f"   64x64 2-step job: miss {statistics.median(cold) * 1000:.1f} ms, "
        f"hit {statistics.median(warm) * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    engine = load_engine()
    live_loop(engine, args.sizes, args.repeats)
    lora_switch(engine, args.repeats)
    prompt_cache(engine, args.repeats)


if __name__ == "__main__":
    main()
