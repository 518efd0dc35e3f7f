"""The clock the outbox and the store's queue run on: wall-clock seconds that never go back within a process.

A retry due in 0.5 s stays due in 0.5 s when NTP steps the wall clock back ten minutes: the clock keeps
counting from where it was (monotonic time) until the wall clock catches up. A step forward is followed at
once, so a wait ends early by at most the step. Rules (business hours, timers' opening times) read the wall
clock itself; stored queue times written before a step back while the bot was down are bounded by
`store.base.HORIZON` instead."""

from __future__ import annotations

import time
from collections.abc import Callable


class SteadyClock:
    def __init__(self, wall: Callable[[], float]):
        self.wall = wall
        self._last, self._at = wall(), time.monotonic()

    def __call__(self) -> float:
        now, at = self.wall(), time.monotonic()
        self._last, self._at = max(now, self._last + (at - self._at)), at
        return self._last
