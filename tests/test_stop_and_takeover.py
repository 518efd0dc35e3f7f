"""`python -m agentbot` as a process: SIGTERM refuses new deliveries but lets the running job finish;
a process killed while it holds a claim on Redis has its job carried out by another after the lease."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from datetime import datetime, timedelta, timezone

import aiohttp

from agentbot.store import open_store
from agentbot.store.base import LEASE
from tests.conftest import Clock, returning, wait_for
from tests.fakechatwoot.model import fixture
from tests.test_faults import assert_exactly_once
from tests.test_webhook import signed


async def refused(url: str) -> bool:
    """True when the bot no longer accepts a (validly signed) delivery: connection refused or a non-2xx answer."""
    raw = json.dumps(fixture("message_created_outgoing")).encode()
    try:
        async with aiohttp.ClientSession() as s, s.post(url + "/webhook", data=raw, headers=signed(raw)) as r:
            return r.status >= 300
    except aiohttp.ClientError:
        return True


async def test_sigterm_refuses_new_deliveries_and_lets_the_running_job_finish(fake, processes, tmp_path):
    maria, conv = returning(fake)
    store = f"sqlite:///{tmp_path}/bot.sqlite3"
    bot = await processes(STORE_URL=store)
    held = fake.hold("toggle_status")
    fake.customer_writes(maria, "Again")
    try:
        await wait_for(lambda: held.waiting == 1, 5, "the handoff's toggle_status in flight")
        assert not await refused(bot.url)
        bot.proc.send_signal(signal.SIGTERM)
        await wait_for(lambda: refused(bot.url), 5, "new deliveries to be refused")
        assert bot.proc.returncode is None  # still running: the job is within its grace
    finally:
        fake.faults.remove(held)
        held.release.set()  # Chatwoot answers; the job goes on with its note
    assert await asyncio.wait_for(bot.proc.wait(), 10) == 0  # one SIGTERM, as a platform sends it
    assert_exactly_once(fake, [conv], bot_was_down=True)  # the note too: nothing was left for a next start
    left = open_store(store)
    await left.open()
    try:
        assert await left.depth() == 0 and await left.dead_letters() == []
    finally:
        await left.close()


def claims(bot) -> list[tuple[float, object]]:
    """Every claim the app's outbox makes from now on: (the clock it claimed at, the job or None)."""
    store, seen = bot.bot.store, []
    claim = store.claim

    async def recorded(now: float, lanes: bool = True):
        job = await claim(now, lanes)
        seen.append((now, job))
        return job

    store.claim = recorded
    return seen


async def test_a_job_claimed_by_a_killed_process_is_taken_over_after_the_lease(fake, processes, start_bot, redis):
    maria, conv = returning(fake)
    first = await processes(STORE_URL=redis)
    held = fake.hold("toggle_status")
    fake.customer_writes(maria, "Again")
    await wait_for(lambda: held.waiting == 1, 5, "the handoff's toggle_status in flight")
    # The outbox may start before the webhook's answer is out: killed before Chatwoot has it, the delivery fails and
    # Chatwoot's fallback opens the conversation itself (seen under load in CI).
    await wait_for(lambda: fake.in_flight == 0, 5, "the customer's message, answered")
    claimed_at = time.time()
    assert await first.stop(signal.SIGKILL) == -signal.SIGKILL  # dies holding the claim
    fake.faults.remove(held)
    held.release.set()  # Chatwoot carried the call out; nobody got the answer

    # The other instance runs on a clock of its own, so the 60 s lease can pass at once.
    clock = Clock(datetime.fromtimestamp(claimed_at, timezone.utc) + timedelta(seconds=LEASE / 2))
    other = await start_bot(clock, STORE_URL=redis)
    seen = claims(other)
    await wait_for(lambda: seen, 10, "a claim while the lease holds")
    assert all(job is None for _, job in seen)  # within the lease the job is the dead process's
    assert fake.notes(conv.display_id) == []
    clock.at = datetime.fromtimestamp(claimed_at, timezone.utc) + timedelta(seconds=LEASE + 1)
    await wait_for(lambda: len(fake.notes(conv.display_id)) == 1, 10, "the handoff's note from the other instance")
    await other.idle()
    assert any(job is not None and job.display_id == conv.display_id for _, job in seen)
    assert_exactly_once(fake, [conv], bot_was_down=True)
