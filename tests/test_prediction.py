"""v-prediction checkpoints (NoobAI-XL v-pred, Illustrious v-pred): found from a single file's marker
keys or said with ``--prediction``, every sampler set up for them, CFG rescale by default with zero
terminal SNR (``backend/engine/prediction.py``)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from backend.engine.engine import InstantStyleEngine
from backend.engine.prediction import Prediction, marked_prediction
from backend.engine.request import GenerationRequest, RequestError, StyleReference
from backend.model_options import add_model_arguments, model_spec
from protocol import Mode, Sampler
from tests.conftest import noise_image


@pytest.fixture(scope="module")
def marked_files(tiny_paths, tmp_path_factory) -> dict[str, Path]:
    """The tiny single file as ComfyUI/Forge save v-prediction models: empty marker tensors added."""
    folder = tmp_path_factory.mktemp("prediction")
    state = load_file(str(tiny_paths.single_file))
    files = {}
    for name, markers in (("v", ["v_pred"]), ("v-zsnr", ["v_pred", "ztsnr"]), ("zsnr-only", ["ztsnr"])):
        save_file(
            {**state, **{key: torch.tensor([]) for key in markers}}, str(folder / f"{name}.safetensors")
        )
        files[name] = folder / f"{name}.safetensors"
    return files


def test_a_single_files_markers_say_what_it_predicts(tiny_paths, marked_files, tmp_path):
    assert marked_prediction(tiny_paths.single_file) is Prediction.EPSILON
    assert marked_prediction(marked_files["v"]) is Prediction.V
    assert marked_prediction(marked_files["v-zsnr"]) is Prediction.V_ZERO_SNR
    assert marked_prediction(marked_files["zsnr-only"]) is Prediction.EPSILON  # as ComfyUI reads it
    assert marked_prediction(tmp_path / "model.ckpt") is Prediction.EPSILON  # a pickle: --prediction


def load(tiny_paths, base: Path, prediction: Prediction = Prediction.AUTO) -> InstantStyleEngine:
    spec = dataclasses.replace(tiny_paths.spec("single-file"), base=str(base), prediction=prediction)
    return InstantStyleEngine.load(spec, device="cpu")


def job(**fields) -> GenerationRequest:
    values = {"prompt": "a fox", "style_images": [StyleReference(noise_image(1))], "steps": 4, "seed": 3}
    return GenerationRequest(**{"width": 64, "height": 64, **values, **fields})


@pytest.fixture(scope="module")
def zero_snr(tiny_paths, marked_files) -> InstantStyleEngine:
    return load(tiny_paths, marked_files["v-zsnr"])


def test_a_zero_snr_file_gets_a_v_scheduler_for_every_sampler(zero_snr):
    assert zero_snr.features.prediction == "v-zsnr"
    for sampler in [None, *Sampler]:
        scheduler = zero_snr.schedulers.fresh(sampler)
        assert scheduler.config.prediction_type == "v_prediction", sampler
        if hasattr(scheduler, "alphas_cumprod"):  # rescaled when built: the last step is pure noise
            assert float(scheduler.alphas_cumprod[-1]) <= 2**-24, sampler  # SDXL's own: 0.0047
        image = zero_snr.generate(job(sampler=sampler)).images[0]
        assert image.shape == (64, 64, 3)  # finite: a NaN picture is refused in decode
    assert zero_snr.schedulers.model_scheduler.config.timestep_spacing == "trailing"


def test_zero_snr_jobs_rescale_guidance_unless_they_say(zero_snr, engine):
    assert zero_snr.prepare(job())[1]["guidance_rescale"] == 0.7
    assert zero_snr.prepare(job(guidance_rescale=0.2))[1]["guidance_rescale"] == 0.2
    assert engine.prepare(job())[1]["guidance_rescale"] == 0.0  # an epsilon model: plain CFG
    assert engine.features.prediction == "epsilon"
    rescaled, plain = (zero_snr.generate(job(guidance_rescale=v)).images[0] for v in (0.7, 0.0))
    assert not np.array_equal(rescaled, plain)
    with pytest.raises(RequestError, match=r"guidance_rescale must be from 0 to 1, got 1\.5"):
        zero_snr.generate(job(guidance_rescale=1.5))
    control = job(mode=Mode.CONTROL, init_image=noise_image(2), guidance_rescale=0.5)
    with pytest.raises(RequestError, match="not available with keep-lines"):
        zero_snr.generate(control)


def test_the_prediction_asked_for_wins_over_the_markers(tiny_paths, marked_files):
    as_epsilon = load(tiny_paths, marked_files["v-zsnr"], Prediction.EPSILON)
    assert as_epsilon.features.prediction == "epsilon"
    said_v = load(tiny_paths, tiny_paths.single_file, Prediction.V)  # a file without markers
    assert said_v.features.prediction == "v" and said_v.prepare(job())[1]["guidance_rescale"] == 0.0
    marked = load(tiny_paths, marked_files["v"])
    assert np.array_equal(marked.generate(job()).images[0], said_v.generate(job()).images[0])
    assert not np.array_equal(as_epsilon.generate(job()).images[0], said_v.generate(job()).images[0])


def test_a_v_model_runs_in_half_precision(tiny_paths, marked_files):
    spec = dataclasses.replace(tiny_paths.spec("single-file"), base=str(marked_files["v-zsnr"]))
    for dtype in ("fp16", "bf16"):
        half = InstantStyleEngine.load(spec, device="cpu", dtype=dtype)
        assert half.features.prediction == "v-zsnr"
        assert half.generate(job(steps=2)).images[0].shape == (64, 64, 3)


def test_the_command_line_says_the_prediction():
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    assert model_spec(parser.parse_args(["--model", "x.safetensors"])).prediction is Prediction.AUTO
    spec = model_spec(parser.parse_args(["--model", "x.safetensors", "--prediction", "v-zsnr"]))
    assert spec.prediction is Prediction.V_ZERO_SNR
    with pytest.raises(SystemExit):
        parser.parse_args(["--prediction", "x0"])
