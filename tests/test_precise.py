"""The precise preset at the attention level: at the layout block the reference goes into the negative
CFG half only, at the layout push weight; everything else is the style preset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.engine.blocks import LAYOUT_BLOCK
from backend.engine.precise import PreciseLayoutProcessor
from backend.engine.request import GenerationRequest, RequestError, StyleReference
from protocol import BlockPreset, ErrorCode
from tests.conftest import noise_image

STYLE = noise_image(31)


def job(preset: BlockPreset, push: float = 2.0, **overrides) -> GenerationRequest:
    fields = {"width": 64, "height": 64, "steps": 2, "seed": 4, "preset": preset, "layout_push": push}
    fields.update(overrides)
    return GenerationRequest(prompt="a harbour", style_images=[StyleReference(STYLE)], **fields)


class Capture:
    """The first call of every cross-attention in the UNet: its inputs (kwargs), output and processor."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.calls: dict[str, tuple[tuple, dict, torch.Tensor, object]] = {}
        self.handles = []
        for name, module in unet.named_modules():
            if name.endswith("attn2"):
                self.handles.append(
                    module.register_forward_hook(self._hook(name), with_kwargs=True, always_call=False)
                )

    def _hook(self, name: str):
        def hook(module, args, kwargs, output):
            if name not in self.calls:
                self.calls[name] = (args, dict(kwargs), output.detach().clone(), module.processor)

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def first_calls(engine, request: GenerationRequest) -> dict[str, tuple[tuple, dict, torch.Tensor, object]]:
    capture = Capture(engine.pipeline.unet)
    try:
        engine.generate(request)
    finally:
        capture.close()
    return capture.calls


def layout_names(calls) -> list[str]:
    return [name for name in calls if name.startswith(LAYOUT_BLOCK + ".")]


def test_the_layout_block_gets_the_reference_in_the_negative_half_only(engine):
    style = first_calls(engine, job(BlockPreset.STYLE))
    precise = first_calls(engine, job(BlockPreset.PRECISE, push=2.0))
    layout = layout_names(precise)
    assert layout, "no cross-attention in the layout block"
    for name, (_args, _kwargs, out, _processor) in precise.items():
        half = out.shape[0] // 2
        # The positive half: exactly the style preset everywhere, the layout block included (no image
        # tokens there), because CFG halves never mix inside the UNet.
        assert torch.equal(out[half:], style[name][2][half:]), name
        if not name.startswith(LAYOUT_BLOCK) and name < LAYOUT_BLOCK:
            assert torch.equal(out, style[name][2]), name  # blocks before it: the style preset
    first = layout[0]
    assert not torch.equal(precise[first][2][:half], style[first][2][:half])  # the push is there


def test_the_negative_half_gets_the_references_contribution_times_the_push(engine):
    """An independent computation with diffusers' own processor on the captured inputs."""
    precise = first_calls(engine, job(BlockPreset.PRECISE, push=2.0))
    name = layout_names(precise)[0]
    args, kwargs, out, wrapper = precise[name]
    attention = engine.pipeline.unet.get_submodule(name)
    assert isinstance(wrapper, PreciseLayoutProcessor) and wrapper.push == 2.0
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    text, tokens = kwargs["encoder_hidden_states"]
    half = hidden.shape[0] // 2
    reference = [t[half:] for t in tokens]  # the positive half's image tokens: the reference's
    inner = wrapper.inner

    def diffusers_attention(scale: float) -> torch.Tensor:
        saved = inner.scale
        inner.scale = [scale]
        try:
            with torch.inference_mode():
                return inner(attention, hidden[:half], (text[:half], reference))
        finally:
            inner.scale = saved

    without, with_reference = diffusers_attention(0.0), diffusers_attention(1.0)
    contribution = with_reference - without
    assert contribution.abs().max() > 0
    torch.testing.assert_close(out[:half] - without, 2.0 * contribution, rtol=1e-4, atol=1e-5)


def test_push_zero_is_the_style_preset_bit_for_bit_and_switching_back_restores_it(engine):
    style = engine.generate(job(BlockPreset.STYLE)).images[0]
    assert np.array_equal(engine.generate(job(BlockPreset.PRECISE, push=0.0)).images[0], style)
    pushed = engine.generate(job(BlockPreset.PRECISE, push=2.0)).images[0]
    assert not np.array_equal(pushed, style)
    # After a precise job the layout block has diffusers' own processors and scales again.
    assert not any(
        isinstance(p, PreciseLayoutProcessor) for p in engine.pipeline.unet.attn_processors.values()
    )
    assert np.array_equal(engine.generate(job(BlockPreset.STYLE)).images[0], style)
    layout = engine.generate(job(BlockPreset.STYLE_LAYOUT)).images[0]
    engine.generate(job(BlockPreset.PRECISE, push=1.0))
    assert np.array_equal(engine.generate(job(BlockPreset.STYLE_LAYOUT)).images[0], layout)


def test_precise_without_cfg_or_with_a_push_out_of_range_is_refused(engine):
    with pytest.raises(RequestError, match="raise the guidance above 1"):
        engine.generate(job(BlockPreset.PRECISE, guidance_scale=1.0))
    with pytest.raises(RequestError, match="layout_push must be from 0 to 5, got 7"):
        engine.generate(job(BlockPreset.PRECISE, push=7.0))


def test_precise_through_the_server_and_its_bad_input(engine):
    from backend.client import InstantStyleClient, frame_image
    from tests.server_helpers import generate_message, run, running_server

    async def scenario():
        async with running_server(engine) as server, InstantStyleClient.connect(server.url) as client:
            await client.connection.send(
                '{"type":"generate","version":1,"job_id":1,"prompt":"x","style_images":[{"input":0}],'
                '"preset":"precise","layout_push":5.5}'
            )
            too_hard = await client.receive()
            await client.submit(
                generate_message(2, preset=BlockPreset.PRECISE, guidance_scale=1.0), {0: STYLE}
            )
            no_cfg = await client.follow(2)
            message = generate_message(
                3, prompt="a harbour", seed=4, steps=2, preset=BlockPreset.PRECISE, layout_push=1.5
            )
            await client.submit(message, {0: STYLE})
            return too_hard, no_cfg, await client.follow(3)

    too_hard, no_cfg, done = run(scenario())
    assert too_hard.code is ErrorCode.OUT_OF_RANGE and "layout_push" in too_hard.message
    assert no_cfg.error.code is ErrorCode.BAD_FIELD and "guidance" in no_cfg.error.message
    expected = engine.generate(job(BlockPreset.PRECISE, push=1.5)).images[0]
    assert np.array_equal(np.asarray(frame_image(done.images[0]))[..., :3], expected)


def test_generate_on_the_command_line_runs_precise(engine, tmp_path):
    import subprocess
    import sys

    from PIL import Image

    from tests.conftest import REPO

    style = tmp_path / "style.png"
    STYLE.save(style)
    command = [
        sys.executable, "-m", "backend", "generate", "--model", "tiny", "--device", "cpu",
        "--style", str(style), "--prompt", "a harbour", "--width", "64", "--height", "64", "--seed", "4",
        "--steps", "2", "--preset", "precise", "--layout-push", "1.5", "--out", str(tmp_path / "out.png"),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    expected = engine.generate(job(BlockPreset.PRECISE, push=1.5)).images[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png").convert("RGB")), expected)
    refused = subprocess.run(
        [*command[:-2], "--cfg", "1"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert refused.returncode == 2 and "raise the guidance above 1" in refused.stderr.strip().splitlines()[-1]
