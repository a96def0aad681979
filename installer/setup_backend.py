"""Set up the backend's virtual environment on Linux, Windows or macOS, with the right PyTorch build.

    python installer/setup_backend.py            # runtime + test dependencies, into .venv
    python installer/setup_backend.py --runtime  # runtime only (what an artist needs)
    python installer/setup_backend.py --dry-run  # say what would be installed
    python installer/setup_backend.py --runtime --packages-from SITE_PACKAGES
                                                 # reuse installed packages, no network (tests)

PyPI's torch wheel is CUDA-enabled on Linux, but CPU-only on Windows: with an
NVIDIA GPU on Windows, torch comes from PyTorch's own CUDA wheel index. macOS
(Apple silicon) uses PyPI's wheel, which has Metal (MPS). torch is installed
first and pinned, so that diffusers/accelerate do not pull another multi-GB
build. Standard library only; needs Python 3.11+ (diffusers 0.42).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCH_VERSION = "2.13.0"
CUDA_INDEX = "https://download.pytorch.org/whl/cu128"
"""PyTorch's CUDA 12.8 wheels: Windows and Linux, GPUs from Maxwell to Blackwell."""


@dataclass(frozen=True)
class Machine:
    system: str
    """``platform.system()``: Linux, Windows or Darwin."""
    arch: str
    """``platform.machine()``, lower case: x86_64, amd64, arm64, aarch64."""
    nvidia: bool
    """An NVIDIA driver is installed (``nvidia-smi`` runs)."""

    @classmethod
    def this(cls) -> Machine:
        return cls(platform.system(), platform.machine().lower(), _has_nvidia_driver())


@dataclass(frozen=True)
class TorchPlan:
    """How to install torch: pip arguments, and what the artist gets."""

    pip_arguments: tuple[str, ...]
    accelerator: str


class UnsupportedMachine(RuntimeError):
    pass


def _has_nvidia_driver() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        return subprocess.run([smi, "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def torch_plan(machine: Machine) -> TorchPlan:
    """The PyTorch build for ``machine``."""
    pinned = f"torch=={TORCH_VERSION}"
    if machine.system == "Darwin":
        if machine.arch not in ("arm64", "aarch64"):
            raise UnsupportedMachine(
                f"PyTorch {TORCH_VERSION} has no wheels for Intel Macs: the backend needs an Apple-silicon "
                "Mac, or a Linux/Windows machine with an NVIDIA GPU"
            )
        return TorchPlan((pinned,), "Apple GPU (MPS)")
    if machine.system == "Windows":
        if machine.nvidia:
            return TorchPlan((pinned, "--index-url", CUDA_INDEX), "NVIDIA GPU (CUDA 12.8)")
        return TorchPlan((pinned,), "CPU only (no NVIDIA driver found: very slow)")
    if machine.system == "Linux":
        accelerator = "NVIDIA GPU (CUDA)" if machine.nvidia else "CPU (no NVIDIA driver found)"
        return TorchPlan((pinned,), accelerator)  # PyPI's Linux wheel carries CUDA itself
    raise UnsupportedMachine(f"{machine.system} is not supported: use Linux, Windows or macOS")


def venv_python(folder: Path) -> Path:
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def reuse_packages(python: Path, site_packages: Path) -> None:
    """Let the environment of ``python`` see the packages of ``site_packages`` (a ``.pth`` file)."""
    if not (site_packages / "torch").is_dir():
        raise SystemExit(
            f"error: {site_packages} has no torch: it is not a site-packages folder with the packages"
        )
    query = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = subprocess.run([str(python), "-c", query], check=True, capture_output=True, text=True).stdout
    (Path(purelib.strip()) / "instantstyle-reused-packages.pth").write_text(
        f"{site_packages}\n", encoding="utf-8"
    )


def run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    done = subprocess.run(command)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command[1:4])} ... failed (exit code {done.returncode})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--venv", type=Path, default=Path(os.environ.get("VENV", REPO / ".venv")))
    parser.add_argument("--runtime", action="store_true", help="runtime dependencies only, no test tools")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    parser.add_argument(
        "--packages-from",
        type=Path,
        metavar="SITE_PACKAGES",
        help="reuse the packages of this site-packages folder and never use the network "
        "(the managed backend's tests; machines without internet that have the packages)",
    )
    args = parser.parse_args(argv)
    if sys.version_info < (3, 11):
        print(
            "error: the backend needs Python 3.11 or newer (diffusers 0.42), "
            f"this is {platform.python_version()}"
        )
        return 2
    machine = Machine.this()
    try:
        plan = torch_plan(machine)
    except UnsupportedMachine as error:
        print(f"error: {error}")
        return 2
    print(f"{machine.system} {machine.arch}: PyTorch {TORCH_VERSION} for {plan.accelerator}", flush=True)
    if args.dry_run:
        print("pip install", " ".join(plan.pip_arguments))
        return 0
    python = venv_python(args.venv)
    if not python.exists():
        venv.create(args.venv, with_pip=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    if args.packages_from is not None:
        reuse_packages(python, args.packages_from)
        pip += ["--no-index", "--no-deps"]  # what it reuses is complete; the venv's own setuptools is old
        torch_arguments: tuple[str, ...] = (f"torch=={TORCH_VERSION}",)
    else:
        run([*pip, "--upgrade", "pip"])
        torch_arguments = plan.pip_arguments
    run([*pip, *torch_arguments])
    requirements = "requirements.txt" if args.runtime else "requirements-test.txt"
    run([*pip, "-r", str(REPO / requirements)])
    print(f"backend environment ready: {python}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
