"""The one prepared GPU benchmark: SDXL's real shapes with random weights, no hub, JSON as it goes.

    python bench/bench_gpu_sdxl.py --out bench-gpu.json     # one GPU, no internet: < 5 min (H100)
    python bench/bench_gpu_sdxl.py --shape tiny --device cpu --out smoke.json   # smoke test, seconds

Random weights cost what trained ones do (``backend/tiny/real_shapes.py`` builds every component on
the meta device and materialises it in the run's dtype where it runs). Sections, in this order, each
figure written to ``--out`` (replaced atomically) and printed the moment it is measured, so a crash
leaves every figure before it; a section that raises records its error and the next one runs:

1. ``plain_sdxl``: diffusers' ``StableDiffusionXLPipeline`` as it comes (UNet, VAE, both text
   encoders; nothing else is built yet, so its peak is plain SDXL's): ms/step, job, peak memory.
2. ``engine``: the same model with ViT-bigG and ip-adapter_sdxl through ``InstantStyleEngine``
   (style preset, content subtraction): ms/step, its ratio to plain, the first job after loading.
3. ``previews``: that job without previews, with the linear ones and with TAESD-XL on every step,
   and with the preview budget on (the server's default: 3 % of the denoising time).
4. ``tiers``: each memory tier placed by ``memory.place`` as the backend does, one txt2img and one
   img2img job each (TAESD-XL previews on): memory resident at rest, peak allocated and reserved.
5. ``compile``: a fresh full-tier engine's ms/step before and after ``compile_unet`` (speed-up).

ms/step is the median gap between the starts of successive UNet calls (CUDA events, read after the
job: nothing synchronises inside the loop). Peaks are ``torch.cuda.max_memory_allocated`` after a
reset (None on the CPU). ``--budget-s`` (260) skips the sections that would start after it, and the
compile section when less than ``--compile-reserve-s`` (100) is left, so that a run ends within 5 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from PIL import Image

from backend.engine.engine import InstantStyleEngine
from backend.engine.loading import ModelSpec, pick_dtype
from backend.engine.memory import MemoryTier, models, place
from backend.engine.preview_budget import DEFAULT_PREVIEW_SHARE
from backend.engine.preview_vae import LoadedPreviewVae
from backend.engine.request import DEFAULT_NEGATIVE_PROMPT, GenerationRequest, StyleReference
from backend.tiny.components import FULL_LABEL, SDXL, TINY, TINY_LABEL
from backend.tiny.real_shapes import Materialiser, attach_ip_adapter, build_sdxl_pipeline, build_taesdxl
from protocol import Auto, Mode

GIB = 2**30
PROMPT = "a lighthouse at dusk"


class Report:
    """The figures so far, rewritten to ``path`` after each one (a crash keeps what was measured)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, object] = {}
        self.errors: list[str] = []

    def get(self, *keys: str) -> object:
        """A figure measured earlier, or None (its section failed or was skipped)."""
        node: object = self.data
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        return node

    def put(self, *keys: str, value: object) -> None:
        node = self.data
        for key in keys[:-1]:
            node = node.setdefault(key, {})  # type: ignore[assignment]
        node[keys[-1]] = value  # type: ignore[index]
        print(f"{'.'.join(keys)} = {value}", flush=True)
        if self.path is not None:
            partial = self.path.with_name(self.path.name + ".partial")
            with partial.open("w") as file:
                json.dump(self.data, file, indent=1)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, self.path)

    @contextlib.contextmanager
    def section(self, *keys: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        except Exception as error:  # a failed section is a figure too; the next one still runs
            traceback.print_exc()
            self.errors.append(".".join(keys))
            self.put(*keys, "error", value=f"{type(error).__name__}: {str(error).strip()[:500]}")
        finally:
            self.put(*keys, "section_seconds", value=round(time.perf_counter() - started, 1))


class Device:
    """Synchronised wall time and CUDA memory figures (None on the CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def seconds(self, run: Callable[[], object]) -> float:
        self.sync()
        started = time.perf_counter()
        run()
        self.sync()
        return round(time.perf_counter() - started, 3)

    def reset_peak(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def gib(self, figure: Callable[[torch.device], int]) -> float | None:
        return round(figure(self.device) / GIB, 2) if self.cuda else None

    def memory(self) -> dict[str, float | None]:
        """Peak allocated and reserved since the last ``reset_peak``."""
        return {
            "peak_gib": self.gib(torch.cuda.max_memory_allocated),
            "reserved_peak_gib": self.gib(torch.cuda.max_memory_reserved),
        }


class StepTimer:
    """Marks the start of every UNet call (a CUDA event, or the clock on the CPU); read after the job."""

    def __init__(self, unet: torch.nn.Module, device: Device) -> None:
        self.unet, self.device = unet, device
        self.marks: list[object] = []

    def __enter__(self) -> StepTimer:
        self.handle = self.unet.register_forward_pre_hook(self._mark)
        return self

    def __exit__(self, *_: object) -> None:
        self.handle.remove()

    def _mark(self, *_: object) -> None:
        if self.device.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def ms_per_step(self) -> float | None:
        self.device.sync()
        pairs = zip(self.marks, self.marks[1:], strict=False)
        if self.device.cuda:
            gaps = [a.elapsed_time(b) for a, b in pairs]  # type: ignore[attr-defined]
        else:
            gaps = [(b - a) * 1000 for a, b in pairs]  # type: ignore[operator]
        return round(statistics.median(gaps), 2) if gaps else None


def timed_runs(
    device: Device, unet: torch.nn.Module, run: Callable[[], object], repeats: int, warm: bool = True
) -> dict:
    """A warm-up (unless ``warm`` is False), then ``repeats`` runs: median ms/step and job seconds, and
    the runs' peak memory."""
    if warm:
        run()
    device.reset_peak()
    steps, jobs = [], []
    for _ in range(repeats):
        with StepTimer(unet, device) as timer:
            jobs.append(device.seconds(run))
        steps.append(timer.ms_per_step())
    known = [step for step in steps if step is not None]
    return {
        "ms_per_step": round(statistics.median(known), 2) if known else None,
        "job_seconds": round(statistics.median(jobs), 3),
        **device.memory(),
    }


def tier_job(device: Device, engine: InstantStyleEngine, job: GenerationRequest) -> dict:
    """One job as the plugin runs it (previews on), its peak memory from a reset."""
    device.reset_peak()
    with StepTimer(engine.pipeline.unet, device) as timer:  # type: ignore[attr-defined]
        seconds = device.seconds(lambda: engine.generate(job, on_step=lambda preview: None))
    return {"job_seconds": seconds, "ms_per_step": timer.ms_per_step(), **device.memory()}


def weights_gib(pipeline: object) -> dict[str, float]:
    return {
        name: round(sum(p.numel() * p.element_size() for p in module.parameters()) / GIB, 3)
        for name, module in sorted(models(pipeline).items())
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=["sdxl", "tiny"], default="sdxl")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=["auto", "fp16", "bf16", "fp32"], default="auto")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20, help="steps of the timed jobs")
    parser.add_argument("--tier-steps", type=int, default=6, help="steps of each memory tier's jobs")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--budget-s", type=float, default=260.0, help="start no section after this")
    parser.add_argument(
        "--compile-reserve-s",
        type=float,
        default=100.0,
        help="what compiling may take (kept from the budget)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    started = time.perf_counter()
    device = Device(torch.device(args.device))
    dtype = pick_dtype(device.device, args.dtype)
    shape, encoder = (SDXL, "vit-bigg") if args.shape == "sdxl" else (TINY, "tiny")
    make = Materialiser(dtype, str(device.device))
    spec = ModelSpec(label=FULL_LABEL if shape is SDXL else TINY_LABEL, is_test_model=True)
    report = Report(args.out)
    import diffusers

    name = torch.cuda.get_device_name(device.device) if device.cuda else str(device.device)
    for key, value in {
        "device": name,
        "dtype": str(dtype).removeprefix("torch."),
        "shape": args.shape,
        "size": args.size,
        "steps": args.steps,
        "tier_steps": args.tier_steps,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "finished": False,
    }.items():
        report.put("meta", key, value=value)

    size, scratch = args.size, Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    style = Image.effect_noise((512, 512), 60).convert("RGB")
    init = Image.effect_noise((size, size), 40).convert("RGB")

    def request(steps: int, mode: Mode = Mode.TXT2IMG) -> GenerationRequest:
        """The style preset with content subtraction; img2img at strength 0.5 runs ``steps`` too."""
        img2img = mode is Mode.IMG2IMG
        return GenerationRequest(
            prompt=PROMPT,
            style_images=[StyleReference(style)],
            content_text="a cat",
            mode=mode,
            init_image=init if img2img else None,
            strength=0.5,
            width=size,
            height=size,
            steps=2 * steps if img2img else steps,
            seed=0,
        )

    def in_budget(section: str, reserve: float = 0.0) -> bool:
        """Whether ``section`` may start (``reserve``: seconds it needs beyond what is left)."""
        if time.perf_counter() - started + reserve < args.budget_s:
            return True
        report.put(section, "skipped", value=f"time budget of {args.budget_s:.0f} s spent")
        return False

    def build(with_adapter: bool) -> object:
        pipe = build_sdxl_pipeline(scratch, make, shape=shape)
        pipe.set_progress_bar_config(disable=True)
        if with_adapter:
            attach_ip_adapter(pipe, encoder, make)
        return pipe

    pipe: object = None
    with report.section("plain_sdxl"):
        build_started = time.perf_counter()
        pipe = build(with_adapter=False)
        report.put("plain_sdxl", "build_seconds", value=round(time.perf_counter() - build_started, 1))
        report.put("plain_sdxl", "weights_gib", value=weights_gib(pipe))
        device.reset_peak()
        report.put("plain_sdxl", "resident_gib", value=device.gib(torch.cuda.memory_allocated))

        def plain() -> object:
            return pipe(  # type: ignore[operator]
                prompt=PROMPT,
                negative_prompt=DEFAULT_NEGATIVE_PROMPT,
                num_inference_steps=args.steps,
                width=size,
                height=size,
                guidance_scale=5.0,
                generator=torch.Generator("cpu").manual_seed(0),
                output_type="np",
            )

        report.put("plain_sdxl", "job", value=timed_runs(device, pipe.unet, plain, args.repeats))  # type: ignore[attr-defined]

    tiny_vae = LoadedPreviewVae(build_taesdxl(make), "TAESD-XL shapes, random weights")
    engine: InstantStyleEngine | None = None
    if pipe is not None and in_budget("engine"):
        with report.section("engine"):
            attach_ip_adapter(pipe, encoder, make)
            report.put("engine", "weights_gib", value=weights_gib(pipe))
            engine = InstantStyleEngine(pipe, spec, device=device.device, preview_vae=tiny_vae)
            device.reset_peak()
            first = device.seconds(lambda: engine.generate(request(args.steps)))
            report.put("engine", "first_job_seconds", value=first)
            figures = timed_runs(
                device, pipe.unet, lambda: engine.generate(request(args.steps)), args.repeats, warm=False
            )
            report.put("engine", "job", value=figures)
            plain_ms = report.get("plain_sdxl", "job", "ms_per_step")
            if figures["ms_per_step"] and isinstance(plain_ms, float):
                report.put("engine", "step_ratio_to_plain", value=round(figures["ms_per_step"] / plain_ms, 3))

    if engine is not None and in_budget("previews"):
        with report.section("previews"):
            linear = LoadedPreviewVae(None, "none")
            settings = (
                ("off", None, None),
                ("linear", linear, None),
                ("tiny_autoencoder", tiny_vae, None),
                ("budget", tiny_vae, DEFAULT_PREVIEW_SHARE),
            )
            for label, previews, share in settings:
                engine.preview_vae = previews or tiny_vae
                on_step = None if previews is None else (lambda preview: None)
                every = dataclasses.replace(request(args.steps), preview_share=share)

                def job(on_step: Callable | None = on_step, every: GenerationRequest = every) -> object:
                    return engine.generate(every, on_step=on_step)

                report.put("previews", label, value=timed_runs(device, pipe.unet, job, args.repeats))  # type: ignore[attr-defined]
            engine.preview_vae = tiny_vae
            off = report.get("previews", "off", "ms_per_step")
            for label in ("linear", "tiny_autoencoder", "budget"):
                ms = report.get("previews", label, "ms_per_step")
                if isinstance(ms, float) and isinstance(off, float):
                    report.put("previews", f"{label}_step_cost_ratio", value=round(ms / off - 1, 4))

        with report.section("auto"):  # auto strength's search + render against the chosen plain job
            searched = dataclasses.replace(request(args.steps), content_text="a cat", auto=Auto())
            chosen = engine.generate(searched).auto.chosen  # type: ignore[union-attr]
            plain_job = dataclasses.replace(searched, auto=None, style_scale=chosen.style_scale)
            plain_job = dataclasses.replace(plain_job, content_scale=chosen.content_scale)
            auto_s = device.seconds(lambda: engine.generate(searched))
            plain_s = device.seconds(lambda: engine.generate(plain_job))
            report.put("auto", "seconds", value={"auto": round(auto_s, 3), "plain": round(plain_s, 3)})
            report.put("auto", "auto_to_plain", value=round(auto_s / plain_s, 3))

    engine = None
    for tier in MemoryTier:
        if pipe is None or not in_budget(f"tiers.{tier.value}"):
            break
        with report.section("tiers", tier.value):
            pipe.remove_all_hooks()  # type: ignore[attr-defined]  # the previous tier's offload hooks
            pipe.to("cpu")  # type: ignore[attr-defined]
            device.reset_peak()
            place(pipe, None, tier, device.device)  # exactly what the backend does at start
            engine = InstantStyleEngine(
                pipe, spec, memory_tier=tier, device=device.device, preview_vae=tiny_vae
            )
            report.put("tiers", tier.value, "resident_gib", value=device.gib(torch.cuda.memory_allocated))
            for mode in (Mode.TXT2IMG, Mode.IMG2IMG):
                figures = tier_job(device, engine, request(args.tier_steps, mode))
                report.put("tiers", tier.value, mode.value, value=figures)
            engine = None
    # Group offload cannot be undone: the compile section builds the model afresh.
    pipe, engine = None, None
    device.reset_peak()

    if not args.compile:
        report.put("compile", "skipped", value="--no-compile")
    elif in_budget("compile", reserve=args.compile_reserve_s):
        with report.section("compile"):
            pipe = build(with_adapter=True)
            engine = InstantStyleEngine(pipe, spec, device=device.device)

            def job() -> object:
                return engine.generate(request(args.steps))

            report.put("compile", "eager", value=timed_runs(device, pipe.unet, job, args.repeats))  # type: ignore[attr-defined]
            compile_started = time.perf_counter()
            engine.compile_unet(backend=args.compile_backend)
            engine.warm_up(size=size, steps=2)  # compiles both branches of the blocks (see compile_unet)
            report.put("compile", "backend", value=args.compile_backend)
            report.put("compile", "compile_seconds", value=round(time.perf_counter() - compile_started, 1))
            compiled = timed_runs(device, pipe.unet, job, args.repeats)  # type: ignore[attr-defined]
            report.put("compile", "compiled", value=compiled)
            eager_ms = report.get("compile", "eager", "ms_per_step")
            if isinstance(eager_ms, float) and compiled["ms_per_step"]:
                report.put("compile", "speed_up", value=round(eager_ms / compiled["ms_per_step"], 3))

    report.put("meta", "errors", value=report.errors)
    report.put("meta", "total_seconds", value=round(time.perf_counter() - started, 1))
    report.put("meta", "finished", value=True)
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
