"""Enable a Python plugin in kritarc, and undo exactly that edit later.

kritarc is the artist's own settings file: every line we did not write keeps
its bytes (line endings included). The edit is recorded as data, so uninstall
can remove what install added even after Krita rewrote the file in between:
a file install created is removed when nothing but our line is left in it, a
``[python]`` section install appended goes when it is empty again, and a value
the artist had (``=false``) is put back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

SECTION = "[python]"


@dataclass
class KritarcEdit:
    """What enabling changed in one kritarc."""

    path: str
    created: bool = False
    """The file did not exist before."""
    appended: str = ""
    """Text appended at the end of the file (a new [python] section)."""
    replaced: str | None = None
    """The artist's own line for the key (e.g. ``=false``), which enabling overwrote."""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> KritarcEdit:
        return cls(**data)


def _read(path: Path) -> str:
    with path.open(encoding="utf-8", newline="") as handle:  # newline="": \r\n stays \r\n
        return handle.read()


def _lines(path: Path) -> list[str]:
    return _read(path).splitlines(keepends=True) if path.exists() else []


def _newline(lines: list[str]) -> str:
    return "\r\n" if lines and lines[0].endswith("\r\n") else "\n"


def _key_line(lines: list[str], key: str) -> int | None:
    """Index of ``key=...`` inside the [python] section, if any."""
    in_section = False
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            in_section = stripped == SECTION
        elif in_section and stripped.split("=", 1)[0].strip() == key:
            return index
    return None


def _value(line: str) -> str:
    return line.split("=", 1)[1].strip() if "=" in line else ""


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write("".join(lines))


def enable(path: Path, key: str) -> KritarcEdit | None:
    """Set ``key=true`` in the [python] section; None if it already was (nothing to undo)."""
    lines = _lines(path)
    newline = _newline(lines)
    ours = f"{key}=true{newline}"
    edit = KritarcEdit(str(path), created=not path.exists())
    existing = _key_line(lines, key)
    if existing is not None:
        if _value(lines[existing]) == "true":
            return None
        edit.replaced = lines[existing]
        lines[existing] = ours if lines[existing].endswith(("\n", "\r")) else ours.rstrip("\r\n")
    else:
        header = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
        if header is not None:
            lines.insert(header + 1, ours)
        else:
            text = "".join(lines)
            edit.appended = (newline if text and not text.endswith("\n") else "") + (newline if text else "")
            edit.appended += f"{SECTION}{newline}{ours}"
            lines.append(edit.appended)
    _write(path, lines)
    return edit


def undo(edit: KritarcEdit, key: str) -> None:
    """Take back ``edit``: the artist's line returns, our line and what came with it go."""
    path = Path(edit.path)
    if not path.exists():
        return
    text = _read(path)
    if edit.appended and text.endswith(edit.appended):  # untouched since: cut exactly what we added
        text = text[: len(text) - len(edit.appended)]
    else:
        lines = text.splitlines(keepends=True)
        index = _key_line(lines, key)
        if index is not None and _value(lines[index]) == "true":
            if edit.replaced is not None:
                lines[index] = edit.replaced
            else:
                del lines[index]
        if edit.appended:  # Krita rewrote the file: drop our section if nothing else is in it
            header = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
            after = lines[header + 1] if header is not None and header + 1 < len(lines) else ""
            if header is not None and (not after.strip() or after.strip().startswith("[")):
                del lines[header]
                if header > 0 and not lines[header - 1].strip():
                    del lines[header - 1]
        text = "".join(lines)
    if edit.created and not text.strip():
        path.unlink()
        return
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write(text)
