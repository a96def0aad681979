"""``python -m backend doctor``: what this machine runs, and whether a real job works, as text to copy.

A bug report needs the device, its free memory, the memory tier and dtype the backend picks there,
how fast a step is, whether previews are drawn by the tiny autoencoder or linear, and whether a job
makes finite pixels. The doctor loads the model as ``serve`` would (same arguments), runs one
job, and prints one ``name: value`` line each; it exits 1 when the job fails (NaN or an error),
with the reason on its line.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field

GIB = 1024**3


@dataclass
class Report:
    lines: list[tuple[str, str]] = field(default_factory=list)
    healthy: bool = True

    def add(self, name: str, value: object) -> None:
        self.lines.append((name, str(value)))

    def fail(self, name: str, reason: str) -> None:
        self.healthy = False
        self.add(name, f"FAILED: {reason}")

    def text(self) -> str:
        width = max(len(name) for name, _ in self.lines)
        return "\n".join(f"{name + ':':{width + 1}} {value}" for name, value in self.lines)


def add_doctor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=512, help="side of the test job (default 512)")
    parser.add_argument("--steps", type=int, default=4, help="steps of the test job (default 4)")


def memory_line(device: object) -> str:
    """Free and total memory where jobs run: the accelerator's, or this machine's for a CPU."""
    import torch

    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        name = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
        return (
            f"{free / GIB:.1f} GiB free of {total / GIB:.1f} GiB ({name}, compute capability {major}.{minor})"
        )
    if kind == "mps":
        return f"{torch.mps.recommended_max_memory() / GIB:.1f} GiB recommended for Metal"
    try:
        pages, available, size = (os.sysconf(n) for n in ("SC_PHYS_PAGES", "SC_AVPHYS_PAGES", "SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # Windows has no sysconf
        return "CPU (system memory not known here)"
    return f"CPU, {available * size / GIB:.1f} GiB free of {pages * size / GIB:.1f} GiB system memory"


def test_job(size: int, steps: int):  # -> GenerationRequest
    """A txt2img job in the style preset with content subtraction: the common path of the docker."""
    import numpy as np
    from PIL import Image

    from backend.engine.request import GenerationRequest, StyleReference

    pixels = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    return GenerationRequest(
        prompt="a lighthouse at dusk",
        style_images=[StyleReference(Image.fromarray(pixels))],
        content_text="noise",
        width=size,
        height=size,
        steps=steps,
        seed=0,
    )


def examine(args: argparse.Namespace) -> Report:
    """Load the model as ``serve`` would and run one job; every step of the way is a line."""
    import torch

    from backend import __version__
    from backend.model_options import load_engine
    from backend.threads import describe_numerics
    from protocol import PROTOCOL_VERSION

    report = Report()
    report.add("backend", f"{__version__} (protocol {PROTOCOL_VERSION})")
    report.add("python", f"{platform.python_version()} on {platform.system()} {platform.machine()}")
    report.add("torch", f"{torch.__version__}, CUDA {torch.version.cuda or 'none'}")
    report.add("numerics", describe_numerics())
    started = time.perf_counter()
    try:
        engine = load_engine(args)
    except Exception as error:  # the one line a bug report needs, not a traceback
        report.fail("model", f"{type(error).__name__}: {error}".splitlines()[0][:300])
        return report
    report.add("model", f"{engine.spec.label} (loaded in {time.perf_counter() - started:.1f} s)")
    report.add("device", engine.device)
    if engine.device.type == "cpu" and not engine.spec.is_test_model:
        report.add("warning", "a real SDXL model on a CPU takes minutes per picture: a GPU is advised")
    report.add("memory", memory_line(engine.device))
    report.add("memory tier", engine.memory_tier.value)
    report.add("dtype", str(engine.dtype).removeprefix("torch."))
    features = engine.features
    report.add("previews", features.preview.value + "".join(f"; {problem}" for problem in features.problems))
    moments: list[float] = []
    try:
        job = test_job(args.size, args.steps)
        result = engine.generate(job, on_step=lambda _: moments.append(time.perf_counter()))
    except Exception as error:
        report.fail("job", f"{type(error).__name__}: {error}".splitlines()[0][:300])
        return report
    gaps = [b - a for a, b in itertools.pairwise(moments)]
    per_step = f"{statistics.median(gaps) * 1000:.0f} ms/step" if gaps else "one step only"
    report.add("job", f"{args.size}² in {args.steps} steps: {result.seconds:.2f} s, {per_step}")
    import numpy as np

    colours = len(np.unique(result.images[0].reshape(-1, 3), axis=0))
    report.add("pixels", f"finite, {colours} colours")  # NaN or inf would have failed the job
    return report


def run_doctor(args: argparse.Namespace) -> int:
    report = examine(args)
    print(report.text())
    sys.stdout.flush()
    return 0 if report.healthy else 1
