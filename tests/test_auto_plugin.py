"""The plugin's side of "Find strength" and the Tile keep-lines choice, Qt-free, on hand-made protocol
messages: the trade-off map's model (where each point lands, its colour, the baseline, the chosen one,
what a click hits, searches without a leakage or prompt score), the jobs the docker sends (auto, a
clicked point, keep-lines with edges or tile) and the one-line refusals before anything is sent."""

from __future__ import annotations

from dataclasses import replace

import pytest

from krita_plugin.instantstyle import job_message
from krita_plugin.instantstyle.connection import ConnectionState
from krita_plugin.instantstyle.job_message import (
    JobShape,
    SubmitError,
    build_message,
    offered_controls,
    point_settings,
    refuse,
)
from krita_plugin.instantstyle.jobs import Image, Job, JobInputs, JobState, RegionInput, Target
from krita_plugin.instantstyle.managed.model_choice import ManagedModel, ModelChoice
from krita_plugin.instantstyle.session import Session, UpdateKind
from krita_plugin.instantstyle.settings import (
    DictStore,
    GenerationSettings,
    JobKind,
    load_settings,
    save_settings,
)
from krita_plugin.instantstyle.tradeoff_map import (
    COLOUR_STOPS,
    HIT_RADIUS,
    NO_SCORE,
    PADDING,
    TradeoffMap,
    colour_at,
)
from protocol import (
    Auto,
    AutoPoint,
    AutoSearch,
    BlockPreset,
    ControlKind,
    Limits,
    Mode,
    ModelFeatures,
    ModelInfo,
    ModelPhase,
    ModelStatus,
    Result,
    Scores,
    SearchStage,
    ServerHello,
    StyleMetric,
    decode_client_message,
    encode_message,
)

WIDTH, HEIGHT = 240, 132
BASELINE = SearchStage.BASELINE


def point(style_scale, content_scale, style, leakage=None, prompt=None, stage=SearchStage.COARSE, **kw):
    scores = Scores(style, leakage, prompt, kw.pop("metric", StyleMetric.CLIP))
    return AutoPoint(style_scale, content_scale, kw.pop("preset", BlockPreset.STYLE), scores, stage)


def search(points, chosen=2, passed=True, **kw) -> AutoSearch:
    values = {
        "reason": "style 1.0, content 0.5: the strongest style",
        "width": 256,
        "height": 256,
        "steps": 8,
    }
    values.update(kw)
    return AutoSearch(points, chosen, passed, leakage_margin=0.02, prompt_margin=0.03, **values)


POINTS = [
    point(0.0, 0.5, 0.40, leakage=0.20, prompt=0.30, stage=BASELINE),
    point(0.5, 0.5, 0.55, leakage=0.21, prompt=0.29),
    point(1.0, 0.5, 0.70, leakage=0.215, prompt=0.28),
    point(1.5, 0.5, 0.80, leakage=0.30, prompt=0.20),
]


# ---------------------------------------------------------------- the map's model


def test_more_style_is_higher_and_more_leakage_further_right_inside_the_plot():
    laid = TradeoffMap(search(POINTS), WIDTH, HEIGHT)
    left, top, right, bottom = PADDING
    assert laid.area == (left, top, WIDTH - left - right, HEIGHT - top - bottom)
    xs = [p.x for p in laid.points]
    ys = [p.y for p in laid.points]
    assert xs == sorted(xs) and ys == sorted(ys, reverse=True)  # both grow with the search here
    for p in laid.points:  # never on the border: each axis reaches a little beyond its values
        assert left < p.x < WIDTH - right and top < p.y < HEIGHT - bottom
    # Linear in the values: the middle leakage halfway between its neighbours' in pixels.
    a, b = TradeoffMap(search(POINTS), WIDTH, HEIGHT).place(0.2, 0.4), laid.place(0.3, 0.8)
    middle = laid.place(0.25, 0.6)
    assert middle == pytest.approx(((a[0] + b[0]) / 2, (a[1] + b[1]) / 2))
    assert laid.x_axis.name == "leakage →" and laid.y_axis.name == "style ↑"


