"""Enumerations shared by the wire format, the engine and the plugin.

They live in ``protocol`` because it is the one package that every side may
import (standard library only), so a preset or mode has exactly one spelling.
"""

from __future__ import annotations

from enum import Enum


class ModelFamily(str, Enum):
    """Which kind of base model the server loaded (``model_status.features.family``): its UNet's
    attention blocks, native size and text encoders differ, so block maps and sizes follow it."""

    SDXL = "sdxl"
    """Stable Diffusion XL: 1024 px native, two text encoders (CLIP-L and OpenCLIP bigG)."""
    SD15 = "sd15"
    """Stable Diffusion 1.5: 512 px native, one CLIP-L text encoder; its IP-Adapters always read
    ViT-H image encoders."""

    @property
    def label(self) -> str:
        """The name artists know it by: "SDXL", "SD1.5"."""
        return {ModelFamily.SDXL: "SDXL", ModelFamily.SD15: "SD1.5"}[self]


class BlockPreset(str, Enum):
    """Which UNet attention blocks receive the style image features."""

    STYLE = "style"
    """The block that carries style only, the paper's default: on SDXL ``up_blocks.0.attentions.1``;
    the model's own blocks are in ``features.preset_blocks``."""
    STYLE_LAYOUT = "style+layout"
    """The style block plus the spatial layout block: on SDXL ``down_blocks.2.attentions.1``; the
    model's own blocks are in ``features.preset_blocks``."""
    ALL = "all"
    """Every cross-attention block: plain IP-Adapter."""
    CUSTOM = "custom"
    """A per-block scale map given by the user."""
    PRECISE = "precise"
    """The style block, and the reference's layout pushed away: at the layout block (on SDXL
    ``down_blocks.2.attentions.1``; the model's own blocks are in ``features.preset_blocks``) it goes
    into the negative (unconditional) branch only, at ``layout_push`` (needs guidance above 1)."""


class Mode(str, Enum):
    """What the job starts from."""

    TXT2IMG = "txt2img"
    """A new image from the prompt and the style reference."""
    IMG2IMG = "img2img"
    """Stylize an existing image (a layer) with a denoising strength."""
    INPAINT = "inpaint"
    """Like img2img, but only inside a mask (a selection)."""
    CONTROL = "control"
    """A new image that keeps an init image through a ControlNet (``generate.control``: its Canny edges
    or, with a Tile ControlNet, the picture itself): restyle, keep the lines."""


class ControlKind(str, Enum):
    """What a ``control`` job keeps of its init image (``model_status.features.controls``: which the
    server loaded)."""

    EDGES = "edges"
    """Its Canny edges, through a canny ControlNet: the lines stay, everything else is restyled."""
    TILE = "tile"
    """The picture itself, through a Tile ControlNet (no preprocessor): shapes and colour layout
    stay, the style repaints the surface (the recipe InstantStyle-Plus builds on)."""


class StyleMetric(str, Enum):
    """What made a ``scores.style``."""

    CLIP = "clip"
    """Cosine of the IP-Adapter's CLIP image embeddings: it sees content as much as style."""
    CSD = "csd"
    """Cosine of CSD style descriptors (Somepalli et al. 2024: a CLIP ViT-L/14 with a head trained to
    match styles, not subjects), where the server has a CSD checkpoint."""


class Sampler(str, Enum):
    """How the denoising steps are taken (diffusers schedulers; names as artists know them)."""

    EULER = "euler"
    EULER_A = "euler_a"
    EULER_TRAILING = "euler_trailing"
    """Euler over timesteps spaced from the end (ComfyUI's sgm_uniform): SDXL-Lightning's sampler."""
    DPMPP_2M = "dpmpp_2m"
    DPMPP_2M_KARRAS = "dpmpp_2m_karras"
    DPMPP_SDE_KARRAS = "dpmpp_sde_karras"
    DDIM = "ddim"
    DDIM_TRAILING = "ddim_trailing"
    """DDIM over timesteps spaced from the end: Hyper-SD's sampler."""
    UNIPC = "unipc"
    LCM = "lcm"
    TCD = "tcd"


class SweepAxis(str, Enum):
    """What a strength sweep varies, one grid axis each."""

    STYLE_SCALE = "style_scale"
    CONTENT_SCALE = "content_scale"
    PRESET = "preset"
    SEED = "seed"


