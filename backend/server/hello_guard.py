"""Slows down guessing the token: after a few ``hello`` attempts from one address within a window,
that address's next hellos are answered only after a growing, bounded delay.

An attempt counts when the hello arrives, before the token is checked, and an address's delayed
answers come one after another (each ``delay`` after the previous one): many connections opened at
once get no more answers a minute than one connection retrying. An accepted hello forgets its address
(an artist who mistyped the token is not slowed once it is right). The table of addresses is bounded:
beyond ``max_addresses`` the oldest entries are forgotten first, expired ones before live ones.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class HelloPolicy:
    free_attempts: int = 5
    """Hellos per address per window answered at once."""
    window_seconds: float = 60.0
    first_delay_seconds: float = 0.5
    """The delay of the first hello over the allowance; it doubles with each further one ..."""
    max_delay_seconds: float = 4.0
    """... up to this."""
    max_wait_seconds: float = 30.0
    """The longest any one hello waits, however many of its address's are queued before it."""
    max_addresses: int = 4096


@dataclass
class _Attempts:
    since: float
    count: int
    answer_at: float = 0.0
    """When this address's latest delayed hello is answered: the next one waits for it."""


class HelloGuard:
    def __init__(self, policy: HelloPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.clock = clock
        self._table: OrderedDict[str, _Attempts] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def attempt(self, address: str) -> float:
        """Count a hello from ``address``; the seconds to wait before answering it."""
        now, policy = self.clock(), self.policy
        entry = self._table.get(address)
        if entry is None or now - entry.since > policy.window_seconds:
            entry = _Attempts(now, 0, entry.answer_at if entry is not None else 0.0)
        entry.count = min(entry.count + 1, 1_000_000)
        self._table[address] = entry
        self._table.move_to_end(address)
        self._bound(now)
        excess = entry.count - policy.free_attempts
        if excess <= 0:
            return 0.0
        step = min(policy.max_delay_seconds, policy.first_delay_seconds * 2.0 ** min(excess - 1, 30))
        entry.answer_at = min(max(now, entry.answer_at) + step, now + policy.max_wait_seconds)
        return entry.answer_at - now

    def accepted(self, address: str) -> None:
        self._table.pop(address, None)

    def _bound(self, now: float) -> None:
        if len(self._table) <= self.policy.max_addresses:
            return
        window = self.policy.window_seconds
        for address in [a for a, e in self._table.items() if now - e.since > window]:
            del self._table[address]
        while len(self._table) > self.policy.max_addresses:
            self._table.popitem(last=False)
