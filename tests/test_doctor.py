"""``python -m backend doctor``: one ``name: value`` line each for a bug report, exit 1 with the reason
on its line when the model or the job fails."""

from __future__ import annotations

import subprocess
import sys

from backend import doctor
from backend.cli import build_parser
from tests.conftest import REPO


def lines_of(text: str) -> dict[str, str]:
    return {
        name: value.strip()
        for name, value in (line.split(": ", 1) for line in text.splitlines() if ": " in line)
    }


def test_the_doctor_says_what_this_machine_runs_and_runs_one_job():
    command = [sys.executable, "-m", "backend", "doctor", "--model", "tiny", "--device", "cpu"]
    command += ["--size", "64", "--steps", "2", "--preview-vae", "none"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    found = {name.strip(): value for name, value in lines_of(done.stdout).items()}
    assert found["device"] == "cpu" and found["memory tier"] == "full" and found["dtype"] == "float32"
    assert found["previews"] == "linear" and found["backend"].endswith("(protocol 1)")
    assert found["job"].startswith("64² in 2 steps: ") and found["job"].endswith(" ms/step")
    assert found["pixels"].startswith("finite, ") and "TEST/DEMO" in found["model"]
    assert found["memory"].startswith("CPU, ") and "warning" not in found  # the test model: no warning
    assert "Traceback" not in done.stdout + done.stderr


def test_a_failed_model_or_job_is_one_line_and_exit_1(monkeypatch, capsys, engine):
    from backend.engine.decode import NonFiniteOutput

    args = build_parser().parse_args(["doctor", "--model", "tiny", "--device", "cpu", "--size", "64"])

    def no_model(_args):
        raise OSError("no space left on device\nwhile reading unet.safetensors")

    monkeypatch.setattr("backend.model_options.load_engine", no_model)
    assert doctor.run_doctor(args) == 1
    found = {name.strip(): value for name, value in lines_of(capsys.readouterr().out).items()}
    assert found["model"] == "FAILED: OSError: no space left on device" and "job" not in found

    def nan_job(*_args, **_kwargs):
        raise NonFiniteOutput("the decoded pictures hold NaN or infinite values")

    monkeypatch.setattr("backend.model_options.load_engine", lambda _args: engine)
    monkeypatch.setattr(engine, "generate", nan_job)
    assert doctor.run_doctor(args) == 1
    found = {name.strip(): value for name, value in lines_of(capsys.readouterr().out).items()}
    assert found["job"].startswith("FAILED: NonFiniteOutput: the decoded pictures hold NaN")
    assert found["device"] == "cpu" and "pixels" not in found
