"""The backend setup picks the PyTorch build each artist's machine needs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from installer.setup_backend import CUDA_INDEX, TORCH_VERSION, Machine, UnsupportedMachine, torch_plan
from tests.conftest import REPO

PINNED = f"torch=={TORCH_VERSION}"


@pytest.mark.parametrize(
    ("machine", "arguments", "accelerator"),
    [
        (Machine("Windows", "amd64", nvidia=True), (PINNED, "--index-url", CUDA_INDEX), "CUDA"),
        (Machine("Windows", "amd64", nvidia=False), (PINNED,), "CPU only"),  # PyPI's Windows wheel
        (Machine("Linux", "x86_64", nvidia=True), (PINNED,), "CUDA"),  # PyPI's Linux wheel has CUDA
        (Machine("Linux", "x86_64", nvidia=False), (PINNED,), "CPU"),
        (Machine("Linux", "aarch64", nvidia=True), (PINNED,), "CUDA"),
        (Machine("Darwin", "arm64", nvidia=False), (PINNED,), "MPS"),
    ],
)
def test_each_platform_gets_its_pytorch_build(machine, arguments, accelerator):
    plan = torch_plan(machine)
    assert plan.pip_arguments == arguments and accelerator in plan.accelerator


@pytest.mark.parametrize("machine", [Machine("Darwin", "x86_64", False), Machine("FreeBSD", "amd64", True)])
def test_machines_without_a_build_are_told_why(machine):
    with pytest.raises(UnsupportedMachine, match=r"Intel Macs|not supported"):
        torch_plan(machine)


def test_dry_run_on_this_machine_says_what_it_would_install():
    result = subprocess.run(
        [sys.executable, "installer/setup_backend.py", "--dry-run"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"PyTorch {TORCH_VERSION} for" in result.stdout and f"pip install {PINNED}" in result.stdout
