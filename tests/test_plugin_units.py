"""Qt-free plugin helpers: pixels, sizes, settings persistence, error wording."""

from __future__ import annotations

import pytest

from krita_plugin.instantstyle.errors import describe_error
from krita_plugin.instantstyle.pixels import (
    fit_generation_size,
    swap_red_blue,
    to_8bit,
    to_16bit,
)
from krita_plugin.instantstyle.settings import (
    BackendMode,
    DictStore,
    GenerationSettings,
    JobKind,
    StyleSource,
    StyleSourceKind,
    load_settings,
    save_settings,
)
from protocol import ErrorCode


def test_channel_swaps():
    assert swap_red_blue(bytes([1, 2, 3, 4, 5, 6, 7, 8])) == bytes([3, 2, 1, 4, 7, 6, 5, 8])
    assert swap_red_blue(swap_red_blue(bytes(range(16)))) == bytes(range(16))
    with pytest.raises(ValueError):
        swap_red_blue(b"abc")


def test_16_bit_conversions_are_exact():
    eight = bytes([0, 1, 128, 255])
    sixteen = to_16bit(eight)
    assert sixteen == bytes([0, 0, 1, 1, 128, 128, 255, 255])  # little-endian v * 257
    assert int.from_bytes(sixteen[6:8], "little") == 65535
    assert to_8bit(sixteen) == eight
    assert to_8bit((300).to_bytes(2, "little")) == bytes([1])  # keeps the high byte


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((64, 64), (64, 64)),
        ((100, 60), (104, 64)),
        ((4000, 3000), (2048, 1536)),
        ((2048, 2048), (2048, 2048)),
        ((3, 5), (8, 8)),
    ],
)
def test_generation_size_fits_limits(size, expected):
    width, height = fit_generation_size(*size, max_side=2048, max_pixels=2048 * 2048)
    assert (width, height) == expected and width % 8 == 0 and height % 8 == 0


def test_settings_round_trip_and_survive_corruption():
    store = DictStore()
    original = GenerationSettings(
        prompt="a fox",
        kind=JobKind.NEW_IMAGE,
        steps=12,
        content_scale=0.3,
        styles=[StyleSource(StyleSourceKind.FILE, path="/tmp/ref.png", weight=0.5)],
        seed_locked=True,
        guidance_rescale=0.3,
    )
    save_settings(store, original)
    assert load_settings(store) == original
    save_settings(store, GenerationSettings())  # an optional number: None stays None
    assert load_settings(store).guidance_rescale is None
    store.values["guidance_rescale"] = "0.25"
    assert load_settings(store).guidance_rescale == 0.25
    save_settings(store, original)
    store.values["steps"] = '"twelve"'
    store.values["kind"] = '"sideways"'
    store.values["styles"] = "{not json"
    store.values["seed_locked"] = "1"
    loaded = load_settings(store)
    defaults = GenerationSettings()
    assert (loaded.steps, loaded.kind, loaded.styles, loaded.seed_locked) == (
        defaults.steps,
        defaults.kind,
        defaults.styles,
        defaults.seed_locked,
    )
    assert loaded.prompt == "a fox"


def test_a_new_artist_gets_the_managed_backend_and_a_returning_one_keeps_their_server():
    assert load_settings(DictStore()).backend_mode is BackendMode.MANAGED
    returning = DictStore()
    returning.values["server_url"] = '"ws://127.0.0.1:8765"'  # saved before the managed backend existed
    assert load_settings(returning).backend_mode is BackendMode.REMOTE
    store = DictStore()
    save_settings(store, GenerationSettings(backend_mode=BackendMode.MANAGED, managed_model="tiny"))
    loaded = load_settings(store)
    assert loaded.backend_mode is BackendMode.MANAGED and loaded.managed_model == "tiny"


def test_seed_lock():
    settings = GenerationSettings(seed=5, seed_locked=True)
    assert settings.next_seed() == 5 == settings.seed
    settings.seed_locked = False
    seeds = {settings.next_seed() for _ in range(5)}
    assert len(seeds) > 1 and settings.seed in seeds


def test_error_wording_is_for_artists():
    text = describe_error(
        ErrorCode.OUT_OF_MEMORY, "the GPU ran out of memory\nTraceback (most recent call last):"
    )
    assert text.startswith("The GPU ran out of memory") and "Traceback" not in text
    assert (
        describe_error(ErrorCode.OUT_OF_RANGE, "steps must be between 1 and 150")
        == "steps must be between 1 and 150"
    )
    assert describe_error(ErrorCode.BAD_FIELD, "") == "bad field"