def test_the_allowed_leakage_is_a_line_at_the_baselines_plus_the_margin():
    laid = TradeoffMap(search(POINTS), WIDTH, HEIGHT)
    assert laid.limit == pytest.approx(0.22)
    assert laid.limit_x == pytest.approx(laid.place(0.22, 0.5)[0])
    assert [p.within for p in laid.points] == [True, True, True, False]  # leaks 0.30 and drifts 0.20
    assert "dashed line: most leakage allowed" in laid.legend
    # Every point far below the limit: the axis spans the points (not the limit), no line is drawn.
    below = [POINTS[0], point(0.5, 0.5, 0.6, 0.201, 0.3), point(1.0, 0.5, 0.7, 0.202, 0.3)]
    close = TradeoffMap(search(below, chosen=2), WIDTH, HEIGHT)
    assert close.limit == pytest.approx(0.22) and close.limit_x is None
    assert close.x_axis.high < 0.21 and close.points[2].x - close.points[0].x > WIDTH / 2
    assert "every setting leaks less than the margin allows" in close.legend and "dashed" not in close.legend


def test_the_baseline_and_the_chosen_point_are_marked():
    laid = TradeoffMap(search(POINTS, chosen=2), WIDTH, HEIGHT)
    assert [p.baseline for p in laid.points] == [True, False, False, False]
    assert [p.chosen for p in laid.points] == [False, False, True, False]
    assert laid.chosen is laid.points[2] and laid.chosen.point is POINTS[2]
    assert laid.points[0].label == "no style (baseline)"
    assert laid.points[2].label == "style 1 content 0.5"
    assert laid.points[2].tip.startswith(
        "style 1 content 0.5 — chosen\nstyle 0.70 · leakage 0.21 · prompt 0.28"
    )
    assert "outside the margins" in laid.points[3].tip and "click" in laid.points[3].tip
    precise = point(1.25, 0.5, 0.7, leakage=0.2, prompt=0.3, preset=BlockPreset.PRECISE)
    assert TradeoffMap(search([POINTS[0], precise], chosen=1), WIDTH, HEIGHT).chosen.label == (
        "style 1.25 content 0.5 precise"
    )


def test_colours_run_from_the_least_like_the_prompt_to_the_most():
    laid = TradeoffMap(search(POINTS), WIDTH, HEIGHT)
    assert laid.points[0].colour == COLOUR_STOPS[-1]  # prompt 0.30: the most
    assert laid.points[3].colour == COLOUR_STOPS[0]  # prompt 0.20: the least
    assert laid.points[1].colour == colour_at(0.9) and laid.points[2].colour == colour_at(0.8)
    assert colour_at(-1) == COLOUR_STOPS[0] and colour_at(2) == COLOUR_STOPS[-1]
    assert colour_at(0.5) == COLOUR_STOPS[2] and colour_at(0.125) == (64, 42, 112)  # between stops
    assert "prompt likeness, 0.300 yellow to 0.200 or less dark" in laid.legend
    assert "CLIP image likeness" in laid.legend and "dashed line" in laid.legend


def test_a_click_hits_the_nearest_point_within_its_radius():
    laid = TradeoffMap(search(POINTS), WIDTH, HEIGHT)
    for p in laid.points:
        assert laid.hit(p.x, p.y) == p.index
        assert laid.hit(p.x + HIT_RADIUS - 1, p.y) == p.index
    lone = laid.points[3]
    assert laid.hit(lone.x, lone.y + HIT_RADIUS + 1) is None
    assert laid.hit(0, 0) is None and laid.hit(-50, 500) is None
    # Two points close together: the nearer one; at equal distance the chosen one.
    twins = [POINTS[0], point(1.0, 0.5, 0.7, 0.21, 0.3), point(1.0, 1.0, 0.7, 0.21, 0.3)]
    twin_map = TradeoffMap(search(twins, chosen=2), WIDTH, HEIGHT)
    a, b = twin_map.points[1], twin_map.points[2]
    assert (a.x, a.y) == (b.x, b.y) and twin_map.hit(a.x, a.y) == 2
    assert TradeoffMap(search(twins, chosen=0), WIDTH, HEIGHT).hit(a.x, a.y) == 1  # then the first


