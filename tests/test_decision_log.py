"""The decision log: one entry per decision that is not an ignore, bounded per account and to 7 days,
written in the same transaction as the decision (both backends), and filled by the running bot."""

from __future__ import annotations

import pytest

from agentbot.actions import Job, PrivateNote, SetStatus
from agentbot.facts import ConversationState
from agentbot.store import Commit, DecisionEntry
from agentbot.store.base import LOG_TTL, OPENED
from tests.conftest import returning, wait_for


def entry(n: int, at: float, account: int = 1, outcome: str = "handoff") -> DecisionEntry:
    return DecisionEntry(
        at, account, 3, n, "Maria", outcome, "returning", f"reason {n}", "message_created", f"d:{account}:{n}"
    )


def logged(n: int, at: float, account: int = 1, size: int = 100, **kw) -> Commit:
    return Commit(
        f"d:{account}:{n}",
        f"{account}:{n}",
        ConversationState(incoming=1),
        log=entry(n, at, account),
        log_size=size,
        **kw,
    )


async def test_entries_come_back_newest_first_once_per_delivery(store):
    assert await store.commit(logged(1, 100.0), 100.0)
    assert await store.commit(logged(2, 101.0), 101.0)
    assert not await store.commit(logged(2, 101.0), 102.0)  # a delivery seen before logs nothing
    assert [e.display_id for e in await store.decisions(103.0)] == [2, 1]
    assert (await store.decisions(103.0))[0] == entry(2, 101.0)


async def test_at_most_the_configured_number_per_account(store):
    for n in range(1, 6):
        await store.commit(logged(n, 100.0 + n, size=3), 100.0 + n)
    await store.commit(logged(9, 200.0, account=2, size=3), 200.0)
    found = await store.decisions(201.0)
    assert [(e.account_id, e.display_id) for e in found] == [(2, 9), (1, 5), (1, 4), (1, 3)]


async def test_entries_are_kept_seven_days(store):
    await store.commit(logged(1, 100.0), 100.0)
    await store.commit(logged(2, 100.0 + LOG_TTL / 2), 100.0 + LOG_TTL / 2)
    later = 100.0 + LOG_TTL + 1
    await store.prune(later)
    assert [e.display_id for e in await store.decisions(later)] == [2]


async def test_a_failed_decision_logs_nothing(store):
    broken = logged(1, 100.0, jobs=[None])  # not a job: the decision's own writes fail
    with pytest.raises(Exception):  # noqa: B017 (each backend fails its own way)
        await store.commit(broken, 100.0)
    assert await store.decisions(101.0) == []


async def test_requeue_one_dead_letter(store):
    for n in (1, 2):
        await store.commit(Commit(f"d:{n}", f"1:{n}", jobs=[Job(1, n, "r", [SetStatus("open")])]), 100.0)
        job = await store.claim(100.0)
        job.error = "toggle_status: 500"
        await store.bury(job, 100.0)
    dead = await store.dead_letters()
    assert len(dead) == 2 and await store.depth() == 0
    assert await store.requeue_one(dead[1].id, 101.0) is True
    assert await store.requeue_one(dead[1].id, 101.0) is False  # not a dead letter any more
    assert [j.display_id for j in await store.dead_letters()] == [dead[0].display_id]
    again = await store.claim(101.0)
    assert again.display_id == dead[1].display_id and again.attempts == 0 and again.error is None


async def test_the_bot_logs_handoffs_and_keeps_but_not_ignores(fake, start_bot):
    maria, conv = returning(fake)
    bot = await start_bot()
    newcomer = fake.customer_writes(fake.contact("Joao Silva"), "Hello").conversation
    fake.customer_writes(maria, "Back again")
    await wait_for(lambda: conv.status == "open", 5, "the handoff")
    await bot.idle()
    found = await bot.bot.store.decisions(bot.clock().timestamp())
    assert [(e.display_id, e.outcome) for e in found] == [
        (conv.display_id, OPENED),  # when the handoff's open landed (the operator page pairs it with the handoff)
        (conv.display_id, "handoff"),
        (newcomer.display_id, "keep"),
    ]
    opened, handoff = found[0], found[1]
    assert opened.rule == "returning" and opened.at >= handoff.at
    assert handoff.rule == "returning" and handoff.reason.startswith("Returning customer:")
    assert handoff.contact == "Maria Lopez" and handoff.inbox_id == 3 and handoff.account_id == 1


