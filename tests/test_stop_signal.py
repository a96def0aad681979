"""The shutdown deadline counts from the signal's arrival, not from when a busy event loop takes it:
a loop held up for a while must not push the process's end past the promised 3 s."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import ClassVar

from backend.server import app


class RecordedTimer:
    """Stands in for ``threading.Timer``: records the interval instead of ending the test process."""

    made: ClassVar[list[float]] = []

    def __init__(self, interval: float, function, args=()) -> None:
        self.made.append(interval)
        self.daemon = False

    def start(self) -> None:
        pass


def test_the_deadline_counts_from_the_signal_when_the_loop_takes_it_late(monkeypatch):
    monkeypatch.setattr(app.threading, "Timer", RecordedTimer)
    RecordedTimer.made.clear()
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    busy = 0.6

    async def scenario() -> None:
        stop = asyncio.Event()
        app._on_stop_signal(asyncio.get_running_loop(), stop)

        def a_long_callback() -> None:  # what a busy loop does when the signal comes
            signal.raise_signal(signal.SIGTERM)
            time.sleep(busy)

        asyncio.get_running_loop().call_soon(a_long_callback)
        await asyncio.wait_for(stop.wait(), 10)

    try:
        asyncio.run(scenario())
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    assert len(RecordedTimer.made) == 1
    assert RecordedTimer.made[0] <= app.SHUTDOWN_DEADLINE_SECONDS - busy  # the loop's delay is counted
