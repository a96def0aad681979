"""Log lines a client cannot forge: every line is escaped where it is written, for every handler.

A client's text reaches the log inside messages (a failed job's error names the region or block it
did not accept). Newlines, NUL, bidi overrides (U+202E) and other non-printable characters in a log
message are written as escapes (``\\n``, ``\\x00``, ``\\u202e``), so one record is one line and starts
with our own prefix. A failed job's traceback (passed as the ``trace`` extra, text only: a live one
would keep the job's tensors alive) follows on indented lines, each escaped the same way.

``--log-json`` writes one JSON object per record instead, for log collectors.
"""

from __future__ import annotations

import json
import logging
import sys
import time

CONSOLE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def escaped(text: str) -> str:
    """``text`` with every non-printable character (a space stays) written as its Python escape."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode() for c in text
    )


def indented_trace(trace: str) -> str:
    """A traceback's lines, each escaped and indented: none can pass for a record of its own."""
    return "".join(f"\n    {escaped(line)}" for line in trace.strip("\n").splitlines())


class EscapingFormatter(logging.Formatter):
    """The console's format, with the message escaped and a traceback (``exc_info``, a stack, or the
    ``trace`` extra) on indented escaped lines below it."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escaped(record.message)
        line = super().formatMessage(record)
        trace = getattr(record, "trace", None)
        return line + indented_trace(trace) if trace else line

    def formatException(self, ei: object) -> str:
        return indented_trace(super().formatException(ei)).removeprefix("\n")  # type: ignore[arg-type]

    def formatStack(self, stack_info: str) -> str:
        return indented_trace(stack_info).removeprefix("\n")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("job_id", "client", "code"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if getattr(record, "trace", None):
            entry["exception"] = record.trace  # type: ignore[attr-defined]
        elif record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)  # JSON escapes every control character itself


class StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record is written, not as it was when the handler was
    made: a caller that swapped it meanwhile (a launcher, a test's capture since closed) still gets
    the lines, never a "Logging error" from a closed stream (as the standard library's last-resort
    handler does)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_logging(level: int, json_lines: bool = False) -> None:
    """The process's one log handler: escaped console lines, or JSON objects."""
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if json_lines else EscapingFormatter(CONSOLE_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
