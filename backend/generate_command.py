"""``python -m backend generate``: one job from the command line, its arguments and its PNG files.

The headless client (``backend.client``) takes the same job arguments and writes the same files, so
both live here; ``cli`` keeps the model arguments, the parser and the commands' dispatch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from protocol.enums import BlockPreset, ControlKind, Mode, ModelFamily, Sampler
from protocol.limits import DEFAULT_LEAKAGE_MARGIN, DEFAULT_PROMPT_MARGIN

log = logging.getLogger("backend")


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


def size_argument(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT``, e.g. ``4096x3072``."""
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT (e.g. 4096x3072), got {text!r}")
    return int(width), int(height)


def add_refine_arguments(parser: argparse.ArgumentParser) -> None:
    """``generate`` at a canvas's own resolution (``backend/engine/refine.py``)."""
    group = parser.add_argument_group("canvas resolution")
    group.add_argument(
        "--target-size",
        type=size_argument,
        metavar="WxH",
        help="the picture's size: made at the model's native area first, then upscaled and refined in "
        "tiles with the same style (e.g. 4096x3072); --width/--height are then not used",
    )
    group.add_argument("--refine-strength", type=float, default=0.35, help="how much the refine repaints")
    group.add_argument("--tile", type=int, default=0, help="refine tile side in px (default: native)")
    group.add_argument("--tile-overlap", type=int, default=0, help="px tiles share (default: tile/8)")


def with_refine(request, args: argparse.Namespace):  # -> GenerationRequest
    """The request at ``--target-size``, refined in tiles (unchanged without it)."""
    if not getattr(args, "target_size", None):
        return request
    from backend.engine.request import Refine

    width, height = args.target_size
    refine = Refine(args.refine_strength, args.tile, args.tile_overlap)
    return dataclasses.replace(request, width=width, height=height, refine=refine)


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
    parser.add_argument(
        "--control",
        choices=[kind.value for kind in ControlKind],
        default=ControlKind.EDGES.value,
        help="mode control: keep the init image's lines (edges, the backend's --controlnet) or the picture "
        "itself, changing its style (tile, the backend's --tile-controlnet)",
    )
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--steps", type=int, help="default: the speed preset's, else 30")
    parser.add_argument("--cfg", type=float, help="guidance scale; default: the speed preset's, else 5")
    parser.add_argument(
        "--guidance-rescale",
        type=float,
        metavar="0..1",
        help="CFG rescale against over-exposure (zero-terminal-SNR v-prediction models); default: the "
        "model's (0.7 for v-zsnr, else 0)",
    )
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
        "--auto",
        action="store_true",
        help="find the strength: search style x content scale small and fast, render the strongest style "
        "whose content leakage and prompt alignment stay within the margins of a no-style picture "
        "(--style-scale and --content-scale are then ignored; docs/AUTO_STRENGTH.md)",
    )
    parser.add_argument(
        "--leakage-margin", type=float, metavar="0..1", help=f"--auto's (default {DEFAULT_LEAKAGE_MARGIN})"
    )
    parser.add_argument(
        "--prompt-margin", type=float, metavar="0..1", help=f"--auto's (default {DEFAULT_PROMPT_MARGIN})"
    )
    parser.add_argument("--auto-presets", action="store_true", help="--auto also tries preset precise")
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


def _open(path: Path):  # -> PIL.Image.Image
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.copy()


CONVERTED = frozenset({"preset", "mode", "mask", "steps", "sampler", "sweep", "control", "auto"})
"""Options named like a ``generate`` field whose value still needs converting (enums, files,
presets): ``job_from_arguments`` builds those itself."""


def same_named(args: argparse.Namespace) -> dict[str, object]:
    """Options whose name and value are the message's own (``--style-scale`` is ``style_scale``): a new
    setting of that kind needs only its ``add_argument``."""
    from protocol import Generate

    names = {f.name for f in dataclasses.fields(Generate)} - CONVERTED
    return {name: value for name, value in vars(args).items() if name in names}


