"""Where each memory tier keeps the models, read the way a GPU runs them (the CPU cannot show it).

Each test here failed before its fix: the group-offloaded VAE, a 1024² decode that never tiled, the
image encoder that visited the GPU on its way to CPU memory, text_encoder_2 left beside the UNet by
accelerate's hook chain, a batch decoded all at once, and the linear previews' per-step copies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import accelerate.hooks
import pytest
import torch
from torch.overrides import TorchFunctionMode

from backend.engine.decode import TILE_SIDE, set_decode_tiles
from backend.engine.engine import InstantStyleEngine
from backend.engine.memory import MemoryTier, models, moved_by_hooks, place, visiting
from backend.engine.memory_budget import AT_REST_ON_GPU
from backend.engine.previews import SDXL_LATENT_RGB_BIAS, SDXL_LATENT_RGB_FACTORS, rgb_tensor
from backend.engine.request import GenerationRequest, StyleReference
from backend.tiny.components import build_models, build_vae
from protocol import Mode
from tests.conftest import noise_image

STYLE, INIT = noise_image(41), noise_image(42)


def job(prompt: str, **fields) -> GenerationRequest:
    base = {"style_images": [StyleReference(STYLE)], "width": 64, "height": 64, "steps": 2, "seed": 3}
    return GenerationRequest(prompt=prompt, **{**base, **fields})


def test_group_offload_leaves_the_vae_whole_on_the_gpu(tiny_paths):
    """With CUDA streams, group offload restores its fp16 copy of each layer at onload: the decode's fp32
    upcast was undone mid-decode ("Input type (float) and bias type (c10::Half)")."""
    engine = InstantStyleEngine.load(
        tiny_paths.spec("diffusers"), device="cpu", dtype="fp16", memory_tier="group-offload"
    )
    hooked = {name for name, module in models(engine.pipeline).items() if moved_by_hooks(module)}
    assert hooked == {"unet", "text_encoder", "text_encoder_2", "image_encoder"}  # not the VAE
    assert engine.pipeline.vae.device.type == "cpu"  # the device jobs run on (the GPU's stand-in)
    assert moved_by_hooks(engine.controlnet)  # layer by layer too: 2.33 GiB whole
    # The image encoder and the ControlNet visit the GPU through their hooks, never whole: the meta
    # device stands for the GPU (a whole visit would leave their weights there).
    for module in (engine.pipeline.image_encoder, engine.controlnet):
        with visiting(module, torch.device("meta")):
            pass
        assert {p.device.type for p in module.parameters()} == {"cpu"}
    result = engine.generate(job("a harbour", batch=2))
    assert engine.pipeline.vae.dtype == torch.float16 and len(result.images) == 2


def test_the_tiers_that_tile_tile_a_1024_decode():
    """SDXL's VAE has sample_size 1024: enable_tiling() alone never tiled at 1024² or below."""
    tiny = build_vae()
    vae = type(tiny).from_config({**tiny.config, "sample_size": 1024})  # SDXL's sample size, tiny widths
    calls = []
    original = vae.tiled_decode
    vae.tiled_decode = lambda z, **kw: (calls.append(tuple(z.shape)), original(z, **kw))[1]
    latents = torch.randn(1, 4, 128, 128)
    assert set_decode_tiles(vae, always=True, longest_side=1024) == TILE_SIDE == 512
    with torch.no_grad():
        image = vae.decode(latents).sample
    assert calls == [(1, 4, 128, 128)] and vae.tile_latent_min_size == 64
    assert image.shape == (1, 3, 1024, 1024) and torch.isfinite(image).all()
    assert set_decode_tiles(vae, always=False, longest_side=1024) is None and not vae.use_tiling
    assert set_decode_tiles(vae, always=False, longest_side=2048) == 1024  # the full tier, huge canvas


@pytest.mark.parametrize(("tier", "tiled"), [(MemoryTier.FULL, False), (MemoryTier.ENCODERS_OFF, True)])
def test_the_engine_sets_the_tiles_per_job(tiny_paths, tier, tiled):
    engine = InstantStyleEngine.load(tiny_paths.spec("diffusers"), device="cpu", memory_tier=tier.value)
    engine.prepare(job("a harbour", width=128, height=128))
    assert engine.pipeline.vae.use_tiling is tiled


