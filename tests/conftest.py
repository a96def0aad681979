"""Shared fixtures: the tiny offline model, generated once and cached under .cache/."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# The tiny model is generated once into the repository's ignored .cache/, shared with
# subprocesses (``python -m backend serve --model tiny``) started by tests.
os.environ.setdefault("INSTANTSTYLE_HOME", str(REPO / ".cache"))
# Pixel-exact tests compare a job run here (the reference engine) with the same job run by a server
# process, a Ray actor or Krita's backend: every one of them takes this thread count (inherited
# through the environment; backend/threads.py says why the count decides the last bits).
os.environ.setdefault("INSTANTSTYLE_TORCH_THREADS", "2")

import numpy as np
import pytest
from PIL import Image

from backend.threads import pin_threads
from backend.tiny.layouts import TinyModelPaths, default_root, ensure_tiny_model

pin_threads()

TINY_ROOT = default_root()


@pytest.fixture(scope="session")
def tiny_paths() -> TinyModelPaths:
    return ensure_tiny_model(TINY_ROOT)


@pytest.fixture(scope="session")
def engine(tiny_paths: TinyModelPaths):
    from backend.engine.engine import InstantStyleEngine

    return InstantStyleEngine.load(tiny_paths.spec("diffusers"), device="cpu")


@pytest.fixture(scope="session")
def plus_engine(tiny_paths: TinyModelPaths):
    """The tiny model with its "plus" IP-Adapter (16 tokens from the image encoder's patch features)."""
    from backend.engine.engine import InstantStyleEngine
    from backend.tiny.layouts import TinyAdapter

    return InstantStyleEngine.load(tiny_paths.spec("diffusers", TinyAdapter.PLUS_SDXL_VIT_H), device="cpu")


@pytest.fixture(scope="session")
def sd15_paths():
    """The tiny SD1.5 model in every on-disk layout (``backend/tiny/sd15_layouts.py``)."""
    from backend.tiny.sd15_layouts import ensure_tiny_sd15_model

    return ensure_tiny_sd15_model()


@pytest.fixture(scope="session")
def sd15_engine(sd15_paths):
    from backend.engine.engine import InstantStyleEngine

    return InstantStyleEngine.load(sd15_paths.spec("diffusers"), device="cpu")


@pytest.fixture(scope="session")
def sd15_plus_engine(sd15_paths):
    from backend.engine.engine import InstantStyleEngine

    return InstantStyleEngine.load(sd15_paths.spec("diffusers", plus=True), device="cpu")


def noise_image(seed: int, size: int = 64) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture
def style_image() -> Image.Image:
    return noise_image(1)
