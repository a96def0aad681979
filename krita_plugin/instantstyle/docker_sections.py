"""The docker's sections that open on a click: blocks, regions, sweep, sampling, LoRAs, live, negative
prompt. Each is built from the docker's ``Form`` (one table of settings field and widget), so it never
sets attributes on the docker or calls into it."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from .deps import protocol
from .form import Form
from .model_family import CUSTOM_START, BlockScalesByFamily, canvas_resolution_tip, custom_start_for
from .qt import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QToolButton,
)
from .region_rows import RegionList
from .sections import BlockGrid, LoraList, Section
from .tradeoff_view import TradeoffPanel
from .widgets import ComboBox, choices, int_spin, narrow, setting_slider, side_by_side, spin, wire_range

PRESETS = [
    ("Style", "style"),
    ("Precise (layout pushed away)", "precise"),
    ("Style + Layout", "style+layout"),
    ("All blocks", "all"),
    ("Custom", "custom"),
]
SWEEP_AXES = [
    ("Style strength", "style_scale"),
    ("Content scale", "content_scale"),
    ("Blocks preset", "preset"),
    ("Seed", "seed"),
]
SAMPLER_LABELS = {
    "euler": "Euler",
    "euler_a": "Euler a",
    "euler_trailing": "Euler (trailing, for Lightning)",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras",
    "dpmpp_sde_karras": "DPM++ SDE Karras",
    "ddim": "DDIM",
    "ddim_trailing": "DDIM (trailing, for Hyper-SD)",
    "unipc": "UniPC",
    "lcm": "LCM",
    "tcd": "TCD",
}
PREVIEW_SIDES = [
    ("Canvas size (up to 1024 px)", 1024),
    ("Up to 512 px", 512),
    ("Up to 256 px (slow link)", 256),
]


def form_layout(section: Section) -> QFormLayout:
    """A form whose labels go above their fields when the docker is narrow (never wider than it)."""
    form = QFormLayout(section.body)
    form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
    return form


@dataclass
class Sections:
    """The sections, by name, and the widgets the docker itself reaches into."""

    by_name: dict[str, Section]
    block_grid: BlockGrid
    loras: LoraList
    regions: RegionList
    sweep_button: QPushButton
    find_button: QPushButton
    tradeoff: TradeoffPanel

    def all(self) -> list[Section]:
        return list(self.by_name.values())


def preset_chosen(form: Form, start: str = CUSTOM_START) -> None:
    """The grid edits only the custom preset, the layout push only the precise one; an empty custom
    grid starts from ``start`` (the style preset's blocks on the backend's model)."""
    preset = form["preset"].currentData()
    form["block_scales"].setEnabled(preset == "custom")
    form["layout_push"].setEnabled(preset == "precise")
    if preset == "custom" and not form["block_scales"].text():
        form["block_scales"].set_text(start)


def blocks_section(form: Form, custom_start: Callable[[], str]) -> Section:
    section = Section("Blocks", "which parts of the model take the style")
    layout = form_layout(section)
    preset = form.add(
        "preset",
        choices(PRESETS),
        "Style: only the block that carries style (InstantStyle's default, least content leaks). "
        "Precise: the same, and the reference's composition actively pushed away (needs guidance > 1). "
        "Style + Layout: also the composition. All: classic IP-Adapter. Custom: set each block below.",
    )
    push = form.add(
        "layout_push",
        setting_slider("layout_push", 0.25),
        "Precise only: how hard the reference's composition is pushed away (about 2 is a good start; "
        "0 is the plain style preset)",
    )
    grid = BlockGrid()
    form.add("block_scales", grid, get=grid.text, set=grid.set_text)
    preset.currentIndexChanged.connect(lambda _index: preset_chosen(form, custom_start()))
    layout.addRow("Blocks", preset)
    layout.addRow("Layout push", push)
    layout.addRow(grid)
    return section


def sampling_section(form: Form, apply_speed: Callable[[], None]) -> Section:
    section = Section("Sampling", "speed, steps, sampler, guidance, seed and size")
    layout = form_layout(section)
    speed = form.add(
        "speed_preset",
        narrow(ComboBox()),
        "fill in a few-step recipe the backend offers (its LoRA, sampler, steps and guidance); "
        "each can still be changed below",
    )
    speed.activated.connect(lambda _index: apply_speed())
    samplers = [("Model default", "")]
    samplers += [(SAMPLER_LABELS.get(s.value, s.value), s.value) for s in protocol.Sampler]
    sampler = form.add(
        "sampler", choices(samplers), "how the picture is found step by step; some suit few-step LoRAs only"
    )
    steps = form.add(
        "steps", int_spin(1, 150), "more steps: finer detail, slower (few-step presets need 4 to 8)"
    )
    guidance = form.add(
        "guidance_scale",
        spin(*wire_range("guidance_scale"), 0.5, 1),
        "how closely the prompt is followed; 1 or less turns the negative prompt off",
    )
    low, high = wire_range("guidance_rescale")
    rescale = spin(low - 0.05, high, 0.05, 2)
    rescale.setSpecialValueText("model")  # below the range: the model's own choice (None)
    form.add(
        "guidance_rescale",
        rescale,
        "CFG rescale: keeps v-prediction models with zero terminal SNR (NoobAI-XL v-pred) from "
        "over-exposing; 'model': the model's own choice (0.7 for those, else off)",
        get=lambda: None if rescale.value() < low else rescale.value(),
        set=lambda value: rescale.setValue(low - 0.05 if value is None else value),
    )
    line_strength = form.add(
        "control_scale",
        setting_slider("control_scale", 0.05),
        "how strictly 'keep the lines' follows the layer's edges",
    )
    seed = form.add("seed", int_spin(0, 2**31 - 1), "the same seed and settings give the same picture")
    seed.setButtonSymbols(QSpinBox.ButtonSymbols.NoButtons)  # typed or diced: no arrows, fits 260 px
    locked = form.add(
        "seed_locked", QCheckBox("Lock"), "keep this seed for every job (else a new one each time)"
    )
    dice = QToolButton()
    dice.setText("Random")
    dice.setToolTip("a new random seed")
    dice.clicked.connect(lambda: seed.setValue(random.randrange(2**31)))
    batch = form.add("batch", int_spin(1, 8), "pictures per job, each with the next seed")
    auto_size = form.add(
        "auto_size",
        QCheckBox("Canvas / selection size"),
        "paint at the size of the canvas or selection (within the backend's limits)",
    )
    canvas = form.add(
        "canvas_resolution",
        QCheckBox("Canvas resolution"),
        canvas_resolution_tip(None),  # the model's own size once the backend says it (the docker)
    )
    width, height = form.add("width", int_spin(64, 2048, 8)), form.add("height", int_spin(64, 2048, 8))
    auto_size.toggled.connect(
        lambda on: (width.setEnabled(not on), height.setEnabled(not on), canvas.setEnabled(on))
    )
    layout.addRow("Speed", speed)
    layout.addRow("Sampler", sampler)
    layout.addRow("Steps", steps)
    layout.addRow("Guidance", guidance)
    layout.addRow("CFG rescale", rescale)
    layout.addRow("Line strength", line_strength)
    layout.addRow("Seed", side_by_side(seed, locked, dice))
    layout.addRow("Batch", batch)
    layout.addRow(auto_size)
    layout.addRow(canvas)
    layout.addRow("Size", side_by_side(width, QLabel("×"), height))
    return section


def sweep_section(form: Form, run_sweep: Callable[[], None]) -> tuple[Section, QPushButton]:
    section = Section("Sweep", "a grid of scored pictures over one or two settings, to find the balance")
    layout = form_layout(section)
    first = form.add("sweep_first", choices(SWEEP_AXES), "what changes from picture to picture")
    second = form.add(
        "sweep_second", choices([("—", ""), *SWEEP_AXES]), "what changes from row to row (or nothing)"
    )
    values_tip = "the values to try, separated by commas (e.g. 0.4, 0.6, 0.8, 1.0; presets by name)"
    first_values = form.add("sweep_first_values", QLineEdit(), values_tip)
    second_values = form.add("sweep_second_values", QLineEdit(), values_tip)
    button = QPushButton("Run sweep")
    button.setToolTip(
        "one picture per combination, each scored: style (likeness to the references), leakage (how much "
        "of the described content came through) and prompt; they land in one layer group, Keep picks one"
    )
    button.clicked.connect(run_sweep)
    layout.addRow("Across", side_by_side(first, first_values))
    layout.addRow("Down", side_by_side(second, second_values))
    layout.addRow(button)
    return section, button


FIND_TIP = (
    "try a grid of style and content strengths at a small size, score each picture, and paint the "
    "strongest style whose content leakage and prompt likeness stay within the margins of a picture "
    "without the style; the map below shows every try, click one to paint it"
)


def margin_spin() -> QDoubleSpinBox:
    """A margin of ``generate.auto``, over its wire range."""
    return spin(*wire_range("leakage_margin", protocol.Auto), 0.01, 3)


def find_strength_section(
    form: Form, find: Callable[[], None], render_point: Callable[[int], None]
) -> tuple[Section, QPushButton, TradeoffPanel]:
    section = Section("Find strength", "let the backend search the style and content strengths for you")
    layout = form_layout(section)
    leakage = form.add(
        "auto_leakage_margin",
        margin_spin(),
        "how much more of the described content (Content, above) a picture may show than one without "
        "the style (0.02: hardly any more)",
    )
    prompt = form.add(
        "auto_prompt_margin",
        margin_spin(),
        "how much less like the prompt a picture may be than one without the style",
    )
    precise = form.add(
        "auto_presets",
        QCheckBox("Also try precise"),
        "also search the precise preset (the reference's composition pushed away) beside the Blocks "
        "section's preset",
    )
    button = QPushButton("Find strength")
    button.setToolTip(FIND_TIP)
    button.clicked.connect(find)
    panel = TradeoffPanel()
    panel.view.picked.connect(render_point)
    layout.addRow("Leakage ±", leakage)
    layout.addRow("Prompt ±", prompt)
    layout.addRow(precise)
    layout.addRow(button)
    layout.addRow(panel)
    return section, button, panel


def live_section(form: Form) -> Section:
    section = Section("Live", "the settings live mode uses")
    layout = form_layout(section)
    preset = form.add(
        "live_preset",
        narrow(ComboBox()),
        "the few-step recipe live mode paints with (fast enough to follow strokes)",
    )
    side = form.add(
        "live_max_side",
        int_spin(256, 2048, 64),
        "live results are painted at most this large, then scaled to the canvas",
    )
    seed = form.add(
        "live_seed",
        int_spin(0, 2**31 - 1),
        "live mode keeps one seed, so that only your painting changes the picture",
    )
    layout.addRow("Speed", preset)
    layout.addRow("Resolution", side)
    layout.addRow("Seed", seed)
    return section


def negative_section(form: Form) -> Section:
    section = Section("Negative prompt", "what the picture should not have")
    negative = form.add(
        "negative_prompt", QPlainTextEdit(), "what to stay away from (needs guidance above 1)"
    )
    negative.setFixedHeight(48)
    form_layout(section).addRow(negative)
    return section


def preview_side_row(form: Form) -> QComboBox:
    """How large previews travel: a Backend-section row (it depends on the link to the backend)."""
    return form.add(
        "preview_side",
        choices(PREVIEW_SIDES),
        "how large each step's preview is sent, when the backend previews with its tiny autoencoder "
        "(a smaller one suits a slow network link; rough previews are always 1/8 size)",
    )


def custom_start_of(controller) -> str:
    """The custom preset's first map for the backend's model, or the family the grid last showed."""
    family = BlockScalesByFamily(controller.store).family()
    return custom_start_for(controller.session.features, family)


def build_sections(form: Form, controller, apply_speed: Callable[[], None]) -> Sections:
    """The docker's parts an artist opens now and then, in the order they are shown."""
    blocks = blocks_section(form, lambda: custom_start_of(controller))
    regions = Section("Regions", "parts of the picture, each in the style of its own reference")
    region_list = form.add("regions", RegionList(controller))
    form_layout(regions).addRow(region_list)
    find, find_button, tradeoff = find_strength_section(
        form, lambda: controller.generate(auto=True), controller.render_point
    )
    sweep, sweep_button = sweep_section(form, lambda: controller.generate(sweep=True))
    sampling = sampling_section(form, apply_speed)
    loras = Section("LoRAs", "extra trained looks the backend offers, each with a weight")
    lora_list = form.add("loras", LoraList())
    form_layout(loras).addRow(lora_list)
    by_name = {
        "blocks": blocks,
        "regions": regions,
        "find": find,
        "sweep": sweep,
        "sampling": sampling,
        "loras": loras,
        "live": live_section(form),
        "negative": negative_section(form),
    }
    return Sections(
        by_name, form["block_scales"], lora_list, region_list, sweep_button, find_button, tradeoff
    )
