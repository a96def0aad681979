"""The command lines, as a user runs them: generate, serve (with SIGTERM), JSON logs."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys

from PIL import Image

from backend.client import InstantStyleClient
from backend.server.logs import JsonFormatter
from protocol import Error, ErrorCode
from tests.conftest import REPO
from tests.server_helpers import generate_message, run

STYLE = REPO / "examples" / "style.png"


def backend(arguments: str) -> list[str]:
    """``python -m backend ARGUMENTS`` (paths here have no spaces)."""
    return [sys.executable, "-m", "backend", *arguments.split()]


def test_generate_writes_the_image_previews_and_test_label(tmp_path, tiny_paths):
    out, previews = tmp_path / "out.png", tmp_path / "previews"
    result = subprocess.run(
        backend(
            f"generate --model tiny --style {STYLE} --prompt cat --content stripes --width 64 --height 96 "
            f"--steps 3 --batch 2 --out {out} --previews {previews} --device cpu"
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    image = Image.open(out)
    assert image.size == (64, 96) and "TEST" in image.text["instantstyle:model"]
    assert (
        image.text["instantstyle:seed"] == "42"
        and Image.open(tmp_path / "out-1.png").text["instantstyle:seed"] == "43"
    )
    assert sorted(p.name for p in previews.iterdir()) == ["step-001.png", "step-002.png", "step-003.png"]
    assert "TEST model" in result.stdout


def test_generate_reports_bad_input_without_a_traceback(tmp_path, tiny_paths):
    result = subprocess.run(
        backend(
            f"generate --model tiny --style {STYLE} --prompt x --width 60 --out {tmp_path}/o.png --device cpu"
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "multiple of 8" in result.stderr and "Traceback" not in result.stderr


def test_serve_shuts_down_cleanly_on_sigterm_telling_clients(tiny_paths):
    server = subprocess.Popen(
        backend("serve --model tiny --port 0 --device cpu --log-json"),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = None
        for line in server.stdout:
            match = re.search(r"ready on (ws://\S+)", line)
            if match:
                url = match.group(1)
                break
        assert url, server.stderr.read()

        async def scenario():
            async with InstantStyleClient.connect(url) as client:
                await client.submit(generate_message(1, steps=2), {0: Image.open(STYLE).convert("RGB")})
                done = await client.follow(1)
                server.send_signal(signal.SIGTERM)
                return done, await client.receive()

        done, goodbye = run(scenario(), timeout=120)
        assert done.error is None and len(done.images) == 1
        assert isinstance(goodbye, Error) and goodbye.code is ErrorCode.SHUTTING_DOWN
        assert server.wait(30) == 0
        logs = [json.loads(line) for line in server.stderr.read().splitlines() if line.startswith("{")]
        assert any(entry["message"].startswith("listening on") for entry in logs)
        assert any(entry["message"].startswith("warmed up in") for entry in logs)
        assert {"time", "level", "logger", "message"} <= set(logs[0])
    finally:
        if server.poll() is None:
            server.kill()


def test_json_log_lines():
    record = logging.LogRecord("backend", logging.WARNING, __file__, 1, "job %s failed", (3,), None)
    record.job_id = 3
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "warning" and entry["message"] == "job 3 failed" and entry["job_id"] == 3


def test_arguments_are_checked_before_any_model_loads(monkeypatch, capsys, tmp_path):
    """Each mistake is one line on stderr and exit 2, within a second, and no model is loaded."""
    import socket

    from backend import cli, model_options
    from backend.engine.engine import InstantStyleEngine
    from backend.server import app

    def must_not_load(*args, **kwargs):
        raise AssertionError("a model was loaded (or a server started) before the arguments were checked")

    monkeypatch.setattr(model_options, "load_engine", must_not_load)
    monkeypatch.setattr(InstantStyleEngine, "load_planned", must_not_load)
    monkeypatch.setattr(app, "run_server", must_not_load)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    taken = busy.getsockname()[1]
    cases = {
        "serve --device cuda": "--device cuda: PyTorch sees no CUDA GPU here",
        "serve --device tpu": "--device tpu: expected auto, cuda, cuda:N, mps or cpu",
        "serve --port 70000": "--port 70000: expected 0 to 65535",
        f"serve --port {taken}": f"--port {taken}: 127.0.0.1:{taken} is not free",
        "serve --memory-tier huge": "--memory-tier huge: expected one of auto, full",
        "serve --dtype fp8": "--dtype fp8: expected one of auto, fp16, bf16, fp32",
        f"serve --vae {tmp_path}/no-vae": f"--vae {tmp_path}/no-vae: no such file or folder",
        "serve --preview-vae taesd.pth": "--preview-vae taesd.pth: no such file or folder",
        "serve --model ./nowhere.safetensors": "--model ./nowhere.safetensors: no such file or folder",
        # A hub IP-Adapter names a file as owner/repo/path; a bare file name is local.
        "serve --ip-adapter adapter.safetensors": "--ip-adapter adapter.safetensors: no such file or folder",
        "serve --host 0.0.0.0": "binding beyond loopback needs a token",
        "serve --ray 127.0.0.1:1": "cannot reach the Ray cluster at 127.0.0.1:1: Connection refused",
        "serve --ray nowhere": "--ray nowhere: expected local, auto, HOST:PORT or ray://HOST:PORT",
        "serve --ray local --workers 0": "--workers 0: expected 1 or more",
        f"generate --style {STYLE} --prompt x --width 60": "multiple of 8",
        f"generate --style {tmp_path}/none.png --prompt x": "No such file",
    }
    try:
        for arguments, expected in cases.items():
            assert cli.main(arguments.split()) == 2, arguments
            err = capsys.readouterr().err.strip()
            assert expected in err and len(err.splitlines()) == 1, (arguments, err)
    finally:
        busy.close()


def test_the_readme_main_job_writes_a_labelled_png_with_progress(tmp_path, capsys, tiny_paths):
    """``python -m backend.client --serve-tiny ...``: the README's one command, in process."""
    from backend import client

    out, previews = tmp_path / "out.png", tmp_path / "previews"
    arguments = f"--serve-tiny --style {STYLE} --prompt a-lighthouse --content stripes --width 64 --height 64"
    arguments += f" --steps 3 --out {out} --previews {previews}"
    assert client.main(arguments.split()) == 0
    captured = capsys.readouterr()
    assert [line for line in captured.err.splitlines() if line.startswith("step ")][-1].startswith("step 3/3")
    # The server's preview budget: the first step and the last (the result itself) at least.
    assert {"step-001.png", "step-003.png"} <= {path.name for path in previews.glob("step-*.png")}
    labels = Image.open(out).text
    assert "TEST" in labels["instantstyle:model"] and labels["instantstyle:prompt"] == "a-lighthouse"
    assert "TEST model" in captured.out


def test_the_headless_client_says_what_is_wrong_in_one_line(tmp_path, capsys):
    import socket

    from backend import client

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    cases = {
        f"--url ws://127.0.0.1:{port}": f"no backend at ws://127.0.0.1:{port}",
        "--url http://127.0.0.1:1": "is not a WebSocket address",
        f"--url ws://127.0.0.1:{port} --style {tmp_path}/gone.png": f"{tmp_path}/gone.png: no such file",
    }
    for arguments, expected in cases.items():
        style = "" if "--style" in arguments else f" --style {STYLE}"
        assert client.main(f"{arguments}{style} --prompt x".split()) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, (arguments, err)