def test_without_a_leakage_score_the_style_setting_runs_across():
    unmeasured = [
        point(0.0, 0.5, 0.4, prompt=0.3, stage=BASELINE),
        point(0.5, 0.5, 0.6, prompt=0.3),
        point(1.0, 0.5, 0.7, prompt=0.25),
    ]
    laid = TradeoffMap(search(unmeasured), WIDTH, HEIGHT)
    assert not laid.leakage and laid.limit is None and laid.limit_x is None
    assert laid.x_axis.name == "style setting →"
    xs = [p.x for p in laid.points]
    assert xs == sorted(xs) and xs[1] - xs[0] == pytest.approx(xs[2] - xs[1])  # 0, 0.5, 1.0 evenly
    assert all(p.within for p in laid.points[:2]) and not laid.points[2].within  # the prompt still counts
    assert "across is the style setting" in laid.legend and "dashed" not in laid.legend


def test_without_a_prompt_score_every_point_is_grey_and_the_legend_says_why():
    csd = StyleMetric.CSD
    unmeasured = [
        point(0.0, 0.5, 0.4, stage=BASELINE, metric=csd),
        point(0.5, 0.5, 0.6, metric=csd),
        point(1.0, 0.5, 0.6, metric=csd),
    ]
    laid = TradeoffMap(search(unmeasured, chosen=1), WIDTH, HEIGHT)
    assert {p.colour for p in laid.points} == {NO_SCORE} and laid.prompt_range is None
    assert all(p.within for p in laid.points)  # nothing measured constrains
    assert "no prompt score" in laid.legend and "CSD style descriptors" in laid.legend
    assert "CLIP" not in laid.legend
    mixed = [*POINTS[:2], point(1.0, 0.5, 0.7, leakage=0.2)]
    colours = [p.colour for p in TradeoffMap(search(mixed), WIDTH, HEIGHT).points]
    assert colours[2] == NO_SCORE and NO_SCORE not in colours[:2]


def test_one_point_or_equal_scores_still_lay_out_in_the_middle():
    alike = [point(0.0, 0.5, 0.5, 0.2, 0.3, stage=BASELINE), point(1.0, 0.5, 0.5, 0.2, 0.3)]
    laid = TradeoffMap(search(alike, chosen=1), WIDTH, HEIGHT)
    left, top, width, height = laid.area
    for p in laid.points:  # equally like the prompt: both as the best
        assert p.y == pytest.approx(top + height / 2) and p.colour == COLOUR_STOPS[-1]
    assert left < laid.points[0].x < left + width
    tiny = TradeoffMap(search(alike, chosen=1), 10, 10)  # a widget squeezed to nothing: no error
    assert tiny.area[2] >= 1 and tiny.area[3] >= 1


def test_prompt_differences_far_below_the_margin_keep_nearly_one_colour():
    """Colours run over at least the prompt margin (0.03) below the best: noise is not a rainbow."""
    noise = [
        point(0.0, 0.5, 0.5, 0.2, 0.300, stage=BASELINE),
        point(0.5, 0.5, 0.6, 0.2, 0.299),
        point(1.0, 0.5, 0.7, 0.2, 0.285),
    ]
    laid = TradeoffMap(search(noise, chosen=1), WIDTH, HEIGHT)
    assert laid.prompt_range == pytest.approx((0.27, 0.30))
    assert [p.colour for p in laid.points] == [colour_at(1.0), colour_at(29 / 30), colour_at(0.5)]
    unmargined = replace(search(noise, chosen=1), prompt_margin=0.0)  # no margin: the points' own span
    assert TradeoffMap(unmargined, WIDTH, HEIGHT).prompt_range == pytest.approx((0.285, 0.30))
    alike = replace(search(noise[:2], chosen=1), prompt_margin=0.0)  # ... at least 0.01
    assert TradeoffMap(alike, WIDTH, HEIGHT).prompt_range == pytest.approx((0.29, 0.30))


