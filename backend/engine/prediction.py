"""What the UNet predicts: the noise (epsilon: SDXL base and most fine-tunes) or the velocity
(v-prediction: NoobAI-XL v-pred, Illustrious v-pred and other anime fine-tunes), and whether its
noise schedule ends at zero signal-to-noise (zero terminal SNR, "zsnr").

A v-prediction model sampled as an epsilon one gives grey, washed-out pictures without an error, and
diffusers' ``from_single_file`` does not look: it gives every SDXL file the base model's epsilon
scheduler. Single files made by ComfyUI, Forge and reForge carry two empty marker tensors, ``v_pred``
and ``ztsnr`` (ComfyUI's ``supported_models.SDXL.model_type`` reads them the same way), so ``auto``
reads the file's keys; ``--prediction`` says it for a file without markers. The scheduler is rebuilt
from its config, since diffusers applies ``rescale_betas_zero_snr`` only when one is constructed;
every sampler a job picks starts from that config (``samplers.JobSchedulers``).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

V_PRED_KEY = "v_pred"
ZERO_SNR_KEY = "ztsnr"

ZERO_SNR_GUIDANCE_RESCALE = 0.7
"""CFG rescale a zero-terminal-SNR model's jobs get unless they say otherwise: without it, guidance
over-exposes them (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
section 3.4, whose recommended value this is)."""


class Prediction(str, Enum):
    AUTO = "auto"
    """From a single file's marker keys; a folder or repo: its scheduler config as it is."""
    EPSILON = "epsilon"
    V = "v"
    V_ZERO_SNR = "v-zsnr"

    @property
    def zero_snr(self) -> bool:
        return self is Prediction.V_ZERO_SNR


def marked_prediction(path: Path) -> Prediction:
    """A single file's prediction from its marker keys (a ``.safetensors`` file's header only)."""
    if path.suffix != ".safetensors":
        return Prediction.EPSILON  # a pickle is not opened twice: --prediction says it
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as checkpoint:
        keys = set(checkpoint.keys())
    if V_PRED_KEY not in keys:
        return Prediction.EPSILON
    return Prediction.V_ZERO_SNR if ZERO_SNR_KEY in keys else Prediction.V


def resolve(asked: Prediction, base: str, single_file: bool) -> Prediction | None:
    """The prediction to set on the model's scheduler; None: keep the one it was loaded with."""
    if asked is not Prediction.AUTO:
        return asked
    if not single_file:
        return None
    marked = marked_prediction(Path(base).expanduser())
    return marked if marked is not Prediction.EPSILON else None


def configured(scheduler: object, prediction: Prediction) -> object:
    """A new scheduler of ``scheduler``'s kind for ``prediction`` (zero SNR: trailing timesteps, so the
    first step starts from pure noise, as the paper prescribes)."""
    settings: dict[str, object] = {
        "prediction_type": "v_prediction" if prediction is not Prediction.EPSILON else "epsilon",
        "rescale_betas_zero_snr": prediction.zero_snr,
    }
    if prediction.zero_snr:
        settings["timestep_spacing"] = "trailing"
    return type(scheduler).from_config(scheduler.config, **settings)  # type: ignore[attr-defined]


def model_prediction(scheduler: object) -> Prediction:
    """What a loaded model's scheduler is set to predict."""
    config = scheduler.config  # type: ignore[attr-defined]
    if getattr(config, "prediction_type", "epsilon") != "v_prediction":
        return Prediction.EPSILON
    return Prediction.V_ZERO_SNR if getattr(config, "rescale_betas_zero_snr", False) else Prediction.V


def default_guidance_rescale(scheduler: object) -> float:
    """What a job's ``guidance_rescale`` is when it does not say: ``ZERO_SNR_GUIDANCE_RESCALE`` for a
    zero-terminal-SNR model, else 0 (plain CFG)."""
    zero_snr = bool(getattr(scheduler.config, "rescale_betas_zero_snr", False))  # type: ignore[attr-defined]
    return ZERO_SNR_GUIDANCE_RESCALE if zero_snr else 0.0
