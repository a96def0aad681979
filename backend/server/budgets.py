"""Byte budgets shared by every connection, so that memory is bounded per server, not per message.

Two things a client can make the server hold: INPUT frames waiting for their ``generate``, and the
decoded images of queued jobs. Each has a budget for the whole server and a smaller one per client;
a reservation that does not fit is refused before anything is stored or decoded. Used from the event
loop only (no locks); a job's pixel reservation is released when the job ends.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


class OverBudget(Exception):
    """The bytes do not fit; the message says which budget is full."""


@dataclass
class ByteBudget:
    what: str
    """What is counted, for messages: "input bytes waiting for their generate"."""
    total: int
    per_client: int
    used: int = 0
    by_client: Counter[object] = field(default_factory=Counter)

    def reserve(self, client: object, count: int) -> None:
        if self.by_client[client] + count > self.per_client:
            raise OverBudget(f"too many {self.what} from this client (at most {self.per_client} bytes)")
        if self.used + count > self.total:
            raise OverBudget(f"the server holds too many {self.what} right now; try again shortly")
        self.by_client[client] += count
        self.used += count

    def release(self, client: object, count: int) -> None:
        count = min(count, self.by_client[client])
        self.by_client[client] -= count
        self.used -= count
        if not self.by_client[client]:
            del self.by_client[client]


def decoded_bytes(width: int, height: int) -> int:
    """What one image costs once decoded for a job: RGB for the engine plus its RGBA/PNG source."""
    return width * height * 4
