"""The model options every command shares (``--model``, adapters, LoRAs, device, dtype...) and what
they load: one module that ``serve``, ``generate``, ``doctor`` and ``models`` all import, so that no
command imports the command line's entry point."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from backend.engine.prediction import Prediction

log = logging.getLogger("backend")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default="tiny",
        help="'tiny' (embedded random-weight SDXL TEST model), 'tiny-vit-h' and 'tiny-plus' (the same with a "
        "ViT-H or a 'plus' IP-Adapter), 'tiny-sd15' and 'tiny-sd15-plus' (an SD1.5 one), 'sdxl' or 'sd15' "
        "(hub repos, need network or a filled cache), a diffusers folder, or a single-file .safetensors "
        "checkpoint: SDXL (Illustrious, NoobAI, Pony...) or SD1.5, read from the file (default: tiny)",
    )
    group.add_argument(
        "--ip-adapter",
        help="IP-Adapter .bin/.safetensors file or hub path: plain (ip-adapter_sdxl, "
        "ip-adapter_sdxl_vit-h, ip-adapter_sd15) or plus (ip-adapter-plus_sdxl_vit-h, ip-adapter-plus_sd15, "
        "with the ViT-H --image-encoder; no content subtraction); default: the model family's plain one",
    )
    group.add_argument(
        "--image-encoder", help="CLIP image encoder folder or hub path (default: the model family's)"
    )
    group.add_argument(
        "--content-text-encoder",
        default="auto",
        metavar="auto|none|PATH",
        help="the CLIP text tower for content subtraction when the model's does not share the image "
        "encoder's space (ViT-H adapters, SD1.5): auto (laion/CLIP-ViT-H-14-laion2B-s32B-b79K, loaded "
        "by the first job with a content text), none, or a folder or repo id holding a CLIP model",
    )
    group.add_argument(
        "--controlnet",
        help="canny ControlNet folder or repo id for mode control, or auto: the model family's "
        "(diffusers/controlnet-canny-sdxl-1.0, lllyasviel/control_v11p_sd15_canny): control jobs keep the "
        "init image's lines (generate --control edges)",
    )
    group.add_argument(
        "--csd",
        default="auto",
        metavar="auto|none|PATH",
        help="the style metric: CSD (Contrastive Style Descriptors, a ViT-L/14 trained to match styles, "
        "not subjects) from a checkpoint.pth or .safetensors file or owner/repo/file; auto: "
        "tomg-group-umd/CSD-ViT-L when it is already in the hub cache (never downloaded for it), else "
        "CLIP; none: CLIP",
    )
    group.add_argument(
        "--tile-controlnet",
        metavar="PATH|auto",
        help="Tile ControlNet folder or repo id for mode control, or auto: the model family's "
        "(xinsir/controlnet-tile-sdxl-1.0, lllyasviel/control_v11f1e_sd15_tile): control jobs keep the "
        "picture itself and change its style (generate --control tile); the tiny models ship both",
    )
    group.add_argument(
        "--vae",
        help="a separate VAE: folder, .safetensors file or repo id (e.g. madebyollin/sdxl-vae-fp16-fix, "
        "which decodes in fp16 without NaN and without the fp32 upcast)",
    )
    group.add_argument(
        "--base-config", help="for a single-file model: a diffusers folder/repo with its configs"
    )
    group.add_argument(
        "--preview-vae",
        default="auto",
        metavar="auto|none|PATH",
        help="the tiny autoencoder for canvas-size step previews: auto (madebyollin/taesdxl, or taesd for "
        "SD1.5, from the hub or its cache, else linear previews with one logged line), none (linear "
        "previews at 1/8 size), or a folder, repo id, or taesd(xl)_decoder .safetensors/.pth file "
        "(an error at start if it fails)",
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
        help="hyper-8-cfg, lightning-4 (SDXL only) or lcm-4: a few-step preset to offer (repeatable), "
        "loading its LoRA from the hub unless --lora gives a file under the LoRA's name; 'generate' also "
        "applies the first one to its job",
    )
    group.add_argument(
        "--prediction",
        default="auto",
        choices=[p.value for p in Prediction],
        help="what the model predicts: auto (a single file's v_pred/ztsnr marker keys, else the model's "
        "own scheduler), epsilon, v, or v-zsnr (v-prediction with zero terminal SNR: NoobAI-XL v-pred)",
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


TINY_MODELS = ("tiny", "tiny-vit-h", "tiny-plus", "tiny-sd15", "tiny-sd15-plus")
"""``--model`` names of the tiny TEST models, one per family and IP-Adapter they come with."""


def model_spec(args: argparse.Namespace):  # -> ModelSpec
    from dataclasses import replace

    from backend.engine.loading import LoraSource, ModelSpec
    from backend.engine.speed_presets import ALL_PRESET_NAMES
    from backend.tiny.layouts import TinyAdapter, ensure_tiny_model
    from protocol.enums import ModelFamily

    if args.model in ("tiny-sd15", "tiny-sd15-plus"):
        from backend.tiny.sd15_layouts import ensure_tiny_sd15_model

        spec = ensure_tiny_sd15_model().spec("diffusers", plus=args.model == "tiny-sd15-plus")
    elif args.model in TINY_MODELS:
        adapter = {"tiny": TinyAdapter.SDXL, "tiny-vit-h": TinyAdapter.SDXL_VIT_H}.get(
            args.model, TinyAdapter.PLUS_SDXL_VIT_H
        )
        spec = ensure_tiny_model().spec("diffusers", adapter)
    elif args.model == "sdxl":
        spec = ModelSpec()
    elif args.model == "sd15":
        spec = ModelSpec(family=ModelFamily.SD15)
    else:
        spec = ModelSpec(base=args.model, label=Path(args.model).name)
    overrides = {
        "ip_adapter": args.ip_adapter,
        "image_encoder": args.image_encoder,
        "controlnet": args.controlnet,
        "tile_controlnet": args.tile_controlnet,
        "csd": args.csd,
        "vae": args.vae,
        "base_config": args.base_config,
        "cache_dir": args.cache_dir,
        "preview_vae": args.preview_vae,
        "content_text_encoder": args.content_text_encoder,
        "prediction": Prediction(args.prediction) if args.prediction != "auto" else None,
    }
    spec = replace(spec, **{k: v for k, v in overrides.items() if v})
    loras = tuple(LoraSource.parse(text) for text in args.lora)
    presets = tuple(name for name in dict.fromkeys(args.speed) if name in ALL_PRESET_NAMES)
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
