"""Chatwoot's request limit: one budget for the whole app, paused by a 429 until the next window, in priority order.

The end-to-end test runs the app against the fake's fixed-window limit (Rack::Attack: plain-text 429, no
Retry-After), shortened to one second; the others drive ratelimit.RateLimit as a function of its calls."""

from __future__ import annotations

import asyncio
from collections import Counter

from agentbot import ratelimit
from agentbot.ratelimit import PROBE, Outcome, Priority, RateLimit
from tests.conftest import returning, wait_for

WINDOW, LIMIT = 1.0, 10  # the fake's limit: 10 calls a second (Chatwoot: 3000 a minute)


def refused_per_window(fake) -> Counter[int]:
    return Counter(int(c.wall // WINDOW) for c in fake.calls if c.status == 429)


async def test_a_429_holds_back_every_call_to_that_chatwoot_until_its_next_window(fake, start_bot):
    fake.rate_window, fake.rate_limit = WINDOW, LIMIT
    customers = [returning(fake, f"Customer {i}") for i in range(20)]
    bot = await start_bot()
    for contact, _ in customers:
        fake.customer_writes(contact, "Back again")  # 20 handoffs at once: a note and an open each, 40 calls
    convs = [conv for _, conv in customers]
    await wait_for(lambda: all(c.status == "open" for c in convs), 30, "every handoff, at Chatwoot's pace")
    await bot.idle(30)
    for conv in convs:
        assert fake.opened_by(conv.display_id) == ["bot:7"] and len(fake.notes(conv.display_id)) == 1
    done = [c for c in fake.calls if c.status != 429 and c.caller == "bot"]
    refused = refused_per_window(fake)
    # The first window is spent by calls that went out together before any answer. After that, a 429 holds
    # back every job: only a probe goes now and then until a window opens, and then the learned pace.
    later = [n for window, n in sorted(refused.items())[1:]]
    assert all(n <= 4 for n in later), refused
    assert sum(later) <= len(done) / 4, (refused, len(done))


async def test_one_refusal_pauses_every_caller_and_one_probe_at_a_time_looks_for_the_next_window():
    limit = RateLimit()
    first = await limit.acquire()
    limit.release(first, Outcome.REFUSED)
    assert limit.paused and limit.refused == 1
    waiting = [asyncio.create_task(limit.acquire(Priority.LIVE)) for _ in range(3)]
    await wait_for(lambda: sum(t.done() for t in waiting) == 1, 2, "the first probe")
    assert [t.result() for t in waiting if t.done()] == [PROBE]
    await asyncio.sleep(ratelimit.PROBE_FIRST * 3)
    assert sum(t.done() for t in waiting) == 1  # no second call while the probe is out
    limit.release(PROBE, Outcome.ANSWERED)
    await wait_for(lambda: all(t.done() for t in waiting), 2, "every caller, once the window opened")
    assert not limit.paused


async def test_a_refused_probe_waits_longer_before_the_next():
    limit = RateLimit()
    limit.release(await limit.acquire(), Outcome.REFUSED)
    probe = await asyncio.wait_for(limit.acquire(), 2)
    limit.release(probe, Outcome.REFUSED)
    started = asyncio.get_running_loop().time()
    probe = await asyncio.wait_for(limit.acquire(), 2)
    assert asyncio.get_running_loop().time() - started >= 2 * ratelimit.PROBE_FIRST * 0.9
    assert probe == PROBE and limit.refused == 2


async def test_when_calls_queue_live_handoffs_go_first_then_look_ups_then_the_sweep():
    limit = RateLimit()
    limit.release(await limit.acquire(), Outcome.REFUSED)
    order: list[str] = []

    async def call(name: str, priority: Priority) -> None:
        ticket = await limit.acquire(priority)
        order.append(name)
        limit.release(ticket, Outcome.REFUSED if ticket == PROBE and len(order) == 1 else Outcome.ANSWERED)

    tasks = [
        asyncio.create_task(call(name, priority))
        for name, priority in (("sweep", Priority.SWEEP), ("lookup", Priority.LOOKUP), ("live", Priority.LIVE))
    ]
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == ["live", "lookup", "sweep"]


async def test_the_pace_is_what_chatwoot_let_through_between_two_openings_and_caps_it():
    now = [0.0]
    limit = RateLimit(clock=lambda: now[0])
    for _ in range(30):  # a window's calls
        limit.release(await limit.acquire(), Outcome.ANSWERED)
    limit.release(await limit.acquire(), Outcome.REFUSED)
    now[0] = 2.0  # the next window: the probe gets through
    limit.release(PROBE, Outcome.ANSWERED)
    assert limit.rate == 15  # 30 calls let through in 2 s
    assert RateLimit(cap=20).rate == 20 and RateLimit().rate is None


async def test_a_one_off_refusal_after_a_minute_of_unanswered_calls_teaches_no_pace():
    """Chaos seeds 22, 36 and 59 on Redis: Chatwoot hung for a minute (calls went unanswered, one after another,
    so the count of answered calls never restarted), then one 429 (a fault, a proxy): the two answers of that
    minute taught 0.03 calls a second for FORGET seconds, and the outboxes never drained. A count that let
    through less than a call a second says nothing about Chatwoot's limit."""
    now = [0.0]
    limit = RateLimit(clock=lambda: now[0])
    for _ in range(2):
        limit.release(await limit.acquire(), Outcome.ANSWERED)
    while now[0] < 60:  # unanswered calls, each sent as the last one gave up
        ticket = await limit.acquire()
        now[0] += 0.5
        limit.release(ticket, Outcome.UNKNOWN)
    limit.release(await limit.acquire(), Outcome.REFUSED)
    now[0] += 0.5
    limit.release(PROBE, Outcome.ANSWERED)
    assert limit.rate is None and not limit.paused


async def test_a_one_off_refusal_after_a_calm_trickle_teaches_no_pace():
    """One 429 (a proxy, a fault) after calls went out at about 2 a second taught that pace for FORGET seconds: a
    backlog after it would drain at 2 calls a second where Chatwoot allows 50. A window that let through less than
    MIN_PACE (a tenth of Rack::Attack's default) is demand, not Chatwoot's limit; a Chatwoot limited below it is set
    with CHATWOOT_RATE."""
    now = [0.0]
    limit = RateLimit(clock=lambda: now[0])
    while now[0] < 20:  # answered calls, one every half second: never a lull (IDLE), so the count runs on
        ticket = await limit.acquire()
        now[0] += 0.5
        limit.release(ticket, Outcome.ANSWERED)
    limit.release(await limit.acquire(), Outcome.REFUSED)
    now[0] += 0.5
    limit.release(PROBE, Outcome.ANSWERED)
    assert limit.rate is None and not limit.paused
