"""review5: the outbox's sleep-until-woken workers (dbf0b13). No defect found; these pin what the review checked:
work nobody here committed reaches every worker, a store outage does not strand jobs, stop() does not wait for
sleepers. Each fails when its mechanism is removed (the claim's wake(1), the poll task)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentbot.actions import Job, PrivateNote
from agentbot.constants import WORKERS
from agentbot.metrics import Metrics
from agentbot.outbox import Outbox
from agentbot.store import Commit, open_store
from tests.conftest import wait_for
from tests.test_outbox import Clock, FakeChatwoot


class Gated(FakeChatwoot):
    """Holds every note until `gate` opens; counts the calls in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.in_flight, self.done = asyncio.Event(), 0, 0

    async def create_message(self, account: int, display_id: int, content: str, private: bool) -> None:
        self.in_flight += 1
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1
        self.done += 1


@pytest.fixture
async def memory() -> Any:
    store = open_store("memory://")
    await store.open()
    yield store
    await store.close()


async def queue(store: Any, clock: Clock, n: int, start: int = 1) -> None:
    now = clock().timestamp()
    for i in range(start, start + n):
        job = Job(1, i, "why", [PrivateNote("n")], created_at=now, decided_at=now, trigger=1)
        assert await store.commit(Commit(f"d:{i}", f"1:{i}", jobs=[job]), now)


async def test_a_backlog_nobody_here_committed_reaches_every_worker(memory):
    clock, client = Clock(), Gated()
    outbox = Outbox(memory, client, Metrics(), clock, 3600.0)  # type: ignore[arg-type]
    outbox.start()
    try:
        await wait_for(lambda: len(outbox._sleepers) == WORKERS, what="all workers idle")
        await queue(memory, clock, 3 * WORKERS)  # written by another instance: no wake here
        await wait_for(lambda: client.in_flight == WORKERS, what="every worker busy")
        client.gate.set()
        await wait_for(lambda: client.done == 3 * WORKERS, what="all done")
    finally:
        await outbox.stop(1.0)


async def test_jobs_woken_for_during_a_store_outage_run_once_it_is_back(memory):
    clock, client = Clock(), Gated()
    client.gate.set()
    outbox = Outbox(memory, client, Metrics(), clock, 3600.0)  # type: ignore[arg-type]
    real = memory.claim
    down = True

    async def claim(now: float) -> Any:
        if down:
            raise ConnectionError("store down")
        return await real(now)

    memory.claim = claim
    outbox.start()
    try:
        await wait_for(lambda: len(outbox._sleepers) == WORKERS, what="all workers idle")
        await queue(memory, clock, 10)
        outbox.wake(10)
        await asyncio.sleep(0)
        down = False
        await wait_for(lambda: client.done == 10, what="all done")
    finally:
        await outbox.stop(1.0)


async def test_stop_does_not_wait_for_sleeping_workers(memory):
    clock, client = Clock(), Gated()
    outbox = Outbox(memory, client, Metrics(), clock, 3600.0)  # type: ignore[arg-type]
    outbox.start()
    await wait_for(lambda: len(outbox._sleepers) == WORKERS, what="all workers idle")
    await asyncio.wait_for(outbox.stop(30.0), 5.0)  # the grace is 30 s: sleepers are woken at once
