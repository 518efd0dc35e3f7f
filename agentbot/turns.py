"""The webhook goes first: while one of Chatwoot's deliveries is being answered, a lane's job (a forward to the
team's bot, an Evolution switch) starts on a turn of the event loop of its own, one per turn, and the worker
that ran one waits another turn before it claims again. A handoff never waits: it is the bot's own duty.

Chatwoot waits for the webhook's answer (a Sidekiq thread each; 5 s and it opens the conversation itself); the
outbox's steps are background work (a forward is held half a second anyway). On one event loop every callback
that is ready runs before the loop looks for new requests again, so dozens of workers resuming at once made each
of the webhook's own turns (read, decision, commit, answer) wait behind all of them: with forwarding on at
500 deliveries/s, its p99 was two to four times longer than with the workers paced (docs/benchmark.md). Each
turn still lets one go, so the lanes are paced, never stopped, however long a request takes to arrive."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class Turns:
    def __init__(self) -> None:
        self.webhooks = 0  # deliveries being answered
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._pacing = False  # a _pace is scheduled

    @contextmanager
    def webhook(self) -> Iterator[None]:
        """Around the answer to one delivery."""
        self.webhooks += 1
        try:
            yield
        finally:
            self.webhooks -= 1

    async def take(self) -> None:
        """Before a lane job's start, and a claim after one: at once, unless a delivery is being answered or others
        wait before it."""
        if not (self.webhooks or self._waiting):
            return
        loop = asyncio.get_running_loop()
        turn = loop.create_future()
        self._waiting.append(turn)
        if not self._pacing:
            self._pacing = True
            loop.call_soon(self._pace)
        await turn  # a cancelled worker's turn is skipped by _pace

    def _pace(self) -> None:
        """One waiting worker per turn of the loop while a delivery is being answered; all of them when none is."""
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                if self.webhooks:
                    break
        if self._waiting:
            asyncio.get_running_loop().call_soon(self._pace)
        else:
            self._pacing = False
