"""Slows down guessing the token: after a few ``hello`` attempts from one address within a window,
that address's next hellos are answered only after a growing, bounded delay.

An attempt counts when the hello arrives, before the token is checked, and an address's delayed
answers come one after another (each ``delay`` after the previous one): many connections opened at
once get no more answers a minute than one connection retrying. A hello whose turn would come later
than ``max_wait_seconds`` is refused at once without its token being looked at: parallel connections
gain no guesses, and one address cannot hold many connection slots waiting. An accepted hello
forgets its address (an artist who mistyped the token is not slowed once it is right). IPv6 clients
are counted per /64 network (one host holds a whole /64 and can pick any address in it). The table of
addresses is bounded: beyond ``max_addresses`` the oldest entries are forgotten first, expired ones
before live ones.
"""

from __future__ import annotations

import ipaddress
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
    max_wait_seconds: float = 8.0
    """The longest any one hello waits; one that would wait longer is refused at once. Below the
    plugin's 10 s wait for an answer to its hello."""
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

    def attempt(self, address: str) -> float | None:
        """Count a hello from ``address``; the seconds to wait before answering it, or None: refuse it
        now, unread (its address's answers are already booked ``max_wait_seconds`` ahead)."""
        address = counted_as(address)
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
        answer_at = max(now, entry.answer_at) + step
        if answer_at - now > policy.max_wait_seconds:
            return None
        entry.answer_at = answer_at
        return answer_at - now

    def accepted(self, address: str) -> None:
        self._table.pop(counted_as(address), None)

    def _bound(self, now: float) -> None:
        if len(self._table) <= self.policy.max_addresses:
            return
        window = self.policy.window_seconds
        for address in [a for a, e in self._table.items() if now - e.since > window]:
            del self._table[address]
        while len(self._table) > self.policy.max_addresses:
            self._table.popitem(last=False)


def counted_as(address: str) -> str:
    """The key an address's hellos are counted under: an IPv6 address's /64, else the address."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if parsed.version == 6 and parsed.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return address
