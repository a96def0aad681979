"""A Python for the managed backend where the computer has none (3.11+): fetched with ``uv``.

uv is published on PyPI as a wheel per platform that carries its binary. Krita's own Python (standard
library only) reads PyPI's JSON for the newest release, picks this machine's wheel
(``platforms.pick_uv_wheel``), downloads it checked against the sha256 PyPI lists, and takes the binary
out (``uv-<version>.data/scripts/uv``). Then ``uv python install`` fetches a standalone CPython into
the backend's folder and ``uv python find`` says where it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

from .platforms import Platform, pick_uv_wheel

PYPI_UV_JSON = "https://pypi.org/pypi/uv/json"
PYTHON_VERSION = "3.12"
"""What uv installs: a version every pinned package has wheels for."""


class UvError(Exception):
    """uv could not be fetched; one line."""


def fetch_uv(
    folder: Path,
    system: Platform,
    machine: str,
    index_url: str = PYPI_UV_JSON,
    opener: Callable[..., object] = urllib.request.urlopen,
) -> Path:
    """uv's binary for this machine in ``folder`` (fetched unless already there)."""
    binary = folder / ("uv.exe" if system is Platform.WINDOWS else "uv")
    if binary.is_file():
        return binary
    try:
        with opener(index_url, timeout=60) as answer:  # type: ignore[attr-defined]
            release = json.loads(answer.read().decode("utf-8"))
        files = {entry["filename"]: entry for entry in release["urls"]}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UvError(f"could not ask PyPI for uv (is this computer online?): {error}") from error
    name = pick_uv_wheel(list(files), system, machine)
    if name is None:
        raise UvError(f"uv has no build for this computer ({system.value}, {machine})")
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / name
    partial = wheel.with_name(name + ".part")  # never used unless complete and checked
    digest = hashlib.sha256()
    try:
        with opener(files[name]["url"], timeout=60) as answer, partial.open("wb") as out:  # type: ignore[attr-defined]
            while chunk := answer.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except OSError as error:
        raise UvError(f"could not download uv: {error}") from error
    if digest.hexdigest() != files[name].get("digests", {}).get("sha256"):
        partial.unlink(missing_ok=True)
        raise UvError("the downloaded uv does not match PyPI's checksum: try again later")
    os.replace(partial, wheel)
    with zipfile.ZipFile(wheel) as archive:
        member = next(
            (m for m in archive.namelist() if m.endswith(f".data/scripts/{binary.name}")),
            None,
        )
        if member is None:
            raise UvError(f"{name} holds no uv binary")
        unpacked = binary.with_name(binary.name + ".part")  # an interrupted write is never taken for uv
        unpacked.write_bytes(archive.read(member))
    unpacked.chmod(unpacked.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.replace(unpacked, binary)
    wheel.unlink()
    return binary