def test_the_words_under_the_map():
    laid = TradeoffMap(search(POINTS, reason="style 1.00, content 0.50: the strongest style"), 200, 100)
    assert laid.title == "4 settings tried at 256×256, 8 steps"
    assert laid.reason == "style 1.00, content 0.50: the strongest style"
    missed = TradeoffMap(search(POINTS, passed=False), 200, 100)
    assert missed.title.endswith("; none kept within the margins")


# ---------------------------------------------------------------- the jobs the docker sends


PLAIN = ModelFeatures()
"""An older server's features: no controls said."""
STYLE = Image(8, 8, 3, bytes(8 * 8 * 3))
LAYER = Image(64, 64, 4, bytes(64 * 64 * 4))
MASK = Image(64, 64, 1, bytes(64 * 64))


def hello(features: ModelFeatures | None = PLAIN, ready=True, modes=None) -> ServerHello:
    status = ModelStatus(
        ModelPhase.READY if ready else ModelPhase.LOADING, features=features if ready else None
    )
    return ServerHello("1", ModelInfo("tiny", True), Limits(), modes=modes or list(Mode), status=status)


def test_find_strength_sends_the_margins_and_the_precise_toggle():
    settings = GenerationSettings(
        prompt="a fox",
        auto_leakage_margin=0.05,
        auto_prompt_margin=0.01,
        auto_presets=True,
        kind=JobKind.NEW_IMAGE,
    )
    shape = JobShape(4, 64, 64, seed=9, auto=job_message.auto_request(settings))
    message, _ = build_message(settings, JobInputs([(STYLE, 1.0)]), shape)
    assert message.auto == Auto(leakage_margin=0.05, prompt_margin=0.01, presets=True)
    assert message.mode is Mode.TXT2IMG and not message.sweep and message.seed == 9
    # The message is one the server accepts (the same check the session makes before sending).
    decoded = decode_client_message(encode_message(message), Limits())
    assert decoded.auto == message.auto
    plain, _ = build_message(settings, JobInputs([(STYLE, 1.0)]), JobShape(5, 64, 64, seed=9))
    assert plain.auto is None
    assert GenerationSettings().auto_leakage_margin == Auto().leakage_margin == 0.02
    assert GenerationSettings().auto_prompt_margin == Auto().prompt_margin == 0.03


def test_a_clicked_point_is_a_normal_job_with_its_strengths_preset_and_the_searchs_seed():
    settings = GenerationSettings(
        prompt="a fox", style_scale=1.0, content_scale=0.5, preset="style", seed=5, seed_locked=False
    )
    clicked = point(1.25, 0.75, 0.7, preset=BlockPreset.PRECISE)
    painted = point_settings(settings, clicked, seed=1234)
    assert (painted.style_scale, painted.content_scale, painted.preset) == (1.25, 0.75, "precise")
    assert painted.next_seed() == 1234  # this job only: the search's seed, whatever the lock says
    assert (settings.style_scale, settings.preset, settings.seed, settings.seed_locked) == (
        1.0,
        "style",
        5,
        False,
    )
    inputs = JobInputs([(STYLE, 1.0)], init_image=LAYER)
    message, _ = build_message(painted, inputs, JobShape(6, 64, 64, seed=painted.seed))
    assert (message.style_scale, message.content_scale, message.preset) == (1.25, 0.75, BlockPreset.PRECISE)
    assert message.auto is None and message.seed == 1234 and message.mode is Mode.IMG2IMG


@pytest.mark.parametrize(
    ("kind", "mode"), [(JobKind.KEEP_LINES, Mode.CONTROL), (JobKind.STYLIZE, Mode.IMG2IMG)]
)
def test_keep_lines_sends_the_chosen_kind_and_other_modes_send_edges(kind, mode):
    settings = GenerationSettings(prompt="a fox", kind=kind, control="tile")
    message, _ = build_message(settings, JobInputs([(STYLE, 1.0)], init_image=LAYER), JobShape(1, 64, 64, 3))
    assert message.mode is mode
    assert message.control is (ControlKind.TILE if mode is Mode.CONTROL else ControlKind.EDGES)
    decode_client_message(encode_message(message), Limits())  # tile only with mode control: accepted
    corrupt = replace(settings, control="sideways")  # a saved value no longer known: edges
    assert (
        build_message(corrupt, JobInputs([(STYLE, 1.0)], init_image=LAYER), JobShape(1, 64, 64, 3))[0].control
        is ControlKind.EDGES
    )