def test_encoders_off_never_moves_the_image_encoder(tmp_path):
    """``pipeline.to(device)`` put all 10.55 GiB on the GPU before the image encoder went back: the
    meta device stands for the GPU (moving there loses the weights, so a visit cannot be undone)."""
    built = build_models(tmp_path)
    pipeline, encoder = built.pipeline, built.image_encoder
    pipeline.register_modules(image_encoder=encoder)
    before = {name: p.clone() for name, p in encoder.named_parameters()}
    place(pipeline, None, MemoryTier.ENCODERS_OFF, torch.device("meta"))
    assert {p.device.type for p in encoder.parameters()} == {"cpu"}
    assert all(torch.equal(p, before[name]) for name, p in encoder.named_parameters())
    assert pipeline.unet.device.type == "meta" and pipeline.text_encoder_2.device.type == "meta"


@contextlib.contextmanager
def gpu_residency() -> Iterator[set[torch.nn.Module]]:
    """Which models accelerate's offload hooks would keep on a GPU. On the CPU a hook skips moving its
    predecessor (it is "already on the CPU"), so this follows the hooks' GPU rules: a model arrives at
    its hook's pre_forward, its predecessor leaves there, and any model leaves at ``init_hook``."""
    resident: set[torch.nn.Module] = set()
    offload, pre_forward = accelerate.hooks.CpuOffload.init_hook, accelerate.hooks.CpuOffload.pre_forward

    def leave(self, module):
        resident.discard(module)
        return offload(self, module)

    def arrive(self, module, *args, **kwargs):
        if self.prev_module_hook is not None:
            resident.discard(self.prev_module_hook.model)
        resident.add(module)
        return pre_forward(self, module, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(accelerate.hooks.CpuOffload, "init_hook", leave)
        patch.setattr(accelerate.hooks.CpuOffload, "pre_forward", arrive)
        yield resident


@pytest.mark.parametrize("mode", [Mode.TXT2IMG, Mode.IMG2IMG])
def test_model_offload_denoises_with_the_unet_alone_on_the_gpu(tiny_paths, mode):
    """The hook chain offloads only a model's predecessor: a new prompt with a cached style ran the text
    encoders, skipped the image encoder, and text_encoder_2 (1.29 GiB) stayed beside the UNet."""
    with gpu_residency() as resident:
        engine = InstantStyleEngine.load(
            tiny_paths.spec("diffusers"), device="cpu", memory_tier="model-offload"
        )
        unet = engine.pipeline.unet
        names = {id(module): name for name, module in models(engine.pipeline).items()}
        seen: list[set[str]] = []
        unet.conv_in.register_forward_pre_hook(lambda *_: seen.append({names[id(m)] for m in resident}))
        extra = {"mode": mode, "init_image": INIT} if mode is Mode.IMG2IMG else {}
        for prompt in ("a harbour", "a lighthouse"):  # the second: new prompt, cached style
            engine.generate(job(prompt, **extra))
    assert seen and all(step == {"unet"} for step in seen), seen


def test_a_batch_decodes_one_image_at_a_time(engine):
    decoded = []
    vae = engine.pipeline.vae
    original = vae._decode
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vae, "_decode", lambda z, **kw: (decoded.append(z.shape[0]), original(z, **kw))[1])
        result = engine.generate(job("a harbour", batch=3))
    assert len(result.images) == 3 and decoded == [1, 1, 1]


class CopiesFromCpu(TorchFunctionMode):
    """Counts ``Tensor.to`` calls on the linear previews' factor and bias tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.copies = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if (
            func is torch.Tensor.to
            and args
            and any(args[0] is t for t in (SDXL_LATENT_RGB_FACTORS, SDXL_LATENT_RGB_BIAS))
        ):
            self.copies += 1
        return func(*args, **(kwargs or {}))


def test_the_linear_previews_copy_their_factors_once_per_device():
    latents = torch.randn(1, 4, 8, 8)
    rgb_tensor(latents)  # the first preview on this device may copy them
    with CopiesFromCpu() as counter:
        for _ in range(3):
            frame = rgb_tensor(latents)
    assert counter.copies == 0 and frame.shape == (8, 8, 3)


@pytest.mark.parametrize("tier", [MemoryTier.FULL, MemoryTier.ENCODERS_OFF])
def test_the_budget_counts_what_place_leaves_on_the_gpu(tmp_path, tier):
    """memory_budget's models at rest on the GPU are the ones ``place`` puts there (the meta device
    stands for the GPU); the offload tiers' hooks are checked by the tests above."""
    built = build_models(tmp_path)
    pipeline = built.pipeline
    pipeline.register_modules(image_encoder=built.image_encoder)
    place(pipeline, built.controlnet, tier, torch.device("meta"))
    placed = {**models(pipeline), "controlnet": built.controlnet}
    on_gpu = {name for name, module in placed.items() if next(module.parameters()).device.type == "meta"}
    assert on_gpu == AT_REST_ON_GPU[tier]
