"""The docker's sections that open on a click: blocks, sampling, LoRAs, live, negative prompt, backend.

``build_sections`` makes their widgets as attributes of the docker (``docker.steps``...), which loads
and stores them with the rest of its settings.
"""

from __future__ import annotations

from collections.abc import Iterable

from .backend_section import BackendSection, narrow
from .deps import protocol
from .qt import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)
from .region_rows import RegionList
from .sections import BlockGrid, LoraList, Section

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


def spin(low: float, high: float, step: float, decimals: int = 2) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(low, high)
    box.setSingleStep(step)
    box.setDecimals(decimals)
    return box


def choices(items: Iterable[tuple[str, object]]) -> QComboBox:
    """A combo box of (label, value) items; ``currentData()`` is the chosen value."""
    box = QComboBox()
    for label, value in items:
        box.addItem(label, value)
    return box


def int_spin(low: int, high: int, step: int = 1) -> QSpinBox:
    box = QSpinBox()
    box.setRange(low, high)
    box.setSingleStep(step)
    return box


def side_by_side(*widgets: QWidget) -> QWidget:
    holder = QWidget()
    layout = QHBoxLayout(holder)
    layout.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.addWidget(widget)
    return holder


def custom_chosen(docker) -> None:
    """The grid edits only the custom preset (an empty grid starts from InstantStyle's style block);
    the layout push only the precise one."""
    custom = docker.preset.currentData() == "custom"
    docker.block_grid.setEnabled(custom)
    docker.layout_push.setEnabled(docker.preset.currentData() == "precise")
    if custom and not docker.block_grid.text():
        docker.block_grid.set_text('{"up": {"block_0": [0.0, 1.0]}}')


PREVIEW_SIDES = [
    ("Canvas size (up to 1024 px)", 1024),
    ("Up to 512 px", 512),
    ("Up to 256 px (slow link)", 256),
]


