"""Per-client outgoing queue that never lets a slow client stall anyone.

The worker thread adds items without waiting; one sender task per client
drains them in order. When a client falls behind, stale step updates (progress
text plus preview frame) of a job are dropped, oldest first. Everything else
(``queued``, results, errors, ``cancelled``) is always delivered, in order.

The bytes waiting are counted: a client that stays over its budget (it sends but
never reads) is found by ``over_budget_for`` and disconnected by its connection;
a slow but alive client gets its finished result, however large. The clients'
outboxes together have a budget too (``OutboxPool``): while they are over it, the
client with the most bytes waiting counts as over its own.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class StepUpdate:
    """A droppable pair of frames for one denoising step."""

    job_id: int
    progress: str
    preview: bytes
    kept: bool = False
    """Never dropped: the first step's picture (the artist sees the job begin, however slow the link)."""


OutboxItem = str | bytes | StepUpdate
DROPPABLE_ABOVE = 1024 * 1024


def size_of(item: OutboxItem) -> int:
    if isinstance(item, StepUpdate):
        return len(item.progress) + len(item.preview)
    return len(item)


class OutboxPool:
    """Every client's outbox, for the server's budget of unsent bytes (32 clients each within their
    own budget could otherwise hold 8 GiB at the default 2048 px)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.outboxes: set[Outbox] = set()

    @property
    def bytes(self) -> int:
        return sum(outbox.bytes for outbox in self.outboxes)

    def over_because_of(self, outbox: Outbox) -> bool:
        """The pool is over its budget and ``outbox`` holds the most of it."""
        return self.bytes > self.max_bytes and outbox is max(self.outboxes, key=lambda o: o.bytes)


class Outbox:
    def __init__(
        self, max_pending_steps: int, max_bytes: int | None = None, pool: OutboxPool | None = None
    ) -> None:
        self.max_pending_steps = max_pending_steps
        self.max_bytes = max_bytes
        self.pool = pool
        if pool is not None:
            pool.outboxes.add(self)
        self._items: collections.deque[OutboxItem] = collections.deque()
        self._wakeup = asyncio.Event()
        self._closed = False
        self.dropped_steps = 0
        self.dropped_replies = 0
        self.bytes = 0
        self._over_since: float | None = None

    def put(self, item: OutboxItem, droppable: bool = False) -> None:
        """Queue ``item``. A ``droppable`` one (a reply to a client's message: a pong, an error) is
        dropped while more than ``DROPPABLE_ABOVE`` bytes wait: a client that sends but never reads
        cannot grow its own backlog that way."""
        if self._closed:
            return
        if droppable and self.bytes > DROPPABLE_ABOVE:
            self.dropped_replies += 1
            return
        if isinstance(item, StepUpdate):
            pending = [
                i for i in self._items if isinstance(i, StepUpdate) and i.job_id == item.job_id and not i.kept
            ]
            if len(pending) >= self.max_pending_steps:
                # A stale progress without a picture goes first: the budget paid for the pictures.
                victim = next((i for i in pending if not i.preview), pending[0])
                self._items.remove(victim)
                self.bytes -= size_of(victim)
                self.dropped_steps += 1
        self._items.append(item)
        self.bytes += size_of(item)
        self._note_budget()
        self._wakeup.set()

    def over_budget_for(self, now: float) -> float:
        """Seconds the bytes waiting have been over the budget without a break (0 when under)."""
        self._note_budget(now)
        return 0.0 if self._over_since is None else now - self._over_since

    def _note_budget(self, now: float | None = None) -> None:
        over = self.max_bytes is not None and self.bytes > self.max_bytes
        over = over or (self.pool is not None and self.pool.over_because_of(self))
        if not over:
            self._over_since = None
        elif self._over_since is None:
            self._over_since = now if now is not None else time.monotonic()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        if self.pool is not None:
            self.pool.outboxes.discard(self)
        self._wakeup.set()

    async def get(self) -> OutboxItem | None:
        """The next item, or None once closed and empty."""
        while not self._items:
            if self._closed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        item = self._items.popleft()
        self.bytes -= size_of(item)
        self._note_budget()
        return item
