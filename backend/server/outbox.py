"""Per-client outgoing queue that never lets a slow client stall anyone.

The worker thread adds items without waiting; one sender task per client
drains them in order. When a client falls behind, stale step updates (progress
text plus preview frame) of a job are dropped, oldest first. Everything else
(``queued``, results, errors, ``cancelled``) is always delivered, in order.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass


@dataclass(frozen=True)
class StepUpdate:
    """A droppable pair of frames for one denoising step."""

    job_id: int
    progress: str
    preview: bytes


OutboxItem = str | bytes | StepUpdate


class Outbox:
    def __init__(self, max_pending_steps: int) -> None:
        self.max_pending_steps = max_pending_steps
        self._items: collections.deque[OutboxItem] = collections.deque()
        self._wakeup = asyncio.Event()
        self._closed = False
        self.dropped_steps = 0

    def put(self, item: OutboxItem) -> None:
        if self._closed:
            return
        if isinstance(item, StepUpdate):
            pending = [i for i in self._items if isinstance(i, StepUpdate) and i.job_id == item.job_id]
            if len(pending) >= self.max_pending_steps:
                self._items.remove(pending[0])
                self.dropped_steps += 1
        self._items.append(item)
        self._wakeup.set()

    def close(self) -> None:
        self._closed = True
        self._wakeup.set()

    async def get(self) -> OutboxItem | None:
        """The next item, or None once closed and empty."""
        while not self._items:
            if self._closed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._items.popleft()