def build_sections(docker) -> list[Section]:
    """The docker's parts an artist opens now and then; their widgets become the docker's attributes."""
    blocks = Section("Blocks", "which parts of the model take the style")
    form = QFormLayout(blocks.body)
    docker.preset = choices(PRESETS)
    docker.preset.setToolTip(
        "Style: only the block that carries style (InstantStyle's default, least content leaks). "
        "Precise: the same, and the reference's composition actively pushed away (needs guidance > 1). "
        "Style + Layout: also the composition. All: classic IP-Adapter. Custom: set each block below."
    )
    docker.block_grid = BlockGrid()
    docker.preset.currentIndexChanged.connect(lambda: custom_chosen(docker))
    docker.layout_push = spin(0.0, 5.0, 0.25)
    docker.layout_push.setToolTip(
        "Precise only: how hard the reference's composition is pushed away (about 2 is a good start; "
        "0 is the plain style preset)"
    )
    form.addRow("Blocks", docker.preset)
    form.addRow("Layout push", docker.layout_push)
    form.addRow(docker.block_grid)

    sampling = Section("Sampling", "speed, steps, sampler, guidance, seed and size")
    form = QFormLayout(sampling.body)
    docker.speed = QComboBox()
    docker.speed.setToolTip(
        "fill in a few-step recipe the backend offers (its LoRA, sampler, steps and guidance); "
        "each can still be changed below"
    )
    docker.speed.activated.connect(docker._apply_speed)
    docker.sampler = QComboBox()
    docker.sampler.addItem("Model default", "")
    for sampler in protocol.Sampler:
        docker.sampler.addItem(SAMPLER_LABELS.get(sampler.value, sampler.value), sampler.value)
    docker.sampler.setToolTip("how the picture is found step by step; some suit few-step LoRAs only")
    docker.steps = int_spin(1, 150)
    docker.steps.setToolTip("more steps: finer detail, slower (few-step presets need 4 to 8)")
    docker.guidance = spin(0.0, 30.0, 0.5, 1)
    docker.guidance.setToolTip("how closely the prompt is followed; 1 or less turns the negative prompt off")
    docker.control_scale = spin(0.0, 2.0, 0.05)
    docker.control_scale.setToolTip("how strictly 'keep the lines' follows the layer's edges")
    docker.seed = int_spin(0, 2**31 - 1)
    docker.seed.setToolTip("the same seed and settings give the same picture")
    docker.seed_locked = QCheckBox("Lock")
    docker.seed_locked.setToolTip("keep this seed for every job (else a new one each time)")
    dice = QToolButton()
    dice.setText("Random")
    dice.clicked.connect(docker._randomise_seed)
    docker.batch = int_spin(1, 8)
    docker.batch.setToolTip("pictures per job, each with the next seed")
    docker.auto_size = QCheckBox("Canvas / selection size")
    docker.auto_size.setToolTip("paint at the size of the canvas or selection (within the backend's limits)")
    docker.width_box, docker.height_box = int_spin(64, 2048, 8), int_spin(64, 2048, 8)
    docker.auto_size.toggled.connect(
        lambda on: (docker.width_box.setEnabled(not on), docker.height_box.setEnabled(not on))
    )
    form.addRow("Speed", docker.speed)
    form.addRow("Sampler", docker.sampler)
    form.addRow("Steps", side_by_side(docker.steps, QLabel("Guidance"), docker.guidance))
    form.addRow("Line strength", docker.control_scale)
    form.addRow("Seed", side_by_side(docker.seed, docker.seed_locked, dice))
    form.addRow("Batch", docker.batch)
    form.addRow(docker.auto_size)
    form.addRow("Size", side_by_side(docker.width_box, QLabel("×"), docker.height_box))

    regions = Section("Regions", "parts of the picture, each in the style of its own reference")
    docker.regions = RegionList(docker.controller)
    QVBoxLayout(regions.body).addWidget(docker.regions)

    sweep = Section("Sweep", "a grid of scored pictures over one or two settings, to find the balance")
    form = QFormLayout(sweep.body)
    docker.sweep_first, docker.sweep_second = QComboBox(), QComboBox()
    docker.sweep_second.addItem("—", "")
    for combo in (docker.sweep_first, docker.sweep_second):
        for label, axis in SWEEP_AXES:
            combo.addItem(label, axis)
        combo.setToolTip("what changes from picture to picture")
    docker.sweep_first_values, docker.sweep_second_values = QLineEdit(), QLineEdit()
    for edit in (docker.sweep_first_values, docker.sweep_second_values):
        edit.setToolTip("the values to try, separated by commas (e.g. 0.4, 0.6, 0.8, 1.0; presets by name)")
    docker.sweep_button = QPushButton("Run sweep")
    docker.sweep_button.setToolTip(
        "one picture per combination, each scored: style (likeness to the references), content (leakage "
        "of the described content) and prompt; they land in one layer group, Keep picks one"
    )
    docker.sweep_button.clicked.connect(lambda: docker.controller.generate(sweep=True))
    form.addRow("Across", side_by_side(docker.sweep_first, docker.sweep_first_values))
    form.addRow("Down", side_by_side(docker.sweep_second, docker.sweep_second_values))
    form.addRow(docker.sweep_button)

    loras = Section("LoRAs", "extra trained looks the backend offers, each with a weight")
    docker.loras = LoraList()
    QVBoxLayout(loras.body).addWidget(docker.loras)

    live = Section("Live", "the settings live mode uses")
    form = QFormLayout(live.body)
    docker.live_preset = QComboBox()
    docker.live_preset.setToolTip("the few-step recipe live mode paints with (fast enough to follow strokes)")
    docker.live_max_side = int_spin(256, 2048, 64)
    docker.live_max_side.setToolTip("live results are painted at most this large, then scaled to the canvas")
    docker.live_seed = int_spin(0, 2**31 - 1)
    docker.live_seed.setToolTip("live mode keeps one seed, so that only your painting changes the picture")
    form.addRow("Speed", docker.live_preset)
    form.addRow("Resolution", docker.live_max_side)
    form.addRow("Seed", docker.live_seed)

    negative = Section("Negative prompt", "what the picture should not have")
    docker.negative = QPlainTextEdit()
    docker.negative.setFixedHeight(48)
    docker.negative.setToolTip("what to stay away from (needs guidance above 1)")
    QVBoxLayout(negative.body).addWidget(docker.negative)

    backend = BackendSection(docker.controller)
    docker.backend_section = backend
    docker.url, docker.token = backend.url, backend.token
    docker.preview_side = choices(PREVIEW_SIDES)
    docker.preview_side.setToolTip(
        "how large each step's preview is sent, when the backend previews with its tiny autoencoder "
        "(a smaller one suits a slow network link; rough previews are always 1/8 size)"
    )
    narrow(docker.preview_side)
    backend.body.layout().addWidget(side_by_side(QLabel("Previews"), docker.preview_side))
    docker.sections = {
        "sweep": sweep,
        "blocks": blocks,
        "regions": regions,
        "sampling": sampling,
        "loras": loras,
        "live": live,
    }
    return [blocks, regions, sweep, sampling, loras, live, negative, backend]
