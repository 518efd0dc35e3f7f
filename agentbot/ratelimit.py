"""Chatwoot's request budget, shared by every call the app makes to it: paced, paused on a 429, in priority order.

Chatwoot throttles each client address with Rack::Attack: a fixed number of requests per fixed window (3000 a
minute by default), then a plain-text 429 without Retry-After until the next window. One refused call means
the window is spent for every caller, so the whole app waits together: calls queue here, one probe at a time
looks for the next window (at growing gaps), and when a probe gets through, the rate Chatwoot let through since
the previous window opened becomes the pace. The pace grows slowly while calls queue for it, so room freed by
other clients on the same address is found again; a pace older than FORGET seconds without a 429 is dropped.
CHATWOOT_RATE caps the pace up front. When the budget is short, the queue serves live handoffs first, then
look-ups, then the sweep.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from enum import IntEnum

PROBE_FIRST = 0.1  # seconds after a 429 before the first probe; doubled after each refused probe
PROBE_MAX = 2.0  # seconds between probes at most: a 60 s window reopens at most this long unused
GROWTH = 0.05  # the pace grows by this share per learned window while calls queue for it
FORGET = 300.0  # seconds without a 429 after which the learned pace is dropped
MIN_SAMPLE = 2  # calls a window must have let through to learn a pace from it
MIN_PACE = 5.0  # calls a second (a tenth of Rack::Attack's default): a slower "pace" is demand before a one-off 429 (a
# proxy, a fault), not Chatwoot's window; a Chatwoot limited below it is set with CHATWOOT_RATE
MAX_SPAN = 120.0  # seconds: a longer count since the last opening (or idle) mixes in slack, so it teaches nothing
IDLE = 1.0  # seconds without a call in flight after which the count of answered calls starts again


class Priority(IntEnum):
    """Who goes first when the budget is short (lower first)."""

    LIVE = 0  # a handoff's calls (the outbox) and the operator's
    LOOKUP = 1  # reads a delivery waits for (contact look-ups, is it pending again)
    SWEEP = 2


class Outcome(IntEnum):
    ANSWERED = 0  # any answer but a 429: Chatwoot's limit let the call through
    REFUSED = 1  # 429
    UNKNOWN = 2  # no answer, or the caller gave up: says nothing about the limit


PROBE = -1  # the ticket of a probe


class RateLimit:
    """One per app (and per Chatwoot): `acquire` before a call, `release` with its outcome after."""

    def __init__(self, cap: float = 0.0, clock: Callable[[], float] = time.monotonic):
        self.cap = cap  # CHATWOOT_RATE, calls a second; 0: no cap
        self.clock = clock
        self.learned: float | None = None  # calls a second Chatwoot let through, learned from its 429s
        self.window: float | None = None  # seconds between two openings of Chatwoot's window, as seen
        self.refused = 0  # 429s seen, all callers
        self.paused = False  # waiting for Chatwoot's next window: only probes go
        self._epoch = 0  # counts pauses: a 429 for a call sent before the current pause is old news
        self._probe_out = False
        self._probe_at = 0.0
        self._gap = PROBE_FIRST
        self._refused_at = 0.0
        self._since = clock()  # when the count of answered calls began: a window's opening, or the end of a lull
        self._answered = 0
        self._in_flight = 0
        self._last_end = 0.0  # when the last call in flight ended
        self._tat = 0.0  # GCRA's theoretical arrival time of the next call
        self._waiters: list[tuple[int, int, asyncio.Future[int]]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def rate(self) -> float | None:
        """The pace now, calls a second (None: no limit)."""
        if self.learned is not None and self.clock() - self._refused_at > FORGET:
            self.learned = self.window = None  # long without a 429: the limit may have moved; learn it again
        paces = [r for r in (self.cap or None, self.learned) if r]
        return min(paces) if paces else None

    async def acquire(self, priority: Priority = Priority.LIVE) -> int:
        """Wait for the call's turn; the ticket to pass to `release`."""
        if not self._waiters and not self.paused and self._admit(self.clock()):
            self._start()
            return self._epoch
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (int(priority), next(self._seq), future))
        self._schedule()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted, then given up: as if it went unanswered
                self.release(future.result(), Outcome.UNKNOWN)
            raise

    def release(self, ticket: int, outcome: Outcome, retry_after: float | None = None) -> None:
        now = self.clock()
        self._in_flight -= 1
        self._last_end = now
        if ticket == PROBE:
            self._probe_out = False
            if outcome is Outcome.REFUSED:
                self._gap = min(self._gap * 2, PROBE_MAX)
                self._probe_at = now + max(self._gap, retry_after or 0.0)
            elif outcome is Outcome.ANSWERED:
                self._resume(now)  # the probe is the new window's first call
        elif outcome is Outcome.REFUSED and ticket == self._epoch and not self.paused:
            self._pause(now, retry_after)
        if outcome is Outcome.REFUSED:
            self.refused += 1
        elif outcome is Outcome.ANSWERED:
            self._answered += 1
        self._schedule()

    def _pause(self, now: float, retry_after: float | None) -> None:
        self.paused, self._epoch, self._refused_at = True, self._epoch + 1, now
        self._gap = PROBE_FIRST
        self._probe_at = now + max(self._gap, retry_after or 0.0)

    def _resume(self, now: float) -> None:
        """A probe got through: Chatwoot's window opened again. What it let through since the previous
        opening, over that time, is the pace."""
        span = now - self._since
        if self._answered >= MIN_SAMPLE and 0 < span <= MAX_SPAN and self._answered / span >= MIN_PACE:
            self.learned, self.window = self._answered / span, span
        self.paused, self._since, self._answered = False, now, 0
        self._tat = now

    def _admit(self, now: float) -> bool:
        """Generic cell rate: a call goes when the pace allows it, a burst of 50 ms worth at most."""
        rate = self.rate
        if rate is None:
            return True
        interval = 1.0 / rate
        if self._tat - now > max(0.05, interval) - interval:
            return False
        self._tat = max(self._tat, now) + interval
        return True

    def _next_at(self, now: float) -> float:
        rate = self.rate
        if rate is None:
            return now
        interval = 1.0 / rate
        return self._tat - (max(0.05, interval) - interval)

    def _start(self) -> None:
        """A call goes out; after a lull, the count of answered calls starts again."""
        if self._in_flight == 0 and not self.paused and self.clock() - self._last_end > IDLE:
            self._since, self._answered = self.clock(), 0
        self._in_flight += 1

    def _grow(self) -> None:
        """A queued call went at the pace: the pace was the limit, so look for more room, slowly."""
        if self.learned is not None and self.window and not (self.cap and self.learned >= self.cap):
            self.learned *= 1 + GROWTH / (self.learned * self.window)

    def _schedule(self) -> None:
        """Hand out turns to the queue now, and set a timer for the next one."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = self.clock()
        while self._waiters:
            if self._waiters[0][2].done():  # its caller gave up
                heapq.heappop(self._waiters)
                continue
            if self.paused:
                if self._probe_out or now < self._probe_at:
                    break
                self._probe_out = True
                self._start()
                heapq.heappop(self._waiters)[2].set_result(PROBE)
                continue
            if not self._admit(now):
                break
            self._grow()
            self._start()
            heapq.heappop(self._waiters)[2].set_result(self._epoch)
        if self._waiters and not (self.paused and self._probe_out):
            when = self._probe_at if self.paused else self._next_at(now)
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(loop.time() + max(0.0, when - now), self._schedule)
