"""A generation setting is named in few places: the wire format (with its range), the engine's
request, the command line's option and the plugin's settings field with its widget. Everything between
them copies settings named alike; these tests hold each copy to the whole list of fields, so a new
setting that one path forgets fails here rather than silently keeping its default.

(The docker's widget table is checked in real Krita: ``tests/test_krita_docker.py``.)
"""

from __future__ import annotations

from dataclasses import fields

import pytest
from PIL import Image as PILImage

from backend.cli import build_parser
from backend.engine.request import GenerationRequest, RequestError, number, wire_ranges
from backend.generate_command import job_from_arguments
from backend.server import inputs as server_inputs
from krita_plugin.instantstyle import job_message
from krita_plugin.instantstyle.jobs import Image, JobInputs
from krita_plugin.instantstyle.settings import GenerationSettings, JobKind
from protocol import BlockPreset, Generate, InputSlots, StyleImage

GENERATE = {f.name for f in fields(Generate)}


def test_every_wire_field_is_sent_by_the_plugin_from_a_setting_or_decided_per_job():
    shared = GENERATE & {f.name for f in fields(GenerationSettings)}
    travelling = shared - job_message.DECIDED_PER_JOB
    assert travelling | job_message.DECIDED_PER_JOB == GENERATE, (
        GENERATE - travelling - job_message.DECIDED_PER_JOB
    )


def test_the_plugin_sends_each_setting_it_carries_as_set():
    settings = GenerationSettings(
        prompt="a harbour",
        negative_prompt="fog",
        content_text="stripes",
        content_scale=0.7,
        style_scale=1.3,
        layout_push=1.5,
        strength=0.45,
        control_scale=0.9,
        steps=17,
        guidance_scale=6.5,
        preset="precise",
        sampler="dpmpp_2m",
        kind=JobKind.STYLIZE,
    )
    style = Image(8, 8, 3, bytes(8 * 8 * 3))
    inputs = JobInputs([(style, 1.0)], init_image=Image(8, 8, 4, bytes(8 * 8 * 4)))
    shape = job_message.JobShape(3, 64, 48, seed=11, preview_side=256)
    message, frames = job_message.build_message(settings, inputs, shape)
    travelling = GENERATE & {f.name for f in fields(settings)} - job_message.DECIDED_PER_JOB
    assert {"strength", "control_scale", "layout_push", "content_scale", "guidance_scale"} <= travelling
    for name in travelling:
        assert getattr(message, name) == getattr(settings, name), name
    assert (message.job_id, message.width, message.height, message.seed) == (3, 64, 48, 11)
    assert message.preset is BlockPreset.PRECISE and message.sampler.value == "dpmpp_2m"
    assert message.init_image == 1 and frames[0] is style and message.style_images == [StyleImage(0, 1.0)]


def test_the_server_copies_every_setting_named_alike_into_the_request():
    request_fields = {f.name for f in fields(GenerationRequest)}
    # Each wire field reaches the request: as it is, converted, or (job_id, live) as the job itself.
    assert GENERATE - request_fields - server_inputs.CONVERTED <= {"job_id", "live"}
    values = {
        "content_scale": 0.7,
        "style_scale": 1.3,
        "layout_push": 1.5,
        "strength": 0.45,
        "control_scale": 0.9,
        "steps": 17,
        "guidance_scale": 6.5,
        "width": 64,
        "height": 48,
        "batch": 2,
        "prompt": "a harbour",
        "content_text": "stripes",
    }
    message = Generate(job_id=1, style_images=[StyleImage(0)], seed=5, **values)
    request = server_inputs.build_request(message, {0: PILImage.new("RGB", (8, 8))})
    for name, value in values.items():
        assert getattr(request, name) == value, name
    assert set(server_inputs.travelling_as_they_are(message)) >= set(values)


def test_the_command_line_copies_options_named_like_the_message(tmp_path):
    style = tmp_path / "style.png"
    PILImage.new("RGB", (8, 8)).save(style)
    arguments = "--style-scale 1.3 --layout-push 1.5 --strength 0.45 --control-scale 0.9 --content-scale 0.7"
    start = f"generate --model tiny --style {style} --prompt x --width 64 --batch 2"
    args = build_parser().parse_args([*start.split(), *arguments.split()])
    message, images = job_from_arguments(args, 1)
    expected = {"style_scale": 1.3, "layout_push": 1.5, "strength": 0.45, "control_scale": 0.9}
    for name, value in {**expected, "content_scale": 0.7, "width": 64, "batch": 2}.items():
        assert getattr(message, name) == value, name
    assert list(images) == [0]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("style_scale", 2.5),
        ("content_scale", -0.1),
        ("steps", 0),
        ("guidance_scale", 31.0),
        ("batch", 65),
        ("seed", 2**32),
    ],
)
def test_a_request_made_in_python_meets_the_wire_formats_ranges(name, value):
    from backend.engine.request import StyleReference

    request = GenerationRequest("x", [StyleReference(PILImage.new("RGB", (8, 8)))], width=64, height=64)
    setattr(request, name, value)
    low, high = wire_ranges()[name]
    with pytest.raises(
        RequestError, match=f"{name} must be from {number(low)} to {number(high)}, got {value}"
    ):
        request.validate()


def test_input_slots_number_images_in_the_order_they_are_added():
    slots: InputSlots[str] = InputSlots()
    styles = slots.styles([("a", 1.0), ("b", 0.5)])
    region = slots.region("sky", "mask", [("c", 1.0)])
    assert [s.input for s in styles] == [0, 1] and region.mask == 2 and region.style_images[0].input == 3
    assert slots.add_optional(None) is None and slots.add_optional("init") == 4
    assert slots.images == {0: "a", 1: "b", 2: "mask", 3: "c", 4: "init"}
