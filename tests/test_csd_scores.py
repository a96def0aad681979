"""CSD as the engine's style metric: chosen at start (``--csd``), used for every score and said so,
on the engine, the wire and in an auto search; CLIP where there is none."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import torch
from PIL import Image

from backend.engine.csd import load_csd
from backend.engine.engine import InstantStyleEngine
from backend.engine.loading import ModelLoadError
from backend.engine.request import GenerationRequest, StyleReference
from backend.engine.style_metric import csd_source
from backend.tiny.csd import write_tiny_csd
from backend.tiny.layouts import write_hub_snapshot
from protocol import Auto, StyleMetric
from tests.conftest import noise_image

STYLE = noise_image(81)


@pytest.fixture(scope="module")
def csd_files(tmp_path_factory):
    return write_tiny_csd(tmp_path_factory.mktemp("csd"), seed=5)


@pytest.fixture(scope="module")
def csd_engine(tiny_paths, csd_files):
    spec = replace(tiny_paths.spec(), csd=str(csd_files.checkpoint))
    return InstantStyleEngine.load(spec, device="cpu")


def request(**overrides) -> GenerationRequest:
    fields = {
        "prompt": "a harbour",
        "style_images": [StyleReference(STYLE, 2.0), StyleReference(noise_image(82), 1.0)],
        "content_text": "a boat",
        "width": 64,
        "height": 64,
        "steps": 3,
        "seed": 6,
    }
    fields.update(overrides)
    return GenerationRequest(**fields)


def test_the_style_score_is_the_cosine_of_csd_descriptors(csd_engine, csd_files, engine):
    assert csd_engine.features.style_metric is StyleMetric.CSD
    assert engine.features.style_metric is StyleMetric.CLIP
    result = csd_engine.generate(request())
    scores = result.scores[0]
    assert scores.style_metric is StyleMetric.CSD
    independent = load_csd(str(csd_files.safetensors))  # the other layout, loaded on its own
    picture = independent.embed([Image.fromarray(result.images[0])])[0]
    references = independent.embed([STYLE, noise_image(82)])
    blended = (references[0] * 2.0 + references[1]) / 3.0
    expected = torch.nn.functional.cosine_similarity(picture[None], blended[None])[0]
    assert scores.style == pytest.approx(float(expected), abs=1e-6)
    clip = engine.generate(request()).scores[0]  # the same job scored with CLIP
    assert clip.style_metric is StyleMetric.CLIP and clip.style != pytest.approx(scores.style, abs=1e-3)
    assert (scores.content, scores.prompt) == pytest.approx((clip.content, clip.prompt), abs=1e-6)


def test_an_auto_search_ranks_by_the_csd_score(csd_engine, engine):
    from backend.engine.auto_rule import choose

    result = csd_engine.generate(request(steps=8, auto=Auto()))
    assert {p.scores.style_metric for p in result.auto.points} == {StyleMetric.CSD}
    assert "csd style" in result.auto.choice.reason
    assert result.auto.choice == choose(result.auto.points, Auto())  # the rule, on CSD's scores
    coarse = len([p for p in result.auto.points if p.stage.value != "fine"])
    clip = engine.generate(request(steps=8, auto=Auto())).auto.points[:coarse]  # the same settings
    assert [(p.style_scale, p.content_scale) for p in clip] == [
        (p.style_scale, p.content_scale) for p in result.auto.points[:coarse]
    ]
    assert all(
        a.scores.style != pytest.approx(b.scores.style, abs=1e-4)
        for a, b in zip(clip, result.auto.points, strict=False)
    )


def test_auto_uses_a_cached_hub_copy_and_never_downloads_one(tiny_paths, csd_files, tmp_path):
    source = tmp_path / "snapshot"
    source.mkdir()
    shutil.copy(csd_files.checkpoint, source / "pytorch_model.bin")
    cache = tmp_path / "hub"
    spec = replace(tiny_paths.spec(), csd="auto", csd_default="someone/tiny-csd/pytorch_model.bin")
    assert csd_source(replace(spec, cache_dir=str(cache))) is None  # not cached: CLIP, no network
    write_hub_snapshot(cache, "someone/tiny-csd", source)
    found = csd_source(replace(spec, cache_dir=str(cache)))
    assert found is not None and found.endswith("pytorch_model.bin")
    assert csd_source(replace(spec, csd="none", cache_dir=str(cache))) is None
    assert csd_source(replace(spec, csd=str(csd_files.safetensors))) == str(csd_files.safetensors)
    assert tiny_paths.spec().csd_default is None  # the tiny model's scores stay CLIP's


def test_a_file_that_is_no_csd_fails_at_start_in_one_line(tiny_paths, tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "not-csd.safetensors"
    save_file({"weight": torch.zeros(2)}, bad)
    with pytest.raises(ModelLoadError) as raised:
        InstantStyleEngine.load(replace(tiny_paths.spec(), csd=str(bad)), device="cpu")
    message = str(raised.value)
    assert "not-csd.safetensors" in message and "is not a CSD checkpoint" in message and "\n" not in message


def test_the_server_says_which_metric_made_each_score(csd_engine):
    from backend.client import InstantStyleClient
    from tests.server_helpers import generate_message, run, running_server

    async def scenario():
        async with running_server(csd_engine) as server, InstantStyleClient.connect(server.url) as client:
            await client.submit(generate_message(1, content_text="a boat"), {0: STYLE})
            return client.status.features, await client.follow(1)

    features, done = run(scenario())
    assert features.style_metric is StyleMetric.CSD
    assert done.result.scores[0].style_metric is StyleMetric.CSD


def test_generate_auto_on_the_command_line_with_a_csd(csd_engine, csd_files, tmp_path, capsys):
    import numpy as np

    from backend import cli

    STYLE.save(tmp_path / "style.png")
    arguments = [
        "generate", "--model", "tiny", "--device", "cpu", "--style", str(tmp_path / "style.png"),
        "--prompt", "a harbour", "--content", "a boat", "--width", "64", "--height", "64",
        "--steps", "8", "--seed", "6", "--auto", "--csd", str(csd_files.checkpoint),
        "--out", str(tmp_path / "auto.png"),
    ]  # fmt: skip
    assert cli.main(arguments) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    expected = csd_engine.generate(request(style_images=[StyleReference(STYLE)], steps=8, auto=Auto()))
    chosen = expected.auto.chosen
    assert f"* {chosen.stage.value:8} {chosen.describe()}" in out and "chose style" in out
    assert out.count(" baseline ") == 1 and "csd style" in out
    with Image.open(tmp_path / "auto.png") as written:
        assert np.array_equal(np.asarray(written.convert("RGB")), expected.images[0])
    for bad, words in (
        (["--sweep", "seed=1,2"], "cannot have a sweep"),
        (["--leakage-margin", "3"], "auto leakage_margin must be from 0 to 1, got 3.0"),
        (["--prompt-margin", "0.1"], "--prompt-margin and --auto-presets need --auto"),
    ):
        if "need --auto" in words:
            arguments = [a for a in arguments if a != "--auto"]
        assert cli.main(arguments + bad) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
        assert len(errors) == 1 and words in errors[0], errors


def test_the_memory_budget_counts_a_csd_where_it_rests_on_the_gpu():
    from backend.engine.memory import MemoryTier
    from backend.engine.memory_budget import CSD_GIB_FP16, JobShape, at_rest, default_encoder
    from backend.engine.memory_sizes import family_sizes
    from protocol import ModelFamily

    sizes = family_sizes(ModelFamily.SDXL, torch.float16, default_encoder(ModelFamily.SDXL))
    for tier in MemoryTier:
        added = at_rest(tier, JobShape(csd=True), sizes) - at_rest(tier, JobShape(), sizes)
        assert added == pytest.approx(CSD_GIB_FP16 if tier is MemoryTier.FULL else 0.0)
    fp32 = at_rest(MemoryTier.FULL, JobShape(csd=True, dtype=torch.float32), sizes)
    assert fp32 - at_rest(MemoryTier.FULL, JobShape(dtype=torch.float32), sizes) == pytest.approx(2 * 0.568)


def test_a_hub_csd_loads_from_the_specs_cache_and_the_command_line_takes_its_hub_form(
    tiny_paths, csd_files, tmp_path
):
    import argparse

    from backend.engine.memory import MemoryTier
    from backend.engine.style_metric import load_style_metric
    from backend.preflight import ArgumentError, check_model_paths

    source = tmp_path / "snapshot"
    source.mkdir()
    shutil.copy(csd_files.checkpoint, source / "pytorch_model.bin")
    cache = tmp_path / "hub"
    write_hub_snapshot(cache, "someone/tiny-csd", source)
    spec = replace(tiny_paths.spec(), csd="someone/tiny-csd/pytorch_model.bin", cache_dir=str(cache))
    offline = replace(spec, local_files_only=True)
    model = load_style_metric(offline, MemoryTier.FULL, torch.device("cpu"), torch.float32)
    assert model is not None and torch.equal(
        model.embed([STYLE]), load_csd(str(csd_files.checkpoint)).embed([STYLE])
    )
    with pytest.raises(ModelLoadError, match="not in the hub cache and not fetched"):
        load_style_metric(
            replace(offline, csd="someone/other/x.bin"), MemoryTier.FULL, torch.device("cpu"), torch.float32
        )
    names = ("model", "ip_adapter", "image_encoder", "controlnet", "tile_controlnet", "vae", "base_config")
    args = argparse.Namespace(**dict.fromkeys(names), preview_vae="auto", csd="owner/repo/csd.bin")
    check_model_paths(args)  # a hub path: checked by the loader, not as a missing file
    with pytest.raises(ArgumentError, match=r"--csd \./missing\.pth: no such file or folder"):
        check_model_paths(argparse.Namespace(**{**vars(args), "csd": "./missing.pth"}))


def test_an_auto_search_describes_each_reference_once(csd_engine, monkeypatch):
    from backend.engine import scores

    scores.REFERENCE_DESCRIPTORS.clear()
    embedded: list[int] = []
    original = csd_engine.csd.embed
    monkeypatch.setattr(
        csd_engine.csd, "embed", lambda images: embedded.append(len(images)) or original(images)
    )
    result = csd_engine.generate(request(steps=8, auto=Auto()))
    pictures = len(result.auto.points) + 1  # every searched cell and the render
    assert sum(embedded) == pictures + 2  # the two references once each
    again = csd_engine.generate(request())
    assert again.scores[0].style == pytest.approx(
        float(
            torch.nn.functional.cosine_similarity(
                original([Image.fromarray(again.images[0])]),
                ((original([STYLE])[0] * 2 + original([noise_image(82)])[0]) / 3)[None],
            )[0]
        ),
        abs=1e-6,
    )