def test_only_the_first_step_and_the_newest_preview_of_each_job_are_painted():
    from krita_plugin.instantstyle.jobs import Job, Target
    from krita_plugin.instantstyle.session import JobUpdate, UpdateKind, drop_stale_previews

    a, b = (Job(i, "p", 1, Target(0, 0, 8, 8), 8, 8) for i in (1, 2))
    updates = [
        JobUpdate(UpdateKind.PREVIEW, a, step=4),
        JobUpdate(UpdateKind.PROGRESS, a),
        JobUpdate(UpdateKind.PREVIEW, b, step=1),
        JobUpdate(UpdateKind.PREVIEW, b, step=3),
        JobUpdate(UpdateKind.PREVIEW, b, step=7),
        JobUpdate(UpdateKind.PREVIEW, a, step=9),
        JobUpdate(UpdateKind.RESULT, b),
    ]
    kept = drop_stale_previews(updates)
    assert kept == [updates[1], updates[2], updates[4], updates[5], updates[6]]


def test_the_status_line_says_when_the_backend_runs_in_a_low_memory_tier():
    from krita_plugin.instantstyle.session import describe_model
    from protocol import ModelInfo

    assert describe_model(ModelInfo("SDXL", False, "cuda", "fp16", "full")) == "SDXL"
    assert describe_model(ModelInfo("SDXL", False, "cuda", "fp16")) == "SDXL"  # an older backend
    low = describe_model(ModelInfo("SDXL", False, "cuda", "fp16", "model-offload"))
    assert low.startswith("SDXL") and "model-offload" in low and "slower" in low


def test_the_status_line_says_how_previews_look_and_how_many_workers_run_jobs():
    from krita_plugin.instantstyle.connection import Connection
    from krita_plugin.instantstyle.session import Session
    from protocol import (
        Limits,
        ModelFeatures,
        ModelInfo,
        ModelPhase,
        ModelStatus,
        PreviewMethod,
        ServerHello,
        WorkerInfo,
    )

    def status(features: ModelFeatures | None) -> str:
        session = Session(Connection("ws://127.0.0.1:1", ""))
        ready = ModelStatus(ModelPhase.READY, features=features)
        session.hello = ServerHello("1", ModelInfo("SDXL", False), Limits(), status=ready)
        return session._connected_status()

    assert status(None) == "connected — SDXL"  # an older backend says nothing of either
    assert status(ModelFeatures(preview=PreviewMethod.LINEAR)) == "connected — SDXL — rough previews"
    two = [WorkerInfo("worker 1 on a", "cuda:0 (RTX 4090)"), WorkerInfo("worker 2 on b", "cuda:0 (RTX 3090)")]
    assert status(ModelFeatures(preview=PreviewMethod.TINY_VAE, workers=two)) == (
        "connected — SDXL — full-size previews — 2 workers (cuda:0 (RTX 3090), cuda:0 (RTX 4090))"
    )
    one = [WorkerInfo("local", "cuda")]
    assert status(ModelFeatures(preview=PreviewMethod.TINY_VAE, workers=one)).endswith("full-size previews")
    said = {
        p: status(ModelFeatures(preview=PreviewMethod.TINY_VAE, prediction=p))
        for p in ("epsilon", "v", "v-zsnr")
    }
    assert said["epsilon"].endswith("full-size previews") and said["v"].endswith(
        "full-size previews — v-prediction"
    )
    assert said["v-zsnr"].endswith("— v-prediction (zero SNR, CFG rescale 0.7)")


def test_a_result_tile_becomes_bgra_with_the_selections_alpha_at_its_place():
    from krita_plugin.instantstyle.pixels import part_bgra

    rgba = bytes([10, 20, 30, 255] * 6)  # a 3x2 tile at (1, 1) of a 4x3 result
    mask = bytes(range(0, 120, 10))  # the 4x3 selection, row by row
    assert part_bgra(rgba, 3, 2, 1, 1, None, 4) == bytes([30, 20, 10, 255] * 6)
    out = part_bgra(rgba, 3, 2, 1, 1, mask, 4)
    assert list(out[3::4]) == [50, 60, 70, 90, 100, 110] and out[0:3] == bytes([30, 20, 10])