def test_which_kinds_keep_lines_offers():
    both = ModelFeatures(controls=[ControlKind.EDGES, ControlKind.TILE])
    assert offered_controls(hello(both)) == [ControlKind.EDGES, ControlKind.TILE]
    assert offered_controls(hello(ModelFeatures())) == [ControlKind.EDGES]  # an older server: edges
    assert offered_controls(hello(None)) == [ControlKind.EDGES]  # older still: no features at all
    assert offered_controls(hello(ready=False)) is None  # loading: the server checks once ready
    assert offered_controls(hello(both, modes=[Mode.TXT2IMG, Mode.IMG2IMG])) == []  # no ControlNet


@pytest.mark.parametrize(
    ("settings", "inputs", "server", "options", "said"),
    [
        (
            GenerationSettings(),
            JobInputs([(STYLE, 1.0)], regions=[RegionInput("sky", MASK, [(STYLE, 1.0)])]),
            hello(),
            {"auto": True},
            "Find strength finds one strength for the whole picture: it cannot run with regions",
        ),
        (
            GenerationSettings(),
            JobInputs([(STYLE, 1.0)]),
            hello(),
            {"auto": True, "sweep": True},
            "cannot be a sweep",
        ),
        (
            GenerationSettings(kind=JobKind.NEW_IMAGE),
            JobInputs([]),
            hello(),
            {"auto": True},
            "pick a style reference first",
        ),
        (
            GenerationSettings(kind=JobKind.KEEP_LINES, control="tile"),
            JobInputs([(STYLE, 1.0)], init_image=LAYER),
            hello(ModelFeatures(controls=[ControlKind.EDGES])),
            {},
            "the backend has no Tile ControlNet: start it with --tile-controlnet auto",
        ),
        (
            GenerationSettings(kind=JobKind.KEEP_LINES, control="tile"),
            JobInputs([(STYLE, 1.0)], init_image=LAYER),
            hello(ModelFeatures()),  # an older server: edges only
            {},
            "the backend has no Tile ControlNet",
        ),
        (
            GenerationSettings(kind=JobKind.KEEP_LINES, control="edges"),
            JobInputs([(STYLE, 1.0)], init_image=LAYER),
            hello(ModelFeatures(controls=[ControlKind.TILE])),
            {},
            "the backend has no canny ControlNet for the lines: choose 'Shapes and colours (tile)'",
        ),
        (
            GenerationSettings(kind=JobKind.KEEP_LINES, control="tile"),
            JobInputs([(STYLE, 1.0)], init_image=LAYER),
            hello(modes=[Mode.TXT2IMG, Mode.IMG2IMG, Mode.INPAINT]),
            {},
            "the backend has no ControlNet for keeping lines",
        ),
    ],
)
def test_what_cannot_be_sent_is_one_line_before_anything_is_sent(settings, inputs, server, options, said):
    with pytest.raises(SubmitError) as refused:
        refuse(settings, inputs, server, **options)
    assert said in str(refused.value) and "\n" not in str(refused.value)


def test_what_can_be_sent_is_not_refused():
    keep = GenerationSettings(kind=JobKind.KEEP_LINES, control="tile")
    layer = JobInputs([(STYLE, 1.0)], init_image=LAYER)
    refuse(keep, layer, hello(ModelFeatures(controls=[ControlKind.EDGES, ControlKind.TILE])))
    refuse(keep, layer, hello(ready=False))  # loading: what it offers is not known yet
    refuse(GenerationSettings(), layer, hello(), auto=True)


class SentMessages:
    """A connected connection that keeps what the session sends."""

    state = ConnectionState.CONNECTED

    def __init__(self) -> None:
        self.messages: list = []
        self.frames: list[bytes] = []

    def send_message(self, message) -> None:
        self.messages.append(message)

    def send_frame(self, data: bytes) -> None:
        self.frames.append(data)

    def poll(self) -> list:
        return []


def connected(features: ModelFeatures = PLAIN) -> Session:
    session = Session(SentMessages())  # type: ignore[arg-type]
    session.hello = hello(features)
    return session