class SearchStage(str, Enum):
    """Where a point of an auto-strength search comes from."""

    BASELINE = "baseline"
    """No style (style scale 0): the leakage and prompt alignment the rule compares against."""
    COARSE = "coarse"
    FINE = "fine"
    """Halfway between the coarse winner and its neighbours."""


class ImageAdapter(str, Enum):
    """What the loaded IP-Adapter reads from a style image (``model_status.features.image_adapter``)."""

    PLAIN = "plain"
    """The image encoder's pooled embedding, projected to 4 tokens (``ip-adapter_sdxl``)."""
    PLUS = "plus"
    """Its patch features through a Resampler, 16 tokens (``ip-adapter-plus_sdxl_vit-h``): finer
    detail; no content subtraction (patch features have no text counterpart)."""


class PreviewMethod(str, Enum):
    """How the server draws its per-step previews (``model_status.features.preview``)."""

    LINEAR = "linear"
    """The family's linear latent-to-RGB factors, at latent resolution (1/8 of the image side)."""
    TINY_VAE = "tiny-vae"
    """A tiny autoencoder (TAESD-XL; TAESD on SD1.5), at the size the client asks for
    (``generate.preview_side``)."""


class MessageType(str, Enum):
    """The ``type`` of a JSON control message (text frame)."""

    HELLO = "hello"
    GENERATE = "generate"
    CANCEL = "cancel"
    PING = "ping"
    QUEUED = "queued"
    STARTED = "started"
    PROGRESS = "progress"
    RESULT = "result"
    CANCELLED = "cancelled"
    ERROR = "error"
    PONG = "pong"
    MODEL_STATUS = "model_status"


class ModelPhase(str, Enum):
    """Where the server is in making its model ready. Jobs sent before ``ready`` wait in the queue."""

    DOWNLOADING = "downloading"
    LOADING = "loading"
    WARMING_UP = "warming_up"
    READY = "ready"
    FAILED = "failed"
    """The model could not be loaded: jobs are refused with ``model_failed`` and the message says why."""


class ErrorCode(str, Enum):
    """Machine-readable reason carried by ``error`` messages."""

    BAD_JSON = "bad_json"
    BAD_MESSAGE = "bad_message"
    UNKNOWN_TYPE = "unknown_type"
    MISSING_FIELD = "missing_field"
    BAD_FIELD = "bad_field"
    OUT_OF_RANGE = "out_of_range"
    TOO_LARGE = "too_large"
    BAD_FRAME = "bad_frame"
    BAD_VERSION = "bad_version"
    UNAUTHORIZED = "unauthorized"
    NOT_READY = "not_ready"
    DUPLICATE_JOB = "duplicate_job"
    UNKNOWN_JOB = "unknown_job"
    MISSING_INPUT = "missing_input"
    QUEUE_FULL = "queue_full"
    BAD_REQUEST = "bad_request"
    ENGINE_ERROR = "engine_error"
    OUT_OF_MEMORY = "out_of_memory"
    SHUTTING_DOWN = "shutting_down"
    MODEL_FAILED = "model_failed"
    WORKER_LOST = "worker_lost"
    """The worker running the job died (killed, out of host memory, its machine lost); it is replaced
    and the job may be sent again."""
    INTERNAL = "internal"


class FrameKind(int, Enum):
    """What a binary frame carries."""

    INPUT = 1
    """Client to server: an image a ``generate`` refers to (style reference, init image, mask)."""
    PREVIEW = 2
    """Server to client: one denoising step's preview at latent resolution."""
    RESULT = 3
    """Server to client: one finished image."""
    RESULT_TILE = 4
    """Server to client: a rectangle of a finished image too large for one frame; its payload starts
    with the rectangle's ``x`` and ``y`` (u32 each) in the image ``result`` announced."""


class PixelFormat(int, Enum):
    """Layout of a binary frame's payload."""

    RGB8 = 1
    RGBA8 = 2
    GRAY8 = 3
    PNG = 4

    @property
    def channels(self) -> int:
        return {PixelFormat.RGB8: 3, PixelFormat.RGBA8: 4, PixelFormat.GRAY8: 1}.get(self, 0)
