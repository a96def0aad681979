"""Command line: ``python -m backend {generate,serve,make-tiny}``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from backend.engine.preview_budget import DEFAULT_PREVIEW_SHARE
from protocol.enums import BlockPreset, Mode, Sampler

log = logging.getLogger("backend")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default="tiny",
        help="'tiny' (embedded random-weight TEST model), 'sdxl' (hub repo, needs network or a filled "
        "cache), a diffusers folder, or a single-file .safetensors checkpoint (default: tiny)",
    )
    group.add_argument("--ip-adapter", help="IP-Adapter .bin/.safetensors file or hub path")
    group.add_argument("--image-encoder", help="CLIP image encoder folder or hub path")
    group.add_argument(
        "--controlnet",
        help="canny ControlNet folder or repo id (e.g. diffusers/controlnet-canny-sdxl-1.0) for mode control",
    )
    group.add_argument(
        "--vae",
        help="a separate SDXL VAE: folder, .safetensors file or repo id (e.g. madebyollin/sdxl-vae-fp16-fix, "
        "which decodes in fp16 without NaN and without the fp32 upcast)",
    )
    group.add_argument(
        "--base-config", help="for a single-file model: a diffusers folder/repo with its configs"
    )
    group.add_argument(
        "--preview-vae",
        default="auto",
        metavar="auto|none|PATH",
        help="the tiny autoencoder for canvas-size step previews: auto (madebyollin/taesdxl from the hub "
        "or its cache, else linear previews with one logged line), none (linear previews at 1/8 size), "
        "or a folder, repo id, or taesdxl_decoder .safetensors/.pth file (an error at start if it fails)",
    )
    group.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="[NAME=]FILE",
        help="a LoRA to offer (repeatable): a local .safetensors file (diffusers/PEFT or Kohya layout) or "
        "owner/repo/file.safetensors on the hub; jobs select it by NAME (default: the file's stem)",
    )
    group.add_argument(
        "--speed",
        action="append",
        default=[],
        metavar="PRESET",
        help="hyper-8-cfg, lightning-4 or lcm-4: a few-step preset to offer (repeatable), loading its "
        "LoRA from the hub unless --lora gives a file under the LoRA's name; 'generate' also applies the "
        "first one to its job",
    )
    group.add_argument("--cache-dir", help="Hugging Face cache folder")
    group.add_argument("--offline", action="store_true", help="only use files already on disk")
    group.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    group.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the UNet's repeated blocks (GPU: faster steps after a longer start; changing "
        "the style strength or preset never recompiles)",
    )
    group.add_argument("--dtype", default="auto", help="auto, fp16, bf16 or fp32")
    group.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for PyTorch (default: $INSTANTSTYLE_TORCH_THREADS, else one per core); the same "
        "seed, device, dtype and thread count give the same pixels, another count may differ by a level",
    )
    group.add_argument(
        "--memory-tier",
        default="auto",
        help="auto (the fastest whose computed peak fits the GPU's free memory: fp16 SDXL runs full on "
        "16 GB, encoders-off on 12 GB, group-offload on 8 GB and less), full, encoders-off, model-offload "
        "or group-offload",
    )


def model_spec(args: argparse.Namespace):  # -> ModelSpec
    from dataclasses import replace

    from backend.engine.loading import ModelSpec
    from backend.engine.loras import LoraSource
    from backend.engine.speed_presets import speed_preset
    from backend.tiny.layouts import ensure_tiny_model

    if args.model == "tiny":
        spec = ensure_tiny_model().spec("diffusers")
    elif args.model == "sdxl":
        spec = ModelSpec()
    else:
        spec = ModelSpec(base=args.model, label=Path(args.model).name)
    overrides = {
        "ip_adapter": args.ip_adapter,
        "image_encoder": args.image_encoder,
        "controlnet": args.controlnet,
        "vae": args.vae,
        "base_config": args.base_config,
        "cache_dir": args.cache_dir,
        "preview_vae": args.preview_vae,
    }
    spec = replace(spec, **{k: v for k, v in overrides.items() if v})
    loras = tuple(LoraSource.parse(text) for text in args.lora)
    presets = tuple(speed_preset(name).name for name in dict.fromkeys(args.speed))
    spec = replace(spec, loras=loras, speed_presets=presets)
    return replace(spec, local_files_only=True) if args.offline else spec


def load_plan(args: argparse.Namespace):  # -> LoadPlan
    """What the model options ask to load, where and how (no weight read yet)."""
    from backend.engine.engine import LoadPlan

    spec = model_spec(args)
    if spec.is_test_model:
        log.warning("using the %s", spec.label)
    return LoadPlan.make(spec, args.device, args.dtype, args.memory_tier, compile=args.compile)


def load_engine(args: argparse.Namespace):  # -> InstantStyleEngine
    from backend.engine.engine import InstantStyleEngine

    return InstantStyleEngine.load_planned(load_plan(args))


def style_argument(text: str) -> tuple[Path, float]:
    path, _, weight = text.partition("=")
    return Path(path), float(weight) if weight else 1.0


def region_argument(text: str) -> tuple[Path, Path, float]:
    mask, sep, style = text.partition(":")
    if not sep or not style:
        raise argparse.ArgumentTypeError(f"expected MASK:IMAGE[=WEIGHT], got {text!r}")
    image, weight = style_argument(style)
    return Path(mask), image, weight


def sweep_argument(text: str):  # -> SweepValues
    from protocol import SweepAxis, SweepValues

    axis, sep, values = text.partition("=")
    try:
        kind = SweepAxis(axis.strip())
    except ValueError:
        names = ", ".join(a.value for a in SweepAxis)
        raise argparse.ArgumentTypeError(f"unknown sweep axis {axis!r}: expected one of {names}") from None
    if not sep or not values.strip():
        raise argparse.ArgumentTypeError(f"expected {axis}=V1,V2,..., got {text!r}")
    items = [v.strip() for v in values.split(",")]
    try:
        parsed = (
            items
            if kind is SweepAxis.PRESET
            else [int(v) if kind is SweepAxis.SEED else float(v) for v in items]
        )
    except ValueError:
        raise argparse.ArgumentTypeError(f"sweep {axis} values must be numbers, got {values!r}") from None
    return SweepValues(kind, parsed)


def lora_weight_argument(text: str) -> tuple[str, float]:
    name, _, weight = text.partition("=")
    return name, float(weight) if weight else 1.0


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of one job, shared by ``generate`` and the headless client."""
    parser.add_argument(
        "--style",
        action="append",
        default=[],
        type=style_argument,
        metavar="IMAGE[=WEIGHT]",
        help="style reference (repeat to blend several)",
    )
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative", default=None, help="negative prompt (default: InstantStyle's)")
    parser.add_argument("--content", default="", help="content of the reference to subtract, e.g. 'a cat'")
    parser.add_argument("--content-scale", type=float, default=0.5)
    parser.add_argument("--preset", choices=[p.value for p in BlockPreset], default=BlockPreset.STYLE.value)
    parser.add_argument(
        "--blocks", help='custom per-block map as JSON, e.g. \'{"up": {"block_0": [0, 1, 0]}}\''
    )
    parser.add_argument(
        "--region",
        action="append",
        default=[],
        type=region_argument,
        metavar="MASK:IMAGE[=WEIGHT]",
        help="a part of the picture (white in MASK, at the output's size) styled by IMAGE (repeat with "
        "the same MASK to blend several); --style then styles the rest",
    )
    parser.add_argument("--style-scale", type=float, default=1.0)
    parser.add_argument(
        "--layout-push",
        type=float,
        default=2.0,
        help="preset precise: how hard the reference's layout is pushed away (0 to 5; 0 = preset style)",
    )
    parser.add_argument("--mode", choices=[m.value for m in Mode], default=Mode.TXT2IMG.value)
    parser.add_argument("--init", type=Path, help="image to stylize (img2img, inpaint, control)")
    parser.add_argument("--mask", type=Path, help="inpaint mask (white = change)")
    parser.add_argument("--strength", type=float, default=0.6)
    parser.add_argument("--control-scale", type=float, default=0.6, help="ControlNet scale (mode control)")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--steps", type=int, help="default: the speed preset's, else 30")
    parser.add_argument("--cfg", type=float, help="guidance scale; default: the speed preset's, else 5")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--sweep",
        action="append",
        default=[],
        type=sweep_argument,
        metavar="AXIS=V1,V2,...",
        help="a grid over style_scale, content_scale, preset or seed (up to two --sweep): one scored "
        "picture per cell, e.g. --sweep style_scale=0.4,0.7,1.0 --sweep content_scale=0,0.5",
    )
    parser.add_argument(
        "--sampler",
        choices=[s.value for s in Sampler],
        help="default: the speed preset's, else the model's own scheduler",
    )
    parser.add_argument(
        "--use-lora",
        action="append",
        default=[],
        type=lora_weight_argument,
        metavar="NAME[=WEIGHT]",
        help="apply a LoRA the backend offers (repeatable; weight 1 by default)",
    )
    parser.add_argument("--out", type=Path, default=Path("out.png"))
    parser.add_argument("--previews", type=Path, help="folder to write each step's preview PNG into")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="run one InstantStyle job and write PNG files")
    add_job_arguments(gen)
    add_model_arguments(gen)

    serve = commands.add_parser("serve", help="run the WebSocket server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument(
        "--token", help="required from clients (env INSTANTSTYLE_TOKEN); mandatory off loopback"
    )
    serve.add_argument("--max-side", type=int, default=2048, help="largest width/height accepted")
    serve.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    serve.add_argument(
        "--exit-with-stdin",
        action="store_true",
        help="shut down when stdin closes (the process that started the server is gone): for launchers",
    )
    serve.add_argument(
        "--preview-budget",
        type=float,
        metavar="PERCENT",
        default=DEFAULT_PREVIEW_SHARE * 100,
        help="step previews cost at most this share of each job's denoising time, the first step's "
        "and the result's always shown, at most ten a second (default %(default)g)",
    )
    serve.add_argument(
        "--no-warm-up", action="store_true", help="skip the small job that warms the model up after loading"
    )
    serve.add_argument(
        "--ray",
        metavar="local|auto|ADDRESS",
        help="run jobs on Ray workers, one per GPU, each with its own copy of the model: 'local' starts Ray "
        "here (every GPU of this machine), 'auto' joins the cluster this machine belongs to, ADDRESS joins "
        "another (head:6379 or ray://head:10001); see docs/SCALING.md",
    )
    serve.add_argument(
        "--workers", type=int, help="with --ray: how many workers (default: one per GPU of the cluster, or 1)"
    )
    add_model_arguments(serve)

    doctor = commands.add_parser(
        "doctor", help="what this machine runs and whether a job works: text for a bug report"
    )
    from backend.doctor import add_doctor_arguments

    add_doctor_arguments(doctor)
    add_model_arguments(doctor)

    models = commands.add_parser(
        "models", help="the model's files from the hub: --plan (sizes, free disk) or --download, as JSON"
    )
    from backend.models_command import add_models_arguments

    add_models_arguments(models)
    add_model_arguments(models)

    tiny = commands.add_parser("make-tiny", help="write the tiny test model in every layout")
    tiny.add_argument("--out", type=Path, help="folder (default: the user cache)")
    return parser