def test_the_session_sends_an_auto_job_and_a_refused_one_sends_nothing():
    session = connected()
    settings = GenerationSettings(prompt="a fox", kind=JobKind.NEW_IMAGE, seed=3, seed_locked=True)
    job = session.submit(settings, JobInputs([(STYLE, 1.0)]), Target(0, 0, 64, 64), auto=True)
    (message,) = session.connection.messages
    assert job.auto and message.auto == Auto() and message.job_id == job.job_id
    regions = JobInputs([(STYLE, 1.0)], regions=[RegionInput("sky", MASK, [(STYLE, 1.0)])])
    with pytest.raises(SubmitError, match="regions"):
        session.submit(settings, regions, Target(0, 0, 64, 64), auto=True)
    assert len(session.connection.messages) == 1 and len(session.connection.frames) == 1


def finished_auto_job(session: Session, job: Job, chosen: int = 2) -> list:
    result = Result(job.job_id, 1, 64, 64, [job.seed], is_test_model=True, auto=search(POINTS, chosen=chosen))
    from protocol import FrameKind, PixelFormat, PixelFrame

    frame = PixelFrame(FrameKind.RESULT, job.job_id, 0, 64, 64, PixelFormat.RGBA8, bytes(64 * 64 * 4))
    return session._received(result) + session._received(frame)


def test_an_auto_result_keeps_its_search_and_names_its_layer_with_the_chosen_setting():
    session = connected()
    settings = GenerationSettings(prompt="a fox", kind=JobKind.NEW_IMAGE, seed=3, seed_locked=True)
    job = session.submit(settings, JobInputs([(STYLE, 1.0)]), Target(0, 0, 64, 64), auto=True)
    job.step, job.total = 3, 20
    assert job.progress == (3, 20, "finding strength · step 3 / 20")  # the search's steps and the render's
    updates = finished_auto_job(session, job)
    assert [u.kind for u in updates] == [UpdateKind.RESULT] and job.state is JobState.DONE
    assert job.search is not None and job.search.chosen == 2
    assert job.layer_names == ["InstantStyle: a fox (seed 3) style 1 content 0.5 (auto) [TEST MODEL]"]
    precise = [POINTS[0], point(1.25, 0.5, 0.7, 0.2, 0.3, preset=BlockPreset.PRECISE)]
    job.result = replace(job.result, auto=search(precise, chosen=1))
    assert job.layer_names[0].endswith("(seed 3) style 1.25 content 0.5 precise (auto) [TEST MODEL]")
    clicked = Job(9, "a fox", 3, Target(0, 0, 8, 8), 8, 8, note="style 0.5 content 0.5")
    assert clicked.layer_names == ["InstantStyle: a fox (seed 3) style 0.5 content 0.5"]
    assert Job(9, "a fox", 3, Target(0, 0, 8, 8), 8, 8).layer_names == ["InstantStyle: a fox (seed 3)"]


def test_the_find_strength_settings_are_kept_like_the_others():
    store = DictStore()
    settings = GenerationSettings(
        auto_leakage_margin=0.07, auto_prompt_margin=0.0, auto_presets=True, control="tile"
    )
    save_settings(store, settings)
    loaded = load_settings(store)
    assert (loaded.auto_leakage_margin, loaded.auto_prompt_margin, loaded.auto_presets, loaded.control) == (
        0.07,
        0.0,
        True,
        "tile",
    )
    store.values["auto_presets"] = '"yes"'  # corrupt: the default
    assert load_settings(store).auto_presets is False


@pytest.mark.parametrize("model", [ManagedModel.SDXL, ManagedModel.CHECKPOINT, ManagedModel.TINY])
def test_the_managed_backends_controlnet_box_also_asks_for_the_tile_controlnet(model):
    arguments = ModelChoice(model, "/models/any.safetensors", controlnet=True).serve_arguments()
    assert arguments[arguments.index("--tile-controlnet") + 1] == "auto"
    assert arguments[arguments.index("--controlnet") + 1] == "auto"
    assert "--tile-controlnet" not in ModelChoice(model, "/models/any.safetensors").serve_arguments()
