"""The soak test (skipped by default; run with `pytest -m soak -s`): mixed deliveries at 200/s for
SOAK_SECONDS (default 600) with injected Chatwoot faults, then zero lost or duplicated effects and
a flat RSS (printed at start and end). Customer actions are paced so that Chatwoot's deliveries to
the bot (messages, echoes of the bot's own notes and greetings, conversation events) run at RATE."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import wait_for

pytestmark = pytest.mark.soak
RATE = 200


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_soak(fake, processes, tmp_path):
    seconds = float(os.environ.get("SOAK_SECONDS", "600"))
    # At this rate the bot makes more than Chatwoot's 3000 calls a minute per client: a deployment this
    # busy safelists the bot (RACK_ATTACK_ALLOWED_IPS); the soak measures faults, not that limit.
    fake.rate_limit = None
    rng = random.Random(42)
    prepared = []  # returning customers: an agent-handled, resolved conversation from before the bot
    for i in range(int(0.3 * RATE * seconds) + 10):
        contact = fake.contact(f"Back {i}")
        conv = fake.customer_writes(contact, "order 1").conversation
        fake.agent_writes(conv.display_id, "done")
        fake.resolve(conv.display_id)
        prepared.append((contact, conv))
    bot = await processes(
        STORE_URL=f"sqlite:///{tmp_path}/soak.sqlite3", GREETING_MESSAGE="Hello {name}", LOG_LEVEL="WARNING"
    )
    new: list = []
    handed: list = []
    expected_handoffs: set[int] = set()
    rss: list[float] = []
    start = time.monotonic()
    sent, faults_injected = 0, -1
    faults = [dict(status=500, times=3), dict(status=429, retry_after=1, times=2), dict(hang=2.0, times=2)]
    while (elapsed := time.monotonic() - start) < seconds:
        if elapsed // 10 > faults_injected:  # a fault every 10 s
            faults_injected += 1
            fake.fail("*", **rng.choice(faults))
        if not rss and elapsed > 10:
            rss.append(rss_mb(bot.proc.pid))
        roll = rng.random()
        if roll < 0.35 or not new:
            contact = fake.contact(f"New {sent}")
            new.append(contact)
            fake.customer_writes(contact, "hi")
        elif roll < 0.65:
            fake.customer_writes(rng.choice(new), "any news?")
        elif roll < 0.90 or not handed:
            contact, conv = prepared.pop()
            fake.customer_writes(contact, "me again")
            expected_handoffs.add(conv.display_id)
            handed.append(contact)
        else:
            fake.customer_writes(rng.choice(handed), "still there?")
        sent += 1
        ahead = len(fake.deliveries) / RATE - (time.monotonic() - start)
        await asyncio.sleep(max(0.0, ahead))
    fake.faults.clear()
    await wait_for(lambda: fake.in_flight == 0, 60, "deliveries to finish")

    async def drained():
        health = await bot.health()
        return health and health["outbox"] == 0 and fake.in_flight == 0

    await wait_for(drained, 120, "the outbox to drain")
    rss.append(rss_mb(bot.proc.pid))
    print(
        f"\nsoak: {sent} customer actions in {elapsed:.0f} s, {len(fake.deliveries)} deliveries "
        f"({len(fake.deliveries) / elapsed:.0f}/s), "
        f"{len(expected_handoffs)} handoffs; RSS {rss[0]:.1f} MB at start, {rss[-1]:.1f} MB at end"
    )

    assert fake.fallbacks == []
    opened_by_bot = Counter(d for d, _, to, by in fake.status_log if to == "open" and by == "bot:7")
    for display_id in expected_handoffs:
        assert opened_by_bot[display_id] == 1, display_id
        assert len(fake.notes(display_id)) == 1, display_id
    assert set(opened_by_bot) == expected_handoffs
    untouched = {conv.display_id for _, conv in prepared}
    for conv in fake.conversations.values():
        if conv.display_id not in expected_handoffs | untouched:
            assert conv.status == "pending", conv.display_id
            assert len(fake.bot_messages(conv.display_id)) == 1, conv.display_id  # greeted exactly once
    assert rss[-1] - rss[0] < 25, rss