def _open(path: Path):  # -> PIL.Image.Image
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.copy()


def job_from_arguments(args: argparse.Namespace, job_id: int):  # -> (Generate, {index: PIL image})
    """A ``generate`` message and its INPUT images from ``add_job_arguments``' options."""
    from protocol import Generate, LoraWeight, Region, StyleImage

    inputs = {i: _open(path) for i, (path, _) in enumerate(args.style)}
    # A speed preset fills in what the job's own options leave open (``generate --speed``).
    preset = None
    if getattr(args, "speed", None):
        from backend.engine.speed_presets import speed_preset

        preset = speed_preset(args.speed[0])
    loras = list(args.use_lora)
    if preset and preset.lora.name not in {name for name, _ in loras}:
        loras.append((preset.lora.name, preset.lora_weight))
    regions: dict[Path, Region] = {}
    for mask_path, image_path, weight in args.region:
        if mask_path not in regions:
            regions[mask_path] = Region(len(inputs), [], name=mask_path.stem)
            inputs[len(inputs)] = _open(mask_path).convert("L")
        inputs[len(inputs)] = _open(image_path)
        regions[mask_path].style_images.append(StyleImage(len(inputs) - 1, weight))
    init_index = mask_index = None
    if args.init:
        init_index = len(inputs)
        inputs[init_index] = _open(args.init)
    if args.mask:
        mask_index = len(inputs)
        inputs[mask_index] = _open(args.mask).convert("L")
    message = Generate(
        job_id=job_id,
        prompt=args.prompt,
        style_images=[StyleImage(i, weight) for i, (_, weight) in enumerate(args.style)],
        negative_prompt=args.negative,
        content_text=args.content,
        content_scale=args.content_scale,
        preset=BlockPreset(args.preset),
        block_scales=json.loads(args.blocks) if args.blocks else None,
        style_scale=args.style_scale,
        layout_push=args.layout_push,
        mode=Mode(args.mode),
        init_image=init_index,
        mask=mask_index,
        strength=args.strength,
        control_scale=args.control_scale,
        width=args.width,
        height=args.height,
        steps=args.steps or (preset.steps if preset else 30),
        guidance_scale=args.cfg if args.cfg is not None else (preset.guidance_scale if preset else 5.0),
        seed=args.seed,
        batch=args.batch,
        sampler=Sampler(args.sampler) if args.sampler else (preset.sampler if preset else None),
        loras=[LoraWeight(name, weight) for name, weight in loras],
        regions=list(regions.values()),
        sweep=list(args.sweep),
    )
    return message, inputs


