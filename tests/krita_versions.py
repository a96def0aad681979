"""The real Krita versions the end-to-end suite runs in, and the root file systems that hold them.

The host's own Krita (Debian bookworm, 5.1) runs directly; the newer ones come
from Debian's archive into root file systems built with ``mmdebstrap``, and run
in a ``chroot`` against the same X display and backend (a chroot shares the
network, and X's abstract socket, with the host).

    python3 tests/krita_versions.py build [NAME ...]   # build what is missing (all by default)
    python3 tests/krita_versions.py list               # what is built, with Krita's version

Roots are cached in ``INSTANTSTYLE_KRITA_ROOTS`` (default
``/var/cache/instantstyle/krita-roots``), so a second run reuses them; a root
is rebuilt when its recipe changes. Standard library only: CI runs this with
the system Python before the virtual environment exists.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
ROOTS = Path(os.environ.get("INSTANTSTYLE_KRITA_ROOTS", "/var/cache/instantstyle/krita-roots"))
# The archive here is a snapshot whose Release files look expired against this clock.
APT_OPTIONS = ('Acquire::Check-Valid-Until "false"', 'APT::Install-Recommends "true"')
PACKAGES = ("krita", "xvfb", "xauth")


@dataclass(frozen=True)
class KritaVersion:
    """One Krita build the suite runs in. ``suite`` None: the host's own Krita."""

    name: str
    """The series, as the suite names it: "5.1", "6.0"."""
    suite: str | None = None
    """Debian suite of the root file system."""
    krita_from: str | None = None
    """Release to take Krita from (apt's ``-t``), when it is not ``suite`` itself."""

    @property
    def root(self) -> Path | None:
        return None if self.suite is None else ROOTS / self.name

    @property
    def recipe(self) -> str:
        """Everything that decides a root's contents: a change rebuilds it."""
        text = repr((self.suite, self.krita_from, MIRROR, APT_OPTIONS, PACKAGES))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def ready(self) -> bool:
        if self.root is None:
            return shutil.which("krita") is not None and shutil.which("Xvfb") is not None
        marker = self.root / ".instantstyle-ready"
        return marker.is_file() and marker.read_text().strip() == self.recipe

    def krita_version(self) -> str:
        """The installed Krita package's upstream version, e.g. "6.0.4.1"."""
        command = ["dpkg-query", "-W", "-f=${Version}", "krita"]
        if self.root is not None:
            command = ["chroot", str(self.root), *command]
        version = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        return version.split(":", 1)[-1].split("+", 1)[0].split("-", 1)[0]


VERSIONS = (
    KritaVersion("5.1"),
    KritaVersion("5.2", suite="trixie"),
    KritaVersion("5.3", suite="sid"),
    KritaVersion("6.0", suite="sid", krita_from="experimental"),
)
BY_NAME = {version.name: version for version in VERSIONS}


def mount_points_under(root: Path) -> list[Path]:
    """Mount points at or below ``root``, deepest first (from /proc/mounts; octal escapes decoded)."""
    points = []
    for line in Path("/proc/mounts").read_text().splitlines():
        point = Path(line.split()[1].encode().decode("unicode_escape"))
        if point == root or root in point.parents:
            points.append(point)
    return sorted(set(points), key=lambda p: -len(p.parts))


def unmount_all(root: Path) -> None:
    """Unmount whatever a killed run left mounted inside ``root``; refuse to go on while anything is."""
    for point in mount_points_under(root):
        subprocess.run(["umount", "--recursive", "--lazy", str(point)], check=False)
    left = mount_points_under(root)
    if left:
        raise RuntimeError(f"still mounted inside {root}: {', '.join(map(str, left))}")


def remove_root(root: Path) -> None:
    """Delete a root file system, never following a bind mount into the host's /dev, /proc or /sys."""
    if root.exists():
        unmount_all(root)
        shutil.rmtree(root)


def build(version: KritaVersion) -> None:
    """Build ``version``'s root file system from Debian's archive (as root; a few minutes)."""
    assert version.root is not None
    partial = version.root.with_name(version.name + ".partial")
    remove_root(partial)
    remove_root(version.root)
    partial.parent.mkdir(parents=True, exist_ok=True)
    sources = [f"deb {MIRROR} {version.suite} main"]
    install = [f"--include={','.join(PACKAGES)}"]
    if version.krita_from:
        sources.append(f"deb {MIRROR} {version.krita_from} main")
        install = [
            f"--include={','.join(p for p in PACKAGES if p != 'krita')}",
            '--customize-hook=chroot "$1" env DEBIAN_FRONTEND=noninteractive '
            f"apt-get install -y -q -t {version.krita_from} krita",
        ]
    command = [
        "mmdebstrap",
        "--mode=root",
        "--variant=apt",
        *(f"--aptopt={option}" for option in APT_OPTIONS),
        *install,
        version.suite,
        str(partial),
        *sources,
    ]
    started = time.monotonic()
    log = ROOTS / f"{version.name}.log"
    with log.open("w") as output:
        built = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT)
    if built.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        sys.exit(f"building Krita {version.name}'s root failed; the end of {log}:\n" + "\n".join(tail))
    partial.rename(version.root)
    (version.root / ".instantstyle-ready").write_text(version.recipe + "\n")
    print(
        f"Krita {version.krita_version()} ({version.name}) ready in {version.root} "
        f"after {time.monotonic() - started:.0f} s",
        flush=True,
    )


@contextlib.contextmanager
def mounted(root: Path, shared: Sequence[Path] = ()) -> Iterator[None]:
    """/proc, /dev and /sys of the host inside ``root`` while Krita runs there, and the host folders
    ``shared`` (read-only, at the same paths); unmounted afterwards.

    One Krita session per root at a time (a lock beside it): two test runs on one machine would
    otherwise unmount each other's file systems.
    """
    with (root.parent / f".{root.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        unmount_all(root)  # a run that was killed could not unmount
        yield from _mounted(root, shared)


def _mounted(root: Path, shared: Sequence[Path]) -> Iterator[None]:
    done: list[Path] = []
    try:
        for name in ("proc", "sys", "dev"):
            target = root / name
            target.mkdir(exist_ok=True)
            subprocess.run(["mount", "--rbind", f"/{name}", str(target)], check=True)
            subprocess.run(["mount", "--make-rslave", str(target)], check=True)
            done.append(target)
        for folder in shared:
            target = root / folder.relative_to("/")
            target.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "--bind", str(folder), str(target)], check=True)
            done.append(target)
            subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        yield
    finally:
        for target in reversed(done):
            subprocess.run(["umount", "--recursive", "--lazy", str(target)], check=False)


def main(argv: list[str]) -> int:
    command, names = (argv[0] if argv else "list"), argv[1:]
    if command not in ("build", "list") or any(name not in BY_NAME for name in names):
        print(__doc__, file=sys.stderr)
        return 2
    chosen = [BY_NAME[name] for name in names] or list(VERSIONS)
    for version in chosen:
        if command == "build" and version.root is not None and not version.ready:
            build(version)
        state = f"Krita {version.krita_version()}" if version.ready else "not built"
        print(f"{version.name}: {state} ({version.root or 'host'})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
