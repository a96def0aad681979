"""Strength sweeps: a grid of scored pictures in one job, each cell exactly the single job with its
settings, the encoders run once for the whole grid."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from backend.engine.request import GenerationRequest, StyleReference
from protocol import BlockPreset, ErrorCode, FrameKind, Progress, SweepAxis, SweepValues
from tests.conftest import REPO, noise_image

STYLE = noise_image(61)


def base(**overrides) -> GenerationRequest:
    fields = {"width": 64, "height": 64, "steps": 2, "seed": 9, "content_text": "a tiny sweeping broom"}
    fields.update(overrides)
    return GenerationRequest(prompt="a quiet sweep of dunes", style_images=[StyleReference(STYLE)], **fields)


def test_each_cell_is_the_single_job_with_its_settings(engine):
    sweep = [(SweepAxis.STYLE_SCALE, (0.5, 1.0)), (SweepAxis.PRESET, ("style", "precise"))]
    result = engine.generate(base(sweep=sweep))
    assert [(c.style_scale, c.preset) for c in result.cells] == [
        (0.5, BlockPreset.STYLE),
        (0.5, BlockPreset.PRECISE),
        (1.0, BlockPreset.STYLE),
        (1.0, BlockPreset.PRECISE),
    ]
    assert len(result.images) == len(result.scores) == 4
    for cell, image, scores in zip(result.cells, result.images, result.scores, strict=True):
        single = engine.generate(base(style_scale=cell.style_scale, preset=cell.preset))
        assert np.array_equal(image, single.images[0]), cell
        assert scores == single.scores[0]
    assert len({image.tobytes() for image in result.images}) == 4


def test_the_encoders_run_once_for_the_whole_sweep(engine):
    counts = engine.encoder.counts
    engine.encoder.image_cache.clear()
    engine.encoder.text_cache.clear()
    engine.prompts.clear()
    images, texts, prompt_misses = counts.images, counts.texts + counts.scored_texts, engine.prompts.misses
    sweep = [(SweepAxis.CONTENT_SCALE, (0.0, 0.5, 1.0)), (SweepAxis.SEED, (1, 2))]
    result = engine.generate(base(sweep=sweep))
    assert len(result.images) == 6
    assert counts.images == images + 1  # the one reference
    # The content description and the prompt in CLIP's space (subtraction and scores), once each.
    assert counts.texts + counts.scored_texts == texts + 2
    assert engine.prompts.misses == prompt_misses + 1  # the prompt: one encode_prompt for six cells
    assert counts.scored_images >= 6


def test_a_sweep_through_the_server_streams_every_cell_and_refuses_bad_grids(engine):
    from backend.client import InstantStyleClient
    from tests.server_helpers import generate_message, run, running_server

    async def scenario():
        async with running_server(engine) as server, InstantStyleClient.connect(server.url) as client:
            refused = []
            bad = [
                [SweepValues(SweepAxis.SEED, [1, 2]), SweepValues(SweepAxis.SEED, [3])],
                [
                    SweepValues(SweepAxis.STYLE_SCALE, [0.1 * i for i in range(16)]),
                    SweepValues(SweepAxis.SEED, [1, 2]),
                ],
                [SweepValues(SweepAxis.PRESET, ["style", "custom"])],
                [SweepValues(SweepAxis.STYLE_SCALE, [2.5])],
                [SweepValues(SweepAxis.SEED, [])],
            ]
            for job_id, sweep in enumerate(bad, start=1):
                await client.submit(generate_message(job_id, sweep=sweep), {0: STYLE})
                refused.append((await client.follow(job_id)).error)
            await client.submit(
                generate_message(9, batch=2, sweep=[SweepValues(SweepAxis.SEED, [1])]), {0: STYLE}
            )
            refused.append((await client.follow(9)).error)
            good = generate_message(
                10, steps=2, seed=9, sweep=[SweepValues(SweepAxis.STYLE_SCALE, [0.5, 1.0])], content_text="x"
            )
            await client.submit(good, {0: STYLE})
            return refused, await client.follow(10)

    refused, done = run(scenario())
    assert [e.code for e in refused] == [
        ErrorCode.BAD_FIELD,
        ErrorCode.OUT_OF_RANGE,
        ErrorCode.BAD_FIELD,
        ErrorCode.OUT_OF_RANGE,
        ErrorCode.MISSING_FIELD,
        ErrorCode.BAD_FIELD,
    ]
    assert (
        "named twice" in refused[0].message
        and "32 cells is over this server's limit of 16" in refused[1].message
    )
    assert "batch must be 1" in refused[5].message
    assert done.started.total_steps == 4  # 2 steps x 2 cells
    steps = [p.step for p in done.progress if isinstance(p, Progress)]
    assert steps == [1, 2, 3, 4] and [f.index for f in done.previews] == [1, 2, 3, 4]
    assert done.result.count == 2 and [c.style_scale for c in done.result.cells] == [0.5, 1.0]
    assert len(done.result.scores) == 2 and all(f.kind is FrameKind.RESULT for f in done.images)


def test_generate_on_the_command_line_writes_every_cell_with_its_scores(tmp_path, engine):
    style = tmp_path / "style.png"
    STYLE.save(style)
    command = [
        sys.executable, "-m", "backend", "generate", "--model", "tiny", "--device", "cpu",
        "--style", str(style), "--prompt", "dunes", "--width", "64", "--height", "64", "--steps", "2",
        "--seed", "9", "--sweep", "style_scale=0.5,1.0", "--out", str(tmp_path / "cell.png"),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("wrote")]
    assert len(lines) == 2 and "style 0.5, content 0.5, style, seed 9" in lines[0] and "· prompt " in lines[0]
    assert (tmp_path / "cell.png").is_file() and (tmp_path / "cell-1.png").is_file()
    bad = subprocess.run(
        [*command[:-2], "--sweep", "shine=1"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "unknown sweep axis 'shine'" in bad.stderr


def test_a_sweep_of_one_cell_is_the_job_itself(engine):
    request = base(seed=4)
    alone = engine.generate(request).images[0]
    swept = engine.generate(dataclasses.replace(request, sweep=[(SweepAxis.SEED, (4,))]))
    assert np.array_equal(swept.images[0], alone) and swept.seeds == [4]
    with pytest.raises(ValueError, match="named twice"):
        engine.generate(dataclasses.replace(request, sweep=[(SweepAxis.SEED, (1,)), (SweepAxis.SEED, (2,))]))
