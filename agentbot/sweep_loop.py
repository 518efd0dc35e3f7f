"""The server's sweeps: one right after start-up, then every SWEEP_INTERVAL, and the operator page's; one
instance at a time."""

from __future__ import annotations

import asyncio
from datetime import timezone

from loguru import logger

from .sweep import LEASE_TTL, RECENT, Sweeper, SweepResult

RECHECK = RECENT  # seconds after a start-up sweep that left recent conversations, before it looks again


class SweepLoop:
    """Runs the sweeper in a task for the life of the app (every > 0) and on demand (the operator page's
    `page.panels.Sweeper`: last_run, preview, run); the store's lease keeps instances from overlapping."""

    def __init__(self, sweeper: Sweeper, every: float):
        self.sweeper, self.every = sweeper, every
        self.task: asyncio.Task[None] | None = None
        self.last_run: str | None = None  # when and what the last sweep of this instance did

    def start(self) -> None:
        if self.every:
            self.task = asyncio.create_task(self._run())

    async def preview(self, accounts: list[int]) -> list[dict[str, str]]:
        """A dry run over those of `accounts` the bot handles: one row per conversation it would open or defer."""
        s = self.sweeper
        result = await s.run([a for a in s.accounts() if a in accounts], dry_run=True)
        return [
            {"conversation": f"#{x.key.split(':')[1]}", "would be": x.outcome, "rule": x.label, "why": x.reason}
            for x in result.conversations
            if x.outcome in ("opened", "deferred")
        ]

    async def run(self, accounts: list[int]) -> str:
        """A sweep now, over those of `accounts` the bot handles (the operator page's button)."""
        result = await self.once([a for a in self.sweeper.accounts() if a in accounts])
        return result.summary() if result else "Another sweep is running (this or another instance); try again shortly."

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _run(self) -> None:
        result = await self.once()
        # A bot woken by a delivery (a sleeping PaaS dyno) starts while that conversation is still "recent":
        # look again once shortly after, rather than a whole SWEEP_INTERVAL later.
        if result and any(s.label == "recent activity" for s in result.conversations):
            await asyncio.sleep(min(RECHECK, self.every))
            await self.once()
        while True:
            await asyncio.sleep(self.every)
            await self.once()

    async def once(self, accounts: list[int] | None = None) -> SweepResult | None:
        s = self.sweeper
        try:
            lease = await s.store.lease("sweep", LEASE_TTL)
            if lease is None:
                s.metrics.sweeps.labels("busy").inc()
                logger.debug("sweep: another sweep is running (this or another instance); skipped this one")
                return None
            try:
                result = await s.run(s.accounts() if accounts is None else accounts, lease=lease)
            finally:
                await lease.release()
            when = s.clock().astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            self.last_run = f"{when}: {result.summary()}" + (
                f" ({'; '.join(result.failures)})" if result.failures else ""
            )
            return result
        except Exception:  # a bug or a store outage must not end the server's sweeps: logged, tried next time
            s.metrics.sweeps.labels("failed").inc()
            logger.exception("sweep failed")
            return None
