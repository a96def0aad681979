"""The managed backend's install, update and uninstall (Qt-free, as the docker's Install button runs it).

A real install: a virtual environment made by this machine's Python, ``installer/setup_backend.py``'s
package step (its ``--packages-from`` test mode: this test environment's packages, pip told to use no
network), the backend's code copied from the plugin's bundle, then a real ``python -m backend serve``
from that install running a job whose pixels equal the engine's here. Then what artists meet: an
update that copies new code only, an update that fails or is cancelled (the previous install stays
working), no disk space, no Python, and an uninstall that keeps the models unless asked.
"""

from __future__ import annotations

import json
import shutil
import sys
import sysconfig
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from backend.client import InstantStyleClient, frame_image
from krita_plugin.instantstyle.managed.install import (
    InstallCancelled,
    Installer,
    InstallOptions,
    InstallStep,
)
from krita_plugin.instantstyle.managed.installation import (
    BUNDLED,
    InstallError,
    bundle_ids,
    bundle_root,
    read_installation,
    uninstall,
)
from krita_plugin.instantstyle.managed.manager import PRIMARY_ACTION, BackendManager, Phase
from krita_plugin.instantstyle.managed.model_choice import ManagedModel, ModelChoice
from krita_plugin.instantstyle.managed.platforms import Layout, Platform
from krita_plugin.instantstyle.managed.server_process import ManagedServer, ServerCommand, ServerState
from tests.conftest import REPO, noise_image
from tests.server_helpers import generate_message, run

SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])
OPTIONS = InstallOptions(packages_from=SITE_PACKAGES, python=[sys.executable])


