"""What the chosen model needs before anything downloads: sizes, the free disk, and how this machine
will run it (device and memory tier), from the installed backend's ``python -m backend models --plan``."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


def gigabytes(count: int) -> str:
    return f"{count / 1e9:.1f} GB"


@dataclass(frozen=True)
class ModelPlan:
    total_bytes: int
    missing_bytes: int
    """Still to download (files in the cache count as done)."""
    free_bytes: int
    fits: bool
    device: str
    memory_tier: str
    repos: tuple[tuple[str, int, int], ...] = ()
    """(repository, bytes, bytes still to download) of each part: the checklist's lines."""

    @property
    def checklist(self) -> str:
        """One line per part (the docker's tooltip), e.g. ``h94/IP-Adapter: 3.7 GB, to download``."""
        return (
            "\n".join(
                f"{repo}: {gigabytes(size)}" + (", to download" if missing else ", on disk")
                for repo, size, missing in self.repos
            )
            or "nothing to download"
        )

    @property
    def line(self) -> str:
        need = (
            "models ready"
            if self.missing_bytes == 0
            else f"{gigabytes(self.missing_bytes)} to download, {gigabytes(self.free_bytes)} free"
        )
        return f"{need}; runs on {self.device}, memory tier {self.memory_tier}"

    @classmethod
    def from_json(cls, data: dict) -> ModelPlan:
        sizes: dict[str, list[int]] = {}
        for entry in data.get("files", []):
            size = sizes.setdefault(str(entry["repo"]), [0, 0])
            size[0] += int(entry["bytes"])
            size[1] += 0 if entry.get("cached") else int(entry["bytes"])
        return cls(
            int(data["total_bytes"]),
            int(data["missing_bytes"]),
            int(data["free_bytes"]),
            bool(data["fits"]),
            str(data["device"]),
            str(data["memory_tier"]),
            tuple((repo, total, missing) for repo, (total, missing) in sizes.items()),
        )


class PlanError(Exception):
    """The plan could not be made (no network to ask the hub, say): one line."""


def ask_plan(
    python: Path, code: Path, arguments: list[str], env: dict[str, str], timeout: float = 300
) -> ModelPlan:
    """Run the installed backend's ``models --plan`` for the ``serve`` arguments ``arguments`` (``env``:
    the child's whole environment)."""
    flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if sys.platform == "win32" else 0
    try:
        done = subprocess.run(
            [str(python), "-m", "backend", "models", "--plan", *arguments],
            cwd=code,
            env=env,
            capture_output=True,
            encoding="utf-8",  # not text=True: Krita's Python may decode as ASCII (a "…" raised there)
            errors="replace",
            timeout=timeout,
            creationflags=flags,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise PlanError(f"could not ask what the model needs: {error}") from error
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        said = [line for line in done.stderr.splitlines() if line.strip()]
        why = said[-1].removeprefix("error: ") if said else f"exit code {done.returncode}"
        raise PlanError(f"could not ask what the model needs: {why}")
    try:
        return ModelPlan.from_json(json.loads(lines[-1]))
    except (ValueError, KeyError, TypeError) as error:
        raise PlanError(f"models --plan said something unexpected: {error}") from error