async def test_decision_log_size_zero_logs_nothing(fake, start_bot):
    maria, conv = returning(fake)
    bot = await start_bot(DECISION_LOG_SIZE="0")
    fake.customer_writes(maria, "Back again")
    await wait_for(lambda: conv.status == "open", 5, "the handoff")
    await bot.idle()
    assert await bot.bot.store.decisions(bot.clock().timestamp()) == []


def handoff_job(n: int, *steps) -> Commit:
    """A logged handoff decision with its job (default: open, then a note)."""
    job = Job(1, n, f"reason {n}", list(steps or (SetStatus("open"), PrivateNote("note"))), rule="returning")
    return logged(n, 100.0, jobs=[job])


async def test_an_open_that_lands_is_logged_once_with_the_jobs_progress(store):
    await store.commit(handoff_job(1), 100.0)
    job = await store.claim(100.0)
    job.next_step()  # the open landed
    assert await store.progress(job, 104.0)
    job.next_step()  # the note
    assert await store.finish(job, 105.0)
    found = await store.decisions(106.0)
    assert [(e.display_id, e.outcome, e.at, e.rule) for e in found] == [
        (1, OPENED, 104.0, "returning"),
        (1, "handoff", 100.0, "returning"),
    ]


async def test_an_open_as_the_last_step_is_logged_with_the_jobs_finish(store):
    await store.commit(handoff_job(1, SetStatus("open")), 100.0)
    job = await store.claim(100.0)
    job.next_step()
    assert await store.finish(job, 103.0)
    assert [(e.outcome, e.at) for e in await store.decisions(104.0)] == [(OPENED, 103.0), ("handoff", 100.0)]


async def test_an_open_is_logged_once_when_its_job_is_dropped_after_it(store):
    await store.commit(handoff_job(1), 100.0)
    job = await store.claim(100.0)
    job.next_step()
    assert await store.progress(job, 101.0)
    assert await store.finish(job, 102.0)  # dropped at its note (the conversation moved on)
    assert [e.outcome for e in await store.decisions(103.0)] == [OPENED, "handoff"]


async def test_no_open_logged_when_it_did_not_land_or_set_no_open(store):
    await store.commit(handoff_job(1, SetStatus("open")), 100.0)
    dropped = await store.claim(100.0)
    assert await store.finish(dropped, 101.0)  # dropped before its open (an agent opened it)
    await store.commit(handoff_job(2, SetStatus("open")), 100.0)
    dead = await store.claim(101.0)
    dead.error = "toggle_status: 422"
    assert await store.bury(dead, 102.0)
    await store.commit(handoff_job(3, PrivateNote("note"), SetStatus("pending")), 100.0)  # a give-back
    given = await store.claim(102.0)
    given.next_step()
    assert await store.progress(given, 103.0)
    given.next_step()
    assert await store.finish(given, 104.0)
    assert OPENED not in {e.outcome for e in await store.decisions(105.0)}


async def test_no_open_logged_in_an_account_without_a_log(store):
    job = Job(1, 1, "r", [SetStatus("open")])
    await store.commit(Commit("d:1", "1:1", jobs=[job]), 100.0)  # DECISION_LOG_SIZE=0: no entry
    claimed = await store.claim(100.0)
    claimed.next_step()
    assert await store.finish(claimed, 101.0)
    assert await store.decisions(102.0) == []


async def test_opens_take_no_decisions_place_and_are_bounded_alike(store):
    """DECISION_LOG_SIZE is the decisions kept: the opens that landed are kept beside them, as many at most."""
    for n in range(1, 6):
        await store.commit(logged(n, 100.0 + n, size=3, jobs=[Job(1, n, "r", [SetStatus("open")])]), 100.0 + n)
        job = await store.claim(100.0 + n)
        job.next_step()
        assert await store.finish(job, 100.5 + n)
    found = await store.decisions(110.0)
    assert [(e.display_id, e.outcome) for e in found] == [
        (n, outcome) for n in (5, 4, 3) for outcome in (OPENED, "handoff")
    ]


async def test_an_open_carries_its_jobs_period(store):
    await store.commit(logged(1, 100.0, jobs=[Job(1, 1, "r", [SetStatus("open")], period=4)]), 100.0)
    claimed = await store.claim(100.0)
    claimed.next_step()
    assert await store.finish(claimed, 101.0)
    assert [(e.outcome, e.period) for e in await store.decisions(102.0)] == [(OPENED, 4), ("handoff", None)]
