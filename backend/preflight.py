"""Checks of the command line that run before a model is loaded: a typo costs a second, not minutes.

Each check raises ``ArgumentError`` with one line that names the option and
what to do about it.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
from pathlib import Path

from backend.engine.loading import DTYPES, SINGLE_FILE_SUFFIXES
from backend.engine.memory import MemoryTier


class ArgumentError(ValueError):
    """An option that cannot work as given."""


def check_device(device: str) -> None:
    """``--device``: known, and present on this machine."""
    import torch

    if device in ("auto", "cpu"):
        return
    kind = device.split(":", 1)[0]
    if kind == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only"
            raise ArgumentError(
                f"--device {device}: PyTorch sees no CUDA GPU here (this torch build: {build}); "
                "use --device cpu, or install PyTorch's CUDA build (installer/setup_backend.sh does)"
            )
        index = int(device.split(":", 1)[1]) if ":" in device and device.split(":", 1)[1].isdigit() else 0
        if index >= torch.cuda.device_count():
            raise ArgumentError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA GPUs")
    elif kind == "mps":
        if not torch.backends.mps.is_available():
            raise ArgumentError(
                f"--device {device}: Apple's Metal (MPS) is not available here; use --device cpu"
            )
    else:
        raise ArgumentError(f"--device {device}: expected auto, cuda, cuda:N, mps or cpu")


def check_choices(args: argparse.Namespace) -> None:
    dtypes = ["auto", *DTYPES]
    if args.dtype not in dtypes:
        raise ArgumentError(f"--dtype {args.dtype}: expected one of {', '.join(dtypes)}")
    tiers = ["auto", *(tier.value for tier in MemoryTier)]
    if args.memory_tier not in tiers:
        raise ArgumentError(f"--memory-tier {args.memory_tier}: expected one of {', '.join(tiers)}")


def _looks_local(option: str, text: str) -> bool:
    """Whether ``text`` names a local path. A weight file's suffix means a local file, except for
    ``--ip-adapter``, whose hub form names a file too (``h94/IP-Adapter/sdxl_models/x.safetensors``)."""
    if text.startswith((".", "/", "~")):
        return True
    if option in ("--ip-adapter", "--csd"):  # their hub form names a file: owner/repo/file
        return len(Path(text).parts) < 3
    return Path(text).suffix in (*SINGLE_FILE_SUFFIXES, ".bin", ".pth")


def check_model_paths(args: argparse.Namespace) -> None:
    """Local model paths exist (hub ids are checked by the loader, which may need the network)."""
    options = {
        "--model": args.model if args.model not in ("tiny", "sdxl") else None,
        "--ip-adapter": args.ip_adapter,
        "--image-encoder": args.image_encoder,
        "--controlnet": args.controlnet,
        "--tile-controlnet": args.tile_controlnet,
        "--vae": args.vae,
        "--base-config": args.base_config,
        "--preview-vae": args.preview_vae if args.preview_vae not in ("auto", "none") else None,
        "--csd": args.csd if args.csd not in ("auto", "none") else None,
    }
    for option, value in options.items():
        if value and _looks_local(option, value) and not Path(value).expanduser().exists():
            raise ArgumentError(f"{option} {value}: no such file or folder")


def check_port(host: str, port: int) -> None:
    """``--port``: in range, and free on ``host`` (0 picks a free one)."""
    if not 0 <= port <= 65535:
        raise ArgumentError(f"--port {port}: expected 0 to 65535")
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise ArgumentError(f"--host {host}: cannot resolve it ({error})") from error
    family, kind, _, _, address = infos[0]
    with contextlib.closing(socket.socket(family, kind)) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise ArgumentError(
                f"--port {port}: {host}:{port} is not free ({error.strerror}); is another backend running?"
            ) from error


def check_lora_options(args: argparse.Namespace) -> None:
    """``--lora`` and ``--speed`` are well formed. A LoRA file that is missing or does not fit the model
    is no reason to refuse starting: the server serves without it and says why (``loras.py``)."""
    from backend.engine.loading import LoraSource
    from backend.engine.speed_presets import ALL_PRESET_NAMES

    for text in args.lora:
        try:
            LoraSource.parse(text)
        except ValueError as error:
            raise ArgumentError(f"--lora {text}: {error}") from None
    for name in args.speed:
        if name not in ALL_PRESET_NAMES:
            raise ArgumentError(
                f"--speed {name}: unknown speed preset {name!r}: "
                f"expected one of {', '.join(ALL_PRESET_NAMES)}"
            )


def check_model_arguments(args: argparse.Namespace) -> None:
    check_choices(args)
    check_lora_options(args)
    check_device(args.device)
    check_model_paths(args)
