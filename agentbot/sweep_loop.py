"""The server's sweeps: one right after start-up (and a second pass for what it left to deliveries), then every
SWEEP_INTERVAL, and the operator page's, run in the background; one instance at a time."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import timezone
from zoneinfo import ZoneInfo

from loguru import logger

from .sweep import LEASE_TTL, Sweeper
from .swept import Progress, SweepResult, Swept

FOLLOW_CLOCK = 1.0  # seconds between looks at the clock while waiting for the second pass
OUTCOMES_TO_RUN = ("opened", "deferred", "expired")  # what a dry run's "run these now" carries out


@dataclass
class Run(Progress):
    """One sweep started in the background (the operator page's): its progress, then its result."""

    dry_run: bool
    accounts: list[int]
    only: set[str] | None = None  # a dry run's conversations, run now
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started: float = field(default_factory=time.monotonic)
    total: int | None = None  # conversations to decide, once listed
    done: int = 0
    result: SweepResult | None = None
    refused: str | None = None  # why it did not run

    def deciding(self, total: int) -> None:
        self.total = total

    def decided(self, swept: Swept) -> None:
        self.done += 1

    @property
    def running(self) -> bool:
        return self.result is None and self.refused is None

    @property
    def rate(self) -> float:
        """Conversations decided per second so far."""
        return self.done / max(time.monotonic() - self.started, 1e-3)

    @property
    def seconds_left(self) -> float | None:
        if self.total is None or not self.done:
            return None
        return (self.total - self.done) / self.rate

    def to_run(self) -> set[str]:
        """A finished dry run's conversations that a run would change."""
        assert self.result is not None
        return {s.key for s in self.result.conversations if s.outcome in OUTCOMES_TO_RUN}


class SweepLoop:
    """Runs the sweeper in a task for the life of the app (every > 0), and in the background on demand (the
    operator page: `begin`, `current`); the store's lease keeps instances from overlapping."""

    def __init__(self, sweeper: Sweeper, every: float):
        self.sweeper, self.every = sweeper, every
        self.task: asyncio.Task[None] | None = None
        self.last_run: str | None = None  # when and what the last sweep of this instance did
        self.current: Run | None = None  # the latest background sweep: running, or its result
        self._background: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.every:
            self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        for task in (self.task, self._background):
            if task:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    # ---- in the background (the operator page) -------------------------------------------------
    def begin(self, accounts: list[int], dry_run: bool, only: set[str] | None = None) -> tuple[Run, bool]:
        """Start a sweep of those of `accounts` the bot handles in the background: (the run, True), or (the
        one still running, False)."""
        if self.current and self.current.running:
            return self.current, False
        handled = [a for a in self.sweeper.accounts() if a in accounts]
        run = self.current = Run(dry_run, handled, only)
        self._background = asyncio.create_task(self._run_in_background(run))
        return run, True

    async def _run_in_background(self, run: Run) -> None:
        try:
            run.result = await self._sweep(run.accounts, run.dry_run, run, run.only)
        except Exception as exc:
            self.sweeper.metrics.sweeps.labels("failed").inc()
            logger.exception("sweep failed")
            run.refused = f"the sweep failed: {exc}"
            return
        if run.result is None:
            run.refused = "another sweep is running (this or another instance); try again shortly"

    # What the operator page's Protocol (page.panels.Sweeper) asks for: a dry run's rows, a sweep's summary.
    async def preview(self, accounts: list[int]) -> list[dict[str, str]]:
        """A dry run over those of `accounts` the bot handles: one row per conversation it would change."""
        result = await self.once([a for a in self.sweeper.accounts() if a in accounts], dry_run=True)
        assert result is not None  # a dry run takes no lease
        return [
            {"conversation": f"#{x.key.split(':')[1]}", "would be": x.outcome, "rule": x.label, "why": x.reason}
            for x in result.conversations
            if x.outcome in OUTCOMES_TO_RUN
        ]

    async def run(self, accounts: list[int]) -> str:
        """A sweep now, over those of `accounts` the bot handles."""
        result = await self.once([a for a in self.sweeper.accounts() if a in accounts])
        return result.summary() if result else "Another sweep is running (this or another instance); try again shortly."

    async def expired_today(self, accounts: list[int]) -> int:
        """Conversations of `accounts` the sweep expired since midnight (TIMEZONE), by the decision log."""
        s = self.sweeper
        now = s.clock()
        midnight = now.astimezone(ZoneInfo(s.settings.timezone)).replace(hour=0, minute=0, second=0, microsecond=0)
        return sum(
            1
            for e in await s.store.decisions(now.timestamp())
            if e.outcome == "expire" and e.account_id in accounts and e.at >= midnight.timestamp()
        )

    # ---- the server's own ----------------------------------------------------------------------
    async def _run(self) -> None:
        result = await self.once()
        # After an outage the deliveries of what the start-up sweep left (active in the last 30 s, such as the
        # message that woke a sleeping bot) may be lost too: look again as soon as they are no longer recent.
        again = max((s.retry_at for s in result.conversations if s.retry_at), default=None) if result else None
        if again is not None and again - self.sweeper.clock().timestamp() < self.every:
            await self._until(again)
            await self.once()
        while True:
            await asyncio.sleep(self.every)
            await self.once()

    async def _until(self, when: float) -> None:
        """Wait until the sweeper's clock says `when` (unix time), following that clock rather than counting
        seconds: the conversations' times are Chatwoot's, and a test's clock may move on."""
        while (left := when - self.sweeper.clock().timestamp()) > 0:  # noqa: ASYNC110 (a time, not an event)
            await asyncio.sleep(min(left, FOLLOW_CLOCK))

    async def once(
        self,
        accounts: list[int] | None = None,
        *,
        dry_run: bool = False,
        progress: Progress | None = None,
        only: set[str] | None = None,
    ) -> SweepResult | None:
        """One sweep; None when another holds the lease (a dry run needs none) or the sweep failed."""
        try:
            return await self._sweep(accounts, dry_run, progress, only)
        except Exception:  # a bug or a store outage must not end the server's sweeps: logged, tried next time
            self.sweeper.metrics.sweeps.labels("failed").inc()
            logger.exception("sweep failed")
            return None

    async def _sweep(
        self, accounts: list[int] | None, dry_run: bool, progress: Progress | None, only: set[str] | None
    ) -> SweepResult | None:
        s = self.sweeper
        accounts = s.accounts() if accounts is None else accounts
        if dry_run:
            return await s.run(accounts, dry_run=True, progress=progress, only=only)
        lease = await s.store.lease("sweep", LEASE_TTL)
        if lease is None:
            s.metrics.sweeps.labels("busy").inc()
            logger.debug("sweep: another sweep is running (this or another instance); skipped this one")
            return None
        try:
            result = await s.run(accounts, progress=progress, lease=lease, only=only)
        finally:
            await lease.release()
        when = s.clock().astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        self.last_run = f"{when}: {result.summary()}" + (f" ({'; '.join(result.failures)})" if result.failures else "")
        return result