def copy_bundle(target: Path) -> Path:
    source = bundle_root(REPO / "krita_plugin" / "instantstyle")
    assert source == REPO
    for name in BUNDLED:
        if (source / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, target / name)
        else:
            shutil.copytree(source / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
    return target


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """One real install, shared by the tests that look at it (it takes ~30 s)."""
    root = tmp_path_factory.mktemp("managed")
    (root / "bundle").mkdir()
    bundle = copy_bundle(root / "bundle")
    layout = Layout(root / "home", Platform.current())
    seen = []
    started = time.monotonic()
    installation = Installer(layout, bundle, OPTIONS).run(seen.append)
    return layout, bundle, installation, seen, time.monotonic() - started


def test_install_builds_a_working_backend_and_records_it_last(installed, engine, tmp_path):
    layout, bundle, installation, seen, seconds = installed
    assert [p.step for p in seen] == [
        InstallStep.SPACE,
        InstallStep.PYTHON,
        InstallStep.VENV,
        InstallStep.PACKAGES,
        InstallStep.CODE,
        InstallStep.CHECK,
    ]
    assert seen[2].line.startswith("Installing… 3/6: creating the environment")
    packages, code = bundle_ids(bundle)
    assert (installation.venv, installation.code) == (f"venv-{packages}", f"code-{code}")
    assert (
        read_installation(layout) == installation
        and BackendManager(layout, bundle, OPTIONS).phase is not Phase.UPDATE_AVAILABLE
    )
    assert (installation.code_path(layout) / "backend" / "cli.py").is_file()
    print(f"install took {seconds:.1f} s")

    command = ServerCommand(
        [str(installation.python_path(layout))],
        ["--model", "tiny", "--device", "cpu", "--no-warm-up"],
        cwd=str(installation.code_path(layout)),
        env={"HF_HUB_OFFLINE": "1"},
    )
    server = ManagedServer(command, tmp_path / "server.log", tmp_path / "server.json")
    server.start()
    try:
        deadline = time.monotonic() + 180
        while server.poll() is not ServerState.READY:
            assert server.state is not ServerState.FAILED and time.monotonic() < deadline, server.last_lines()
            time.sleep(0.2)

        async def job():
            async with InstantStyleClient.connect(server.url, token=server.token) as client:
                await client.submit(generate_message(1, steps=2, seed=5), {0: noise_image(3)})
                return await client.follow(1)

        outcome = run(job(), timeout=180)
    finally:
        server.stop()
    # The same job in this process (the engine from the repository's code): the same pixels.
    from backend.engine.request import GenerationRequest, StyleReference

    message = generate_message(1, steps=2, seed=5)
    request = GenerationRequest(
        prompt=message.prompt,
        style_images=[StyleReference(noise_image(3))],
        width=message.width,
        height=message.height,
        steps=2,
        seed=5,
    )
    expected = engine.generate(request).images[0]
    (frame,) = outcome.images
    assert np.array_equal(np.asarray(frame_image(frame))[..., :3], expected)


def test_an_update_with_new_code_only_keeps_the_environment(installed):
    layout, bundle, before, _, _ = installed
    (bundle / "backend" / "update_marker.py").write_text("MARK = 1\n")
    try:
        assert BackendManager(layout, bundle, OPTIONS).phase is Phase.UPDATE_AVAILABLE
        seen = []
        after = Installer(layout, bundle, OPTIONS).run(seen.append)
        assert [p.step for p in seen] == [InstallStep.SPACE, InstallStep.CODE, InstallStep.CHECK]
        assert after.venv == before.venv and after.code != before.code
        assert (after.code_path(layout) / "backend" / "update_marker.py").is_file()
        assert not before.code_path(layout).exists()  # the old code is gone once the new one works
        assert read_installation(layout) == after
    finally:
        (bundle / "backend" / "update_marker.py").unlink()
        Installer(layout, bundle, OPTIONS).run()  # back to the shared install's code


def test_a_failed_update_leaves_the_previous_install_working(installed):
    layout, bundle, _, _, _ = installed
    working = read_installation(layout)
    requirements = (bundle / "requirements.txt").read_text()
    (bundle / "requirements.txt").write_text(requirements + "no-such-package-instantstyle==1.0\n")
    try:
        with pytest.raises(InstallError) as failure:
            Installer(layout, bundle, OPTIONS).run()
        assert str(failure.value).startswith("installing the packages failed: ")
        assert "\n" not in str(failure.value)
        assert "no-such-package-instantstyle" in str(failure.value)  # pip's own line
        assert read_installation(layout) == working
        assert sorted(p.name for p in Path(layout.home).iterdir() if p.name.startswith("venv-")) == [
            working.venv
        ]
    finally:
        (bundle / "requirements.txt").write_text(requirements)


def test_a_cancelled_install_leaves_nothing_and_says_so(tmp_path):
    layout = Layout(tmp_path / "home", Platform.current())
    bundle = copy_bundle(tmp_path)
    installer = Installer(layout, bundle, OPTIONS)
    steps = []

    def report(progress):
        steps.append(progress.step)
        if progress.step is InstallStep.VENV:  # cancel while the venv is being made
            threading.Timer(0.3, installer.cancel).start()

    with pytest.raises(InstallCancelled, match="cancelled: nothing was changed"):
        installer.run(report)
    assert InstallStep.CHECK not in steps  # stopped before the end, in the step it was in
    assert read_installation(layout) is None
    assert not any(p.name.startswith(("venv-", "code-")) for p in Path(layout.home).iterdir())


def test_no_disk_space_and_no_python_are_one_line_each(tmp_path):
    layout = Layout(tmp_path / "home", Platform.current())
    bundle = copy_bundle(tmp_path)
    with pytest.raises(
        InstallError, match=r"^not enough disk space in .*GB free, the backend needs 100000 GB"
    ):
        Installer(layout, bundle, InstallOptions(min_free_gib=100000)).run()
    with pytest.raises(InstallError, match=r"^no Python 3\.11 or newer on this computer: install one"):
        Installer(layout, bundle, InstallOptions(uv_index=None), probe=lambda command: None).run()
    assert read_installation(layout) is None


def test_a_record_pointing_at_missing_folders_is_no_install(tmp_path):
    layout = Layout(tmp_path, Platform.current())
    (tmp_path / "install.json").write_text(
        json.dumps({"venv": "venv-x", "code": "code-y", "python": "venv-x/bin/python", "installed_at": 1})
    )
    assert read_installation(layout) is None
    (tmp_path / "install.json").write_text("{broken")
    assert read_installation(layout) is None


def test_uninstall_keeps_the_models_unless_asked(tmp_path):
    layout = Layout(tmp_path, Platform.current())
    for folder in ("venv-a", "code-b", "models/hub", "logs"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "install.json").write_text("{}")
    uninstall(layout, remove_models=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "models"]
    uninstall(layout, remove_models=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]


def test_the_managers_phases_from_start_to_a_second_window_and_a_failure(installed, tmp_path):
    """What the docker's Backend section shows and does, without Qt: Start, Running (and a second
    Krita window using the same server), Stop, and a model that cannot load: restarted once, then
    Failed with the log's last line."""
    layout, bundle, _, _, _ = installed
    manager = BackendManager(layout, bundle, OPTIONS)
    manager.model = ModelChoice(ManagedModel.TINY)
    assert manager.phase is Phase.STOPPED and PRIMARY_ACTION[manager.phase] == "Start"
    manager.primary()
    try:
        deadline = time.monotonic() + 180
        while manager.poll() is not Phase.RUNNING:
            assert manager.phase is Phase.STARTING and time.monotonic() < deadline, manager.line
            time.sleep(0.2)
        assert manager.line.startswith("Running (cpu") and manager.address is not None
        second = BackendManager(layout, bundle, OPTIONS)  # another Krita window: the same server
        assert second.reuse_running() and second.address == manager.address
        assert second.line == "Running (started by another Krita window)"
    finally:
        manager.stop()
    assert manager.phase is Phase.STOPPED and manager.address is None
    assert second.poll() is Phase.STOPPED  # the other window sees it gone

    manager.model = ModelChoice(ManagedModel.CHECKPOINT, str(tmp_path / "missing.safetensors"))
    manager.start()
    deadline = time.monotonic() + 180
    while manager.poll() is not Phase.FAILED:
        assert time.monotonic() < deadline, manager.line
        time.sleep(0.2)
    assert manager.line.startswith("Failed: the backend stopped") and "\n" not in manager.line
    assert manager.log_path.name == "server.log" and PRIMARY_ACTION[manager.phase] == "Retry"


def test_the_manager_installs_on_a_thread_and_cancels(tmp_path):
    layout = Layout(tmp_path / "home", Platform.current())
    manager = BackendManager(layout, copy_bundle(tmp_path), OPTIONS)
    assert manager.phase is Phase.NOT_INSTALLED and PRIMARY_ACTION[manager.phase] == "Install"
    manager.primary()
    assert manager.phase is Phase.INSTALLING and PRIMARY_ACTION[manager.phase] == "Cancel"
    deadline = time.monotonic() + 30
    while manager.line == "Installing…" or "creating the environment" not in manager.line:
        assert time.monotonic() < deadline, manager.line
        time.sleep(0.02)
    assert manager.line.startswith("Installing… 3/6: creating the environment")
    manager.primary()  # Cancel
    manager.wait_for_install(60)
    assert manager.phase is Phase.NOT_INSTALLED and read_installation(layout) is None


def test_before_anything_downloads_the_docker_shows_what_the_model_needs(installed, monkeypatch):
    """The installed backend's ``models --plan``, asked on a thread: sizes, free disk, device and memory
    tier; a model the hub cannot be asked about (no network here) is one line, and Start still works."""
    layout, bundle, _, _, _ = installed
    manager = BackendManager(layout, bundle, OPTIONS)

    def planned() -> None:  # as the docker's timer does: ask until this model's answer is in
        deadline = time.monotonic() + 120
        while manager.plans.answer(manager.model) is None:
            manager.refresh_plan()
            assert time.monotonic() < deadline, manager.line
            time.sleep(0.1)

    manager.model = ModelChoice(ManagedModel.TINY)
    planned()
    plan = manager.current_plan
    assert plan is not None and (plan.missing_bytes, plan.device, plan.memory_tier) == (0, "cpu", "full")
    assert plan.free_bytes > 0 and plan.fits
    assert manager.line == "Installed, not running · models ready; runs on cpu, memory tier full"
    assert manager.primary_label == "Start"

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub cannot be asked, also on a machine online
    manager.model = ModelChoice(ManagedModel.SDXL)
    assert manager.current_plan is None  # the tiny model's plan is not the SDXL's
    planned()
    assert manager.current_plan is None
    assert manager.line.startswith("Installed, not running · could not ask what the model needs: ")
    assert "\n" not in manager.line


class FakePyPI:
    """PyPI's JSON for uv and one wheel per platform, on loopback. The wheel's ``uv`` is a stand-in
    for uv's binary (third-party; the real one fetches CPython from the internet): ``python install``
    records what it was asked, ``python find`` prints this test's Python."""

    def __init__(self, tmp_path: Path, wrong_checksum: bool = False) -> None:
        import hashlib
        import zipfile

        script = (
            "#!/bin/sh\n"
            'case "$1 $2" in\n'
            '  "python install") mkdir -p "$UV_PYTHON_INSTALL_DIR"\n'
            '    echo "$3" > "$UV_PYTHON_INSTALL_DIR/asked";;\n'
            f'  "python find") echo "{sys.executable}";;\n'
            "esac\n"
        )
        wheel = tmp_path / "uv.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr("uv-0.9.9.data/scripts/uv", script)
            archive.writestr("uv-0.9.9.dist-info/METADATA", "Name: uv\n")
        self.wheel = wheel.read_bytes()
        digest = hashlib.sha256(self.wheel).hexdigest()
        self.digest = "0" * 64 if wrong_checksum else digest
        self.tags = [
            "manylinux_2_17_x86_64.manylinux2014_x86_64",
            "manylinux_2_17_aarch64.manylinux2014_aarch64",
            "macosx_11_0_arm64",
            "win_amd64",
        ]

    def __enter__(self) -> str:
        import http.server

        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                port = self.server.server_address[1]
                if self.path == "/pypi/uv/json":
                    urls = [
                        {
                            "filename": f"uv-0.9.9-py3-none-{tag}.whl",
                            "url": f"http://127.0.0.1:{port}/files/uv-{tag}.whl",
                            "digests": {"sha256": fake.digest},
                        }
                        for tag in fake.tags
                    ]
                    body = json.dumps({"urls": urls}).encode()
                elif self.path.startswith("/files/"):
                    body = fake.wheel
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/pypi/uv/json"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_without_a_python_uv_is_fetched_checked_and_asked_for_one(tmp_path):
    layout = Layout(tmp_path / "home", Platform.current())
    bundle = copy_bundle(tmp_path)
    with FakePyPI(tmp_path) as index:
        options = InstallOptions(packages_from=SITE_PACKAGES, uv_index=index)
        installation = Installer(layout, bundle, options, probe=lambda command: None).run()
    home = Path(layout.home)
    assert (home / "uv" / "uv").is_file() and not list((home / "uv").glob("*.whl*"))  # no wheel left
    assert (home / "python" / "asked").read_text().strip() == "3.12"  # uv was asked for Python 3.12
    assert installation.python_path(layout).is_file()
    log = (home / "logs" / "install.log").read_text()
    assert "no Python 3.11+ found: fetching uv from PyPI" in log and " python find 3.12" in log
    uninstall(layout, remove_models=False)
    assert not (home / "uv").exists() and not (home / "python").exists()


def test_a_uv_download_that_fails_its_checksum_is_never_used(tmp_path):
    layout = Layout(tmp_path / "home", Platform.current())
    bundle = copy_bundle(tmp_path)
    refused = r"^no Python 3\.11\+ on this computer, and the downloaded uv does not match PyPI's checksum"
    with FakePyPI(tmp_path, wrong_checksum=True) as index:
        options = InstallOptions(packages_from=SITE_PACKAGES, uv_index=index)
        with pytest.raises(InstallError, match=refused):
            Installer(layout, bundle, options, probe=lambda command: None).run()
    assert not any((Path(layout.home) / "uv").iterdir())  # neither the wheel nor a partial file
    with pytest.raises(InstallError, match="could not ask PyPI for uv"):  # offline
        options = InstallOptions(uv_index="http://127.0.0.1:9/pypi/uv/json")
        Installer(layout, bundle, options, probe=lambda command: None).run()


def test_check_runs_the_installed_backends_doctor_with_the_chosen_model(installed):
    layout, bundle, _, _, _ = installed
    manager = BackendManager(layout, bundle, OPTIONS)
    manager.model = ModelChoice(ManagedModel.TINY)
    manager.check()
    assert manager.checking
    deadline = time.monotonic() + 180
    while manager.checking:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    report = manager.check_report
    assert "device:      cpu" in report and "memory tier: full" in report and "pixels:      finite" in report


def test_the_plans_checklist_and_the_chosen_folder():
    from krita_plugin.instantstyle.managed.manager import default_layout
    from krita_plugin.instantstyle.managed.model_plan import ModelPlan

    plan = ModelPlan.from_json(
        {
            "files": [
                {
                    "repo": "stabilityai/sdxl",
                    "path": "unet/a.safetensors",
                    "bytes": 5_000_000_000,
                    "cached": False,
                },
                {
                    "repo": "stabilityai/sdxl",
                    "path": "vae/b.safetensors",
                    "bytes": 200_000_000,
                    "cached": True,
                },
                {
                    "repo": "h94/IP-Adapter",
                    "path": "image_encoder/c.bin",
                    "bytes": 3_700_000_000,
                    "cached": True,
                },
            ],
            "total_bytes": 8_900_000_000,
            "missing_bytes": 5_000_000_000,
            "free_bytes": 120_000_000_000,
            "fits": True,
            "device": "cuda",
            "memory_tier": "offload",
        }
    )
    assert plan.line == "5.0 GB to download, 120.0 GB free; runs on cuda, memory tier offload"
    assert plan.checklist == "stabilityai/sdxl: 5.2 GB, to download\nh94/IP-Adapter: 3.7 GB, on disk"
    env = {"XDG_DATA_HOME": "/data"}
    if Platform.current() is Platform.LINUX:
        assert default_layout(env).home == Path("/data/instantstyle")
    assert default_layout(env, chosen=" /big/disk/instantstyle ").home == Path("/big/disk/instantstyle")


def test_a_real_model_on_a_cpu_is_said_to_be_slow_before_it_starts(installed):
    from krita_plugin.instantstyle.managed.model_plan import ModelPlan

    layout, bundle, _, _, _ = installed
    manager = BackendManager(layout, bundle, OPTIONS)
    manager.model = ModelChoice(ManagedModel.SDXL)
    plan = ModelPlan(10**10, 10**10, 10**11, True, "cpu", "full")
    manager.plans._answer = (manager.model, plan, "")  # as the installed backend's models --plan says
    assert manager.line == (
        "Installed, not running · 10.0 GB to download, 100.0 GB free; runs on cpu, memory tier full "
        "(no GPU found: a real model takes minutes per picture on a CPU)"
    )
    assert manager.primary_label == "Download and start"