def png_labels(model_label: str, prompt: str, seed: int):  # -> PngImagePlugin.PngInfo
    """Text chunks every PNG we write carries: which model (the TEST model says so), prompt, seed."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("instantstyle:model", model_label)
    info.add_text("instantstyle:prompt", prompt)
    info.add_text("instantstyle:seed", str(seed))
    return info


def run_generate(args: argparse.Namespace) -> int:
    from PIL import Image

    from backend.server.inputs import build_request
    from backend.threads import describe_numerics

    # Everything about the job is checked before minutes go into loading a model.
    message, images = job_from_arguments(args, job_id=1)
    request = build_request(message, images)
    request.validate()
    log.info("torch: %s", describe_numerics())  # what decides the last bits of a CPU job's pixels
    engine = load_engine(args)

    if args.previews:  # the folder wants every step's preview, whatever it costs
        request = dataclasses.replace(request, preview_share=None)

    def save_preview(preview) -> None:
        Image.fromarray(preview.rgb).save(args.previews / f"step-{preview.step:03d}.png")
        print(f"step {preview.step}/{preview.total}", file=sys.stderr)

    if args.previews:
        args.previews.mkdir(parents=True, exist_ok=True)
    result = engine.generate(request, on_step=save_preview if args.previews else None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for index, (pixels, seed) in enumerate(zip(result.images, result.seeds, strict=True)):
        path = args.out if index == 0 else args.out.with_stem(f"{args.out.stem}-{index}")
        Image.fromarray(pixels).save(path, pnginfo=png_labels(result.model_label, args.prompt, seed))
        cell = result.cells[index] if result.cells else None
        settings = (
            f"style {cell.style_scale}, content {cell.content_scale}, {cell.preset.value}, "
            if cell is not None
            else ""
        )
        scores = describe_scores(result.scores[index])
        print(f"wrote {path} ({settings}seed {seed}, {result.model_label}) {scores}")
    if result.is_test_model:
        print("note: made with the embedded TEST model (random weights): the picture is noise by design")
    return 0


def describe_scores(scores) -> str:
    """``style 0.812 · content 0.104 · prompt 0.297`` (what is not measured is left out)."""
    parts = [("style", scores.style), ("content", scores.content), ("prompt", scores.prompt)]
    return " · ".join(f"{name} {value:.3f}" for name, value in parts if value is not None)


def main(argv: list[str] | None = None) -> int:
    """Run a command; expected failures (bad input, missing files) print one line, not a traceback."""
    from backend.engine.blocks import BlockMapError
    from backend.engine.loading import ModelLoadError
    from backend.engine.request import RequestError
    from backend.engine.style_embedding import EmbeddingSpaceMismatch
    from backend.preflight import ArgumentError
    from backend.server.config import ConfigError
    from backend.server.ray_pool import RayUnavailable
    from backend.threads import ThreadCountError

    try:
        return _run(argv)
    except (
        RequestError,
        BlockMapError,
        ModelLoadError,
        EmbeddingSpaceMismatch,
        ConfigError,
        ArgumentError,
        OSError,
        json.JSONDecodeError,
        RayUnavailable,
        ThreadCountError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def serve_on_ray(args: argparse.Namespace) -> int:
    """``serve --ray``: the same server, its jobs run by a pool of Ray actors."""
    from backend.preflight import ArgumentError
    from backend.server.app import run_server
    from backend.server.ray_actor import ActorPlan
    from backend.server.ray_pool import RaySettings, RayWorkerPool, check_worker_device, connect
    from backend.threads import requested_threads

    if args.workers is not None and args.workers < 1:
        raise ArgumentError(f"--workers {args.workers}: expected 1 or more")
    check_worker_device(args.device)  # before Ray starts: one line
    settings = RaySettings(args.ray, args.workers)
    owns_ray = connect(settings)  # one line (RayUnavailable) when Ray cannot be reached
    spec = model_spec(args)
    plan = ActorPlan(
        spec,
        args.device,
        args.dtype,
        args.memory_tier,
        args.compile,
        torch_threads=requested_threads(args.threads),
        warm_up=not args.no_warm_up,
    )
    pool = RayWorkerPool(plan, settings, owns_ray)
    return run_server(args, pool.load_plan_info(), lambda report: pool.start(report))


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from backend.server.logs import configure_logging

    level = logging.DEBUG if args.verbose else logging.INFO
    configure_logging(level, json_lines=args.command == "serve" and args.log_json)
    if args.command == "make-tiny":
        from backend.tiny.layouts import ensure_tiny_model

        print(ensure_tiny_model(args.out).root)
        return 0
    from backend.preflight import check_model_arguments, check_port
    from backend.threads import describe_numerics, pin_threads

    pin_threads(args.threads)  # a bad count is an argument error like the others
    check_model_arguments(args)
    if args.command == "generate":
        return run_generate(args)
    if args.command == "models":
        from backend.models_command import run_models

        return run_models(args)
    if args.command == "doctor":
        from backend.doctor import run_doctor

        return run_doctor(args)
    from backend.engine.engine import InstantStyleEngine
    from backend.server.app import config_from_args, run_server
    from protocol import ModelPhase, ModelStatus

    config = config_from_args(args)
    config.check()
    check_port(config.host, config.port)
    if args.ray:
        return serve_on_ray(args)  # each actor pins its own threads
    log.info("torch: %s", describe_numerics())  # what decides the last bits of a CPU job's pixels
    plan = load_plan(args)

    def load(report):  # on the server's loading thread, while it already accepts clients
        engine = InstantStyleEngine.load_planned(plan, report)
        if not args.no_warm_up:
            report(ModelStatus(ModelPhase.WARMING_UP, "Warming up (a 512x512, 2-step job)"))
            log.info("warmed up in %.1f s (a 512x512, 2-step job)", engine.warm_up())
        return engine

    return run_server(args, plan, load)