def job_from_arguments(
    args: argparse.Namespace, job_id: int, family: ModelFamily = ModelFamily.SDXL
):  # -> (Generate, {index: PIL image})
    """A ``generate`` message and its INPUT images from ``add_job_arguments``' options (a speed preset's
    LoRA is the model ``family``'s)."""
    from protocol import Generate, InputSlots, LoraWeight

    slots = InputSlots()
    style_images = slots.styles((_open(path), weight) for path, weight in args.style)
    # A speed preset fills in what the job's own options leave open (``generate --speed``).
    preset = None
    if getattr(args, "speed", None):
        from backend.engine.speed_presets import speed_preset
        from backend.preflight import ArgumentError

        try:
            preset = speed_preset(args.speed[0], family)
        except ValueError as error:  # a preset the model's family has no LoRA for
            raise ArgumentError(f"--speed {args.speed[0]}: {error}") from None
    loras = list(args.use_lora)
    if preset and preset.lora.name not in {name for name, _ in loras}:
        loras.append((preset.lora.name, preset.lora_weight))
    references: dict[Path, list] = {}  # each region's mask once, with all its references
    for mask_path, image_path, weight in args.region:
        references.setdefault(mask_path, []).append((_open(image_path), weight))
    regions = [
        slots.region(mask_path.stem, _open(mask_path).convert("L"), weighted)
        for mask_path, weighted in references.items()
    ]
    init_index = slots.add_optional(_open(args.init) if args.init else None)
    mask_index = slots.add_optional(_open(args.mask).convert("L") if args.mask else None)
    converted = {  # named differently on the command line, or built from files and presets
        "job_id": job_id,
        "style_images": style_images,
        "negative_prompt": args.negative,
        "content_text": args.content,
        "preset": BlockPreset(args.preset),
        "block_scales": json.loads(args.blocks) if args.blocks else None,
        "mode": Mode(args.mode),
        "control": ControlKind(args.control),
        "init_image": init_index,
        "mask": mask_index,
        "steps": args.steps or (preset.steps if preset else 30),
        "guidance_scale": args.cfg if args.cfg is not None else (preset.guidance_scale if preset else 5.0),
        "sampler": Sampler(args.sampler) if args.sampler else (preset.sampler if preset else None),
        "loras": [LoraWeight(name, weight) for name, weight in loras],
        "regions": regions,
        "sweep": list(args.sweep),
        "auto": auto_argument(args),
    }
    message = Generate(**{**same_named(args), **converted})
    return message, slots.images


def auto_argument(args: argparse.Namespace):  # -> protocol.Auto | None
    """``--auto`` with its margins; a margin without ``--auto`` is a mistake worth one line."""
    from protocol import Auto

    given = [args.leakage_margin, args.prompt_margin]
    if not args.auto:
        if any(value is not None for value in given) or args.auto_presets:
            from backend.preflight import ArgumentError

            raise ArgumentError("--leakage-margin, --prompt-margin and --auto-presets need --auto")
        return None
    leakage, prompt = (
        default if value is None else value
        for value, default in zip(given, (DEFAULT_LEAKAGE_MARGIN, DEFAULT_PROMPT_MARGIN), strict=True)
    )
    return Auto(leakage, prompt, args.auto_presets)


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

    from backend import model_options  # looked up at run time: tests replace ``load_engine``
    from backend.engine.family_detect import detect_family
    from backend.server.inputs import build_request
    from backend.threads import describe_numerics

    # Everything about the job is checked before minutes go into loading a model.
    # The family only matters to a speed preset's LoRA: read from the checkpoint for that alone.
    family = detect_family(model_options.model_spec(args)) if args.speed else ModelFamily.SDXL
    message, images = job_from_arguments(args, 1, family)
    request = with_refine(build_request(message, images), args)
    request.validate()
    log.info("torch: %s", describe_numerics())  # what decides the last bits of a CPU job's pixels

    engine = model_options.load_engine(args)

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
    if result.auto is not None:
        auto = result.auto
        print(
            describe_search(
                auto.points, auto.choice.index, auto.choice.reason, (auto.width, auto.height), auto.steps
            )
        )
    if result.is_test_model:
        print("note: made with the embedded TEST model (random weights): the picture is noise by design")
    return 0


def describe_scores(scores) -> str:
    """``style 0.812 · content 0.104 · prompt 0.297`` (what is not measured is left out)."""
    parts = [("style", scores.style), ("content", scores.content), ("prompt", scores.prompt)]
    return " · ".join(f"{name} {value:.3f}" for name, value in parts if value is not None)


def describe_search(points, chosen: int, reason: str, size: tuple[int, int], steps: int) -> str:
    """An auto job's search (the engine's ``AutoOutcome`` or the wire's ``result.auto``), one line a
    point (the chosen one marked), then why it won."""
    lines = [f"searched at {size[0]}x{size[1]}, {steps} steps:"]
    for index, point in enumerate(points):
        mark = "*" if index == chosen else " "
        preset = "" if point.preset is BlockPreset.STYLE else f" ({point.preset.value})"
        settings = f"style {point.style_scale:.2f}, content {point.content_scale:.2f}{preset}"
        lines.append(f" {mark} {point.stage.value:8} {settings:32} {describe_scores(point.scores)}")
    return "\n".join([*lines, f"chose {reason}"])
