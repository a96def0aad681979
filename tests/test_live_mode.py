"""Live mode's Qt-free parts: debouncing, what a live job asks for, the block grid's map, and live jobs
from the plugin's session against a real backend (latest wins)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from backend.engine.engine import InstantStyleEngine
from backend.engine.loading import LoraSource
from backend.engine.request import GenerationRequest, StyleReference
from krita_plugin.instantstyle.block_map import block_label, flat_scales, nested_scales
from krita_plugin.instantstyle.job_message import SubmitError
from krita_plugin.instantstyle.jobs import JobInputs, JobState, Target
from krita_plugin.instantstyle.live import LiveWatch, apply_preset, live_settings, live_size, pick_preset
from krita_plugin.instantstyle.session import UpdateKind
from krita_plugin.instantstyle.settings import (
    DictStore,
    GenerationSettings,
    JobKind,
    LoraChoice,
    load_settings,
    save_settings,
)
from protocol import Mode, Sampler, SpeedPresetInfo
from tests.conftest import noise_image
from tests.server_helpers import ServerThread
from tests.test_latest_wins import GatedEngine
from tests.test_plugin_client import as_image, connect, pump

LIGHTNING = SpeedPresetInfo(
    "lightning-4", "Lightning 4 steps", "sdxl-lightning-4step", 1.0, Sampler.EULER_TRAILING, 4, 1.0
)
HYPER = SpeedPresetInfo(
    "hyper-8-cfg", "Hyper 8 steps (CFG)", "hyper-sdxl-8steps-cfg", 1.0, Sampler.DDIM_TRAILING, 8, 5.0
)


def test_a_change_is_sent_once_it_held_still_and_never_twice():
    watch = LiveWatch(debounce=0.3)
    assert watch.observe(b"a", 0.0)  # turning live on shows something at once
    assert not watch.observe(b"a", 1.0)  # nothing changed: nothing sent
    assert not watch.observe(b"b", 2.0)  # a stroke: wait...
    assert not watch.observe(b"c", 2.2)  # ...the artist is still painting...
    assert not watch.observe(b"c", 2.4)
    assert watch.observe(b"c", 2.6)  # ...held still for 0.3 s: send
    assert not watch.observe(b"c", 5.0)
    assert not watch.observe(b"a", 5.1) and watch.observe(b"a", 5.5)  # undo back to the first: sent again


def test_live_jobs_take_the_preset_a_fixed_seed_and_the_live_size():
    base = GenerationSettings(
        steps=30, guidance_scale=7.0, seed=99, batch=4, kind=JobKind.NEW_IMAGE, live_seed=5,
        live_max_side=512, loras=[LoraChoice("ink", 0.5)],
    )  # fmt: skip
    live = live_settings(base, LIGHTNING, 2000, 1000)
    assert (live.steps, live.guidance_scale, live.sampler) == (4, 1.0, "euler_trailing")
    assert live.loras == [LoraChoice("ink", 0.5), LoraChoice("sdxl-lightning-4step", 1.0)]
    assert (live.seed, live.seed_locked, live.batch, live.kind) == (5, True, 1, JobKind.STYLIZE)
    assert (live.auto_size, live.width, live.height) == (False, 512, 256)
    assert base.steps == 30 and base.loras == [LoraChoice("ink", 0.5)]  # the docker's own stay
    # No preset offered: the docker's own steps and sampler.
    assert live_settings(base, None, 64, 64).steps == 30
    # Precise needs CFG: with a CFG-off preset live mode falls back to the style preset.
    precise = dataclasses.replace(base, preset="precise")
    assert live_settings(precise, LIGHTNING, 64, 64).preset == "style"
    assert live_settings(precise, HYPER, 64, 64).preset == "precise"
    assert live_size(100, 37, 768) == (96, 32) and live_size(4, 4, 768) == (8, 8)
    assert pick_preset([LIGHTNING, HYPER], "hyper-8-cfg") is HYPER
    assert pick_preset([LIGHTNING, HYPER], "gone") is LIGHTNING and pick_preset([], "x") is None
    # A preset's LoRA already chosen keeps the artist's weight.
    tuned = apply_preset(dataclasses.replace(base, loras=[LoraChoice("hyper-sdxl-8steps-cfg", 0.7)]), HYPER)
    assert tuned.loras == [LoraChoice("hyper-sdxl-8steps-cfg", 0.7)] and tuned.speed_preset == "hyper-8-cfg"


def test_the_docker_grids_map_is_one_the_backend_accepts(engine):
    """The grid's map for the model's own blocks (a box per attention; one set) runs as asked."""
    from protocol import BlockPreset

    names = engine.features.attention_blocks
    grid = dict.fromkeys(names, 0.0)
    grid["up_blocks.0.attentions.1"] = 0.8
    request = GenerationRequest(
        "x", [StyleReference(noise_image(1))], preset=BlockPreset.CUSTOM, block_scales=nested_scales(grid)
    )
    applied = engine.scale_map(request)
    assert applied["up"]["block_0"][1] == 0.8 and flat_scales(applied, names) == grid


def test_the_block_grid_map_round_trips_through_diffusers_nested_form():
    names = [
        "down_blocks.1.attentions.0",
        "down_blocks.2.attentions.1",
        "mid_block.attentions.0",
        "up_blocks.0.attentions.1",
        "up_blocks.0.attentions.2",
    ]
    grid = dict.fromkeys([*names, "down_blocks.2.attentions.0"], 0.0)  # every box, zeros too
    grid.update({"down_blocks.2.attentions.1": 0.5, "up_blocks.0.attentions.1": 1.0})
    nested = nested_scales(grid)
    # One scale per attention of each block concerned, in order (diffusers and the backend refuse a
    # list of another length); all-zero blocks left out.
    assert nested == {"down": {"block_2": [0.0, 0.5]}, "up": {"block_0": [0.0, 1.0, 0.0]}}
    assert flat_scales(nested, list(grid)) == grid
    flat = flat_scales(
        {"down": {"block_2": [0.0, 0.5]}, "mid": 0.25, "up": {"block_0": [0, 1.0, 0.3]}}, names
    )
    assert flat == {
        "down_blocks.1.attentions.0": 0.0,
        "down_blocks.2.attentions.1": 0.5,
        "mid_block.attentions.0": 0.25,
        "up_blocks.0.attentions.1": 1.0,
        "up_blocks.0.attentions.2": 0.3,
    }
    assert (
        block_label("up_blocks.0.attentions.1") == "up 0 · 1"
        and block_label("mid_block.attentions.0") == "mid · 0"
    )


def test_new_settings_persist_and_a_corrupt_lora_entry_falls_back():
    store = DictStore()
    save_settings(store, GenerationSettings(sampler="lcm", loras=[LoraChoice("ink", 0.25)], live_seed=3))
    loaded = load_settings(store)
    assert (loaded.sampler, loaded.loras, loaded.live_seed) == ("lcm", [LoraChoice("ink", 0.25)], 3)
    store.values["loras"] = '[{"weight": 1}]'
    assert load_settings(store).loras == []


@pytest.fixture(scope="module")
def live_engine(tiny_paths) -> InstantStyleEngine:
    spec = dataclasses.replace(
        tiny_paths.spec("diffusers"),
        loras=(LoraSource("sdxl-lightning-4step", str(tiny_paths.lora("other-peft"))),),
        speed_presets=("lightning-4",),
    )
    return InstantStyleEngine.load(spec, device="cpu")


def test_live_jobs_from_the_session_replace_each_other_and_give_the_engines_pixels(live_engine):
    style, painting = noise_image(21, 64), noise_image(22, 64)
    target = Target(0, 0, 64, 64)
    inputs = JobInputs([(as_image(style), 1.0)], as_image(painting))
    gated = GatedEngine(live_engine)
    with ServerThread(gated) as server:
        session = connect(server.url)
        try:
            preset = pick_preset(session.features.speed_presets, "")
            assert preset is not None and preset.name == "lightning-4"
            base = GenerationSettings(prompt="ink", strength=1.0, live_seed=4, live_max_side=64, steps=40)
            stroke = live_settings(dataclasses.replace(base, prompt="gated"), None, 64, 64)
            first = session.submit(stroke, inputs, target, live=True)  # held after its first step
            pump(session, lambda _u: first.step >= 1)
            second = session.submit(live_settings(base, preset, 64, 64), inputs, target, live=True)
            pump(session, lambda u: any(x.kind is UpdateKind.QUEUED and x.job is second for x in u))
            gated.release.set()
            pump(session, lambda _u: first.state.finished and second.state.finished)
            with pytest.raises(SubmitError, match="no LoRA 'nobody'"):
                session.submit(dataclasses.replace(base, loras=[LoraChoice("nobody")]), inputs, target)
        finally:
            session.connection.stop()
    assert first.state is JobState.CANCELLED  # replaced by the newer live job
    assert second.state is JobState.DONE and session.history == []  # live results stay out of history
    expected = live_engine.generate(
        GenerationRequest(
            prompt="ink",
            style_images=[StyleReference(style)],
            mode=Mode.IMG2IMG,
            init_image=painting,
            strength=1.0,
            width=64,
            height=64,
            steps=4,
            guidance_scale=1.0,
            seed=4,
            sampler=Sampler.EULER_TRAILING,
            loras=(("sdxl-lightning-4step", 1.0),),
            negative_prompt=base.negative_prompt,
        )
    ).images[0]
    received = np.frombuffer(second.images[0].data, np.uint8).reshape(64, 64, 4)
    assert np.array_equal(received[..., :3], expected)


def test_a_saved_selection_crops_to_the_job_area_row_by_row():
    from krita_plugin.instantstyle.pixels import SavedSelection

    saved = SavedSelection(4, 3, bytes(range(12)))  # rows 0-3, 4-7, 8-11
    assert saved.crop(1, 1, 2, 2) == bytes([5, 6, 9, 10])
    assert saved.crop(3, 2, 3, 2) == bytes([11, 0, 0, 0, 0, 0])  # beyond the saved document: not selected
    assert saved.crop(0, 0, 4, 3) == saved.data


def test_regions_persist_with_their_mask_and_reference():
    from krita_plugin.instantstyle.settings import RegionMaskKind, RegionSetting, StyleSource, StyleSourceKind

    store = DictStore()
    sky = RegionSetting("sky", RegionMaskKind.SELECTION, "", StyleSource(StyleSourceKind.FILE, path="/a.png"))
    ground = RegionSetting(
        "ground", RegionMaskKind.LAYER, "Ground", StyleSource(StyleSourceKind.LAYER, "Moss", weight=0.5)
    )
    save_settings(store, GenerationSettings(regions=[sky, ground]))
    assert load_settings(store).regions == [sky, ground]
    store.values["regions"] = '[{"name": "x", "mask_kind": "lasso"}]'
    assert load_settings(store).regions == []  # a corrupt entry keeps the default


def test_the_dockers_sweep_text_becomes_the_protocols_axes():
    from protocol import SweepAxis

    settings = GenerationSettings(
        sweep_first="style_scale", sweep_first_values="0.4, 0.6;0.8", sweep_second="seed"
    )
    settings.sweep_second_values = "7, 8"
    axes = settings.sweep_values()
    assert [(a.axis, a.values) for a in axes] == [
        (SweepAxis.STYLE_SCALE, [0.4, 0.6, 0.8]),
        (SweepAxis.SEED, [7, 8]),
    ]
    settings.sweep_second = ""
    assert len(settings.sweep_values()) == 1
    settings.sweep_first_values = "strong, weak"
    with pytest.raises(ValueError, match="style scale values must be numbers"):
        settings.sweep_values()
