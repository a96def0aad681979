"""Where the managed backend lives and which Python runs it, on Windows, macOS and Linux: pure
decisions, tested for every platform on any machine."""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath

import pytest

from krita_plugin.instantstyle.managed.platforms import (
    Layout,
    Platform,
    backend_home,
    find_python,
    pick_uv_wheel,
    python_candidates,
)

UV_FILES = [  # uv 0.11.6 on PyPI, as its JSON API lists them (abridged)
    "uv-0.11.6.tar.gz",
    "uv-0.11.6-py3-none-linux_armv6l.whl",
    "uv-0.11.6-py3-none-macosx_10_12_x86_64.whl",
    "uv-0.11.6-py3-none-macosx_11_0_arm64.whl",
    "uv-0.11.6-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    "uv-0.11.6-py3-none-manylinux_2_28_aarch64.whl",
    "uv-0.11.6-py3-none-musllinux_1_1_x86_64.whl",
    "uv-0.11.6-py3-none-win32.whl",
    "uv-0.11.6-py3-none-win_amd64.whl",
    "uv-0.11.6-py3-none-win_arm64.whl",
]


def test_the_backend_sits_beside_kritas_resource_folder_on_every_platform():
    windows = backend_home(Platform.WINDOWS, {"APPDATA": r"C:\Users\ann\AppData\Roaming"}, r"C:\Users\ann")
    assert windows == PureWindowsPath(r"C:\Users\ann\AppData\Roaming\instantstyle")  # beside ...\krita
    assert backend_home(Platform.WINDOWS, {}, r"C:\Users\ann") == windows
    mac = backend_home(Platform.MACOS, {}, "/Users/ann")
    assert mac == PurePosixPath("/Users/ann/Library/Application Support/instantstyle")
    assert backend_home(Platform.LINUX, {}, "/home/ann") == PurePosixPath(
        "/home/ann/.local/share/instantstyle"
    )
    xdg = backend_home(Platform.LINUX, {"XDG_DATA_HOME": "/data/ann"}, "/home/ann")
    assert xdg == PurePosixPath("/data/ann/instantstyle")


def test_the_layout_names_the_venvs_python_per_platform():
    windows = Layout(PureWindowsPath(r"C:\x\instantstyle"), Platform.WINDOWS)
    venv = windows.home / "venv-1"
    assert windows.venv_python(venv) == PureWindowsPath(r"C:\x\instantstyle\venv-1\Scripts\python.exe")
    linux = Layout(PurePosixPath("/x/instantstyle"), Platform.LINUX)
    assert linux.venv_python(linux.home / "venv-1") == PurePosixPath("/x/instantstyle/venv-1/bin/python")
    assert (
        linux.models == PurePosixPath("/x/instantstyle/models") and linux.server_state.name == "server.json"
    )


@pytest.mark.parametrize(
    ("system", "answers", "found"),
    [
        (Platform.WINDOWS, {("py", "-3.12"): "3.12"}, ["py", "-3.12"]),
        (Platform.WINDOWS, {("python",): "3.10"}, None),  # Krita's own or an old one: not enough
        (Platform.LINUX, {("python3",): "3.11"}, ["python3"]),
        (Platform.LINUX, {("python3.13",): "garbage", ("python3.11",): "3.11"}, ["python3.11"]),
        (Platform.MACOS, {("python3",): "3.9"}, None),  # never asked (the CLT stub's dialog): uv fetches one
        (Platform.MACOS, {("/opt/homebrew/bin/python3.12",): "3.12"}, ["/opt/homebrew/bin/python3.12"]),
    ],
)
def test_python_discovery_takes_the_newest_311_or_later(system, answers, found):
    asked = []

    def probe(command):
        asked.append(command)
        return answers.get(tuple(command[:-2]))

    assert find_python(system, probe) == found
    assert all(command[-2] == "-c" for command in asked)  # each candidate asked for its version
    assert [command[:-2] for command in asked] == python_candidates(system)[: len(asked)]  # newest first


@pytest.mark.parametrize(
    ("system", "machine", "wheel"),
    [
        (Platform.WINDOWS, "AMD64", "uv-0.11.6-py3-none-win_amd64.whl"),
        (Platform.WINDOWS, "ARM64", "uv-0.11.6-py3-none-win_arm64.whl"),
        (Platform.MACOS, "x86_64", "uv-0.11.6-py3-none-macosx_10_12_x86_64.whl"),
        (Platform.MACOS, "arm64", "uv-0.11.6-py3-none-macosx_11_0_arm64.whl"),
        (Platform.LINUX, "x86_64", "uv-0.11.6-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"),
        (Platform.LINUX, "aarch64", "uv-0.11.6-py3-none-manylinux_2_28_aarch64.whl"),
        (Platform.LINUX, "riscv64", None),
    ],
)
def test_the_uv_fallback_picks_the_wheel_that_carries_this_machines_binary(system, machine, wheel):
    assert pick_uv_wheel(UV_FILES, system, machine) == wheel
