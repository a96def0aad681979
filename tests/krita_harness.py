"""Runs real Krita (the host's, or one in a root file system) on a virtual display, and reads what it did.

A Krita session gets a throw-away home: for a chroot it lives inside the root
(``/tmp/instantstyle-e2e-PID`` there), so Krita sees ordinary paths and the test
reads the same files from the host. Krita finds its resource folder and kritarc
in that home by its own defaults (no XDG overrides): the installer must agree.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.krita_versions import KritaVersion, mounted

GUEST_TOP = Path(f"/tmp/instantstyle-e2e-{os.getpid()}")
"""Per test process, so that two runs on one machine never share (or delete) each other's home."""
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class KritaHome:
    """Where one Krita session keeps its home and writes its report, seen from the host and from Krita."""

    version: KritaVersion
    host_top: Path

    @classmethod
    def fresh(cls, version: KritaVersion, host_tmp: Path) -> KritaHome:
        top = host_tmp if version.root is None else version.root / GUEST_TOP.relative_to("/")
        shutil.rmtree(top, ignore_errors=True)
        for name in ("home", "out", "runtime"):
            (top / name).mkdir(parents=True, mode=0o700)
        return cls(version, top)

    @property
    def guest_top(self) -> Path:
        return self.host_top if self.version.root is None else GUEST_TOP

    @property
    def home(self) -> Path:
        return self.host_top / "home"

    @property
    def out(self) -> Path:
        return self.host_top / "out"

    @property
    def resources(self) -> Path:
        """Krita's writable resource folder on Linux, 5.x and 6.x alike (checked in the real programs)."""
        return self.home / ".local" / "share" / "krita"

    @property
    def kritarc(self) -> Path:
        return self.home / ".config" / "kritarc"

    def guest(self, host_path: Path) -> str:
        return str(self.guest_top / host_path.relative_to(self.host_top))


@contextlib.contextmanager
def virtual_display(log) -> Iterator[str]:
    """An Xvfb server, ready when this yields its display name.

    ``-displayfd`` reports the display only once Xvfb accepts clients. ``-noreset``: Krita opens and
    closes several X connections while it starts, and an Xvfb that resets when its last client leaves
    drops a connection made during the reset ("could not connect to display"). A chroot reaches the
    host's Xvfb through X's abstract socket, which belongs to the network namespace, not the file system.
    """
    read_end, write_end = os.pipe()
    command = ["Xvfb", "-displayfd", str(write_end), "-screen", "0", "1600x1000x24", "-nolisten", "tcp"]
    xvfb = subprocess.Popen(
        [*command, "-noreset"],
        pass_fds=(write_end,),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    os.close(write_end)
    try:
        number = b""
        deadline = time.monotonic() + 30
        while not number.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([read_end], [], [], 1.0)
            if ready:
                chunk = os.read(read_end, 16)
                if not chunk:
                    break
                number += chunk
        if not number.strip().isdigit():
            raise RuntimeError(f"Xvfb did not start (it said {number!r}); see {log.name}")
        yield f":{number.strip().decode()}"
    finally:
        os.close(read_end)
        stop_group(xvfb)


def stop_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run_krita(
    home: KritaHome,
    env: dict[str, str],
    log,
    timeout: float,
    on_exit: Callable[[], None] | None = None,
    shared: Sequence[Path] = (),
) -> float:
    """Run Krita until it quits (or ``timeout``), in its own process group so nothing outlives it.

    Returns the seconds it ran. What it did is judged from its report, not its exit code. ``on_exit``
    runs once Krita has quit and before its process group is killed (what Krita left behind);
    ``shared``: host folders a root file system's Krita sees at the same paths, read-only.
    """
    base = {
        "PATH": PATH,
        "LANG": "C.UTF-8",
        "HOME": home.guest(home.home),
        "XDG_RUNTIME_DIR": home.guest(home.host_top / "runtime"),
    }
    variables = [f"{key}={value}" for key, value in {**base, **env}.items()]
    command = ["env", "-i", *variables, "krita", "--nosplash"]
    root = home.version.root
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if root is not None:
            stack.enter_context(mounted(root, shared))
            command = ["chroot", str(root), *command]
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=home.host_top, start_new_session=True
        )
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
        if on_exit is not None and process.poll() is not None:
            on_exit()
        stop_group(process)
    return time.monotonic() - started


def read_report(out: Path) -> dict:
    path = out / "report.json"
    return json.loads(path.read_text()) if path.exists() else {}
