"""The store interface, the same on SQLite and Redis: dedup, order per conversation, timers once."""

from __future__ import annotations

import asyncio
import json

import pytest

from agentbot.actions import AssignTeam, Job, PublicMessage, SetStatus
from agentbot.facts import ConversationState, Resolved
from agentbot.period import Phase
from agentbot.store import Commit, open_store
from agentbot.store.base import HORIZON
from tests.conftest import wait_for
from tests.sqlite_locks import holding_write_lock

CHATWOOT_ONLY: frozenset[str] = frozenset()  # a claim's lane kinds once every lane's share is spent


def job(display_id: int, reason: str = "r") -> Job:
    return Job(1, display_id, reason, [SetStatus("open")])


class Instructions:
    """SQLite's virtual-machine instructions run on a store's read connection: the work its reads did, whatever the
    machine's speed."""

    def __init__(self, store) -> None:
        self.count = 0
        store.rdb.set_progress_handler(self._step, 1)

    def _step(self) -> int:
        self.count += 1
        return 0


async def test_commit_is_once_per_delivery_and_saves_everything(store):
    state = ConversationState(period=3, phase=Phase.HANDOFF, incoming=2)
    c = Commit("d:1", "1:42", state, [job(42)], contact_key="1:58", resolved=Resolved(38, "2026-11-20", 5))
    assert await store.commit(c, 100.0) is True
    assert await store.commit(c, 101.0) is False
    loaded, previous = await store.load("1:42", "1:58")
    assert loaded == state and previous == Resolved(38, "2026-11-20", 5)
    assert await store.depth() == 1


async def test_echoes_are_found_by_content_and_trigger_and_only_the_latest_are_kept(store):
    for message_id in range(10, 20):
        await store.echo("1:42", message_id, f"note {message_id}", 100.0)
    for _ in range(8):  # delivered again: still one message
        await store.echo("1:42", 19, "note 19", 100.0)
    await wait_for(
        lambda: store.echoed("1:42", "note 19", after=None), 5, "the echo (SQLite writes it without waiting)"
    )
    assert await store.echoed("1:42", "note 19", after=18)
    assert not await store.echoed("1:42", "note 19", after=19)  # an older job's message, not this one's
    assert await store.echoed("1:42", "note 12", after=None)  # a message delivered again is not a new one
    await store.prune(100.0 + 3 * 24 * 3600)  # days later: the latest 8 per conversation are still there
    assert await store.echoed("1:42", "note 12", after=None)
    assert not await store.echoed("1:42", "note 11", after=None)
    assert not await store.echoed("1:43", "note 19", after=None)


async def test_echoes_outlive_the_process(tmp_path):
    first = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    await first.open()
    await first.echo("1:42", 7, "the note", 100.0)
    await first.close()
    again = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    await again.open()
    assert await again.echoed("1:42", "the note", after=6)
    await again.close()


async def test_jobs_lists_a_conversations_queued_jobs_with_progress_and_its_timer(store):
    greeting = Job(1, 42, "greeting", [PublicMessage("Hi")])
    await store.commit(Commit("d:1", "1:42", jobs=[greeting, job(42, "handoff")]), 100.0)
    await store.commit(Commit("d:2", "1:43", timer=(200.0, job(43, "later"))), 100.0)
    assert [j.reason for j in await store.jobs("1:43")] == ["later"]
    claimed = await store.claim(101.0)
    claimed.step = 1
    await store.finish(claimed, 101.0)
    assert [(j.reason, j.step, j.opens_later) for j in await store.jobs("1:42")] == [("handoff", 0, True)]
    claimed = await store.claim(101.0)
    claimed.step = 1
    await store.finish(claimed, 101.0)
    assert await store.jobs("1:42") == []


async def test_jobs_of_one_conversation_run_in_order_and_one_at_a_time(store):
    await store.commit(Commit("d:1", "1:1", jobs=[job(1, "first"), job(1, "second")]), 100.0)
    await store.commit(Commit("d:2", "1:2", jobs=[job(2, "other")]), 100.0)
    a = await store.claim(100.0)
    b = await store.claim(100.0)
    assert {a.reason, b.reason} == {"first", "other"}
    assert await store.claim(100.0) is None  # "second" waits for "first"
    first = a if a.reason == "first" else b
    await store.finish(first, 100.0)
    nxt = await store.claim(100.0)
    assert nxt.reason == "second"


async def test_retry_waits_until_next_at_and_keeps_progress(store):
    await store.commit(Commit("d:1", "1:1", jobs=[job(1)]), 100.0)
    j = await store.claim(100.0)
    j.attempts, j.next_at, j.context = 1, 105.0, {"remark": "x"}
    await store.retry(j)
    assert await store.claim(104.0) is None
    again = await store.claim(105.0)
    assert again.attempts == 1 and again.context == {"remark": "x"}


async def test_dead_letters_are_listed_and_requeued(store):
    await store.commit(Commit("d:1", "1:1", jobs=[job(1, "doomed"), job(1, "next")]), 100.0)
    j = await store.claim(100.0)
    j.error = "401"
    await store.bury(j, 100.0)
    assert [d.reason for d in await store.dead_letters()] == ["doomed"]
    assert (await store.claim(100.0)).reason == "next"
    assert await store.requeue_dead(200.0) == 1
    assert await store.dead_letters() == []


async def test_timers_fire_once_and_can_be_cancelled(store):
    await store.commit(Commit("d:1", "1:1", timer=(150.0, job(1, "late"))), 100.0)
    await store.commit(Commit("d:2", "1:2", timer=(150.0, job(2, "cancelled"))), 100.0)
    await store.commit(Commit("d:3", "1:2", cancel_timer=True), 101.0)
    assert await store.fire_timers(149.0) == 0
    assert await store.fire_timers(150.0) == 1
    assert await store.fire_timers(151.0) == 0
    fired = await store.claim(151.0)
    assert fired.reason == "late" and fired.created_at == 150.0
    assert await store.claim(151.0) is None


async def test_a_tick_with_no_timer_due_takes_no_write_lock(tmp_path, monkeypatch):
    """The outbox's tick asks for due timers every 0.5 s: it opened a write transaction each time, so while another
    connection held SQLite's write lock (a backup, `outbox --retry`) every idle tick waited PATIENCE and failed, and
    the outbox counted the store as failing. A look with the reader comes first now."""

    from agentbot.store import writer

    monkeypatch.setattr(writer, "PATIENCE", 0.2)
    path = tmp_path / "s.sqlite3"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    await store.commit(Commit("d:1", "1:1", timer=(150.0, job(1, "late"))), 100.0)
    other = holding_write_lock(path)
    try:
        assert await store.fire_timers(120.0) == 0  # none due: answered without the lock
        firing = asyncio.ensure_future(store.fire_timers(150.0))  # one due: it waits for the lock
        await asyncio.sleep(0)
        other.execute("ROLLBACK")
        assert await firing == 1
    finally:
        other.close()
        await store.close()


async def test_lookups_are_cached(store):
    assert await store.recall("1:58", 100.0) == (False, None)
    await store.remember("1:58", None, 3600, 100.0)
    assert await store.recall("1:58", 200.0) == (True, None)
    await store.remember("1:59", Resolved(3, "2026-01-01", source="chatwoot"), 3600, 100.0)
    assert (await store.recall("1:59", 200.0))[1].display_id == 3


async def test_progress_is_saved_for_the_next_attempt(store):
    await store.commit(Commit("d:1", "1:1", jobs=[Job(1, 1, "r", [AssignTeam(2), SetStatus("open")])]), 100.0)
    j = await store.claim(100.0)
    j.step, j.context = 1, {"remark": "x"}
    await store.progress(j, 100.0)
    j.attempts, j.next_at = 1, 101.0
    await store.retry(j)
    again = await store.claim(101.0)
    assert (again.step, again.context, again.attempts) == (1, {"remark": "x"}, 1)


async def test_concurrent_commits_all_land_and_one_failure_spoils_only_its_own(store):
    # On SQLite, commits made in one turn of the event loop share a transaction (group commit).
    broken = Commit("d:bad", "1:99", jobs=[None])  # not a job: this writer's statements fail
    good = [Commit(f"d:{n}", f"1:{n}", ConversationState(incoming=n), [job(n)]) for n in range(1, 6)]
    results = await asyncio.gather(
        *(store.commit(c, 100.0) for c in [*good[:2], broken, *good[2:]]), return_exceptions=True
    )
    assert results[:2] + results[3:] == [True] * 5 and isinstance(results[2], Exception)
    for n in range(1, 6):
        assert (await store.load(f"1:{n}", None))[0] == ConversationState(incoming=n)
    assert await store.depth() == 5
    assert await store.commit(Commit("d:bad", "1:99"), 101.0) is True  # nothing of the failed one stayed


async def test_a_claim_that_outlived_its_lease_cannot_touch_the_new_owners_job(redis):
    from agentbot.store.base import LEASE

    a, b = open_store(redis), open_store(redis)
    await a.open()
    await b.open()
    try:
        await a.commit(Commit("d:1", "1:1", jobs=[job(1, "A"), job(1, "B")]), 100.0)
        slow = await a.claim(100.0)
        assert slow.reason == "A" and await b.claim(100.0 + LEASE / 2) is None
        taken = await b.claim(100.0 + LEASE + 1)  # the slow worker's lease ran out: another instance takes over
        assert taken.reason == "A"
        slow.step = 1
        assert await a.progress(slow, 200.0) is False
        assert await a.finish(slow, 200.0) is False  # must not drop the new owner's job, nor job B
        assert await a.renew(slow, 200.0) is False
        assert await b.finish(taken, 200.0) is True
        assert (await b.claim(200.0)).reason == "B"
    finally:
        await a.close()
        await b.close()


async def test_a_renewed_lease_keeps_the_job(redis):
    from agentbot.store.base import LEASE

    a, b = open_store(redis), open_store(redis)
    await a.open()
    await b.open()
    try:
        await a.commit(Commit("d:1", "1:1", jobs=[job(1, "A")]), 100.0)
        running = await a.claim(100.0)
        assert await a.renew(running, 100.0 + LEASE * 0.9) is True
        assert await b.claim(100.0 + LEASE + 1) is None
        assert await a.finish(running, 100.0 + LEASE + 2) is True
        assert await b.claim(100.0 + LEASE + 3) is None and await b.depth() == 0
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_job_whose_run_never_ended_comes_back_with_an_attempt_that_may_have_landed(backend, request, tmp_path):
    """After a crash the next run knows the job's calls may have reached Chatwoot, though claiming wrote nothing
    that waited for the disk (SQLite: no clean stop; Redis: the dead run's claim is still there)."""
    from agentbot.store.base import LEASE

    url = request.getfixturevalue("redis") if backend == "redis" else f"sqlite:///{tmp_path}/s.sqlite3"
    first_process, second_process = open_store(url, runs_jobs=True), open_store(url, runs_jobs=True)
    await first_process.open()
    await first_process.commit(Commit("d:1", "1:1", jobs=[job(1)]), 100.0)
    running = await first_process.claim(100.0)
    assert running.attempt is None
    await first_process.close()  # the process dies while the call is on its way
    await second_process.open()
    try:
        again = await second_process.claim(100.0 + LEASE + 1)
        assert again.attempt is not None and again.attempt.maybe and again.attempt.step == 0
        assert again.recovered is False  # the same boot: a crash, not a power cut; its later steps are not in doubt
        again.attempt, again.next_at = None, 200.0  # e.g. Chatwoot showed the step's effect missing
        assert await second_process.retry(again) is True
        assert (await second_process.claim(200.0)).attempt is None
    finally:
        await second_process.close()


async def test_a_conversations_lanes_run_beside_each_other_each_in_order(store):
    chatwoot = job(1, "open")
    evolution = [Job(1, 1, "pause", [SetStatus("open")], lane="evolution") for _ in range(2)]
    await store.commit(Commit("d:1", "1:1", jobs=[chatwoot, *evolution]), 100.0)
    first, second = await store.claim(100.0), await store.claim(100.0)
    assert {first.queue_key, second.queue_key} == {"1:1", "1:1/evolution"}  # a failing lane holds up no other
    assert await store.claim(100.0) is None  # the second evolution job waits for the first
    lane = first if first.lane else second
    await store.finish(lane, 100.0)
    assert (await store.claim(100.0)).queue_key == "1:1/evolution"
    assert [j.reason for j in await store.jobs("1:1")] == ["open"]  # the conversation's Chatwoot jobs only


# ---- a lane in the order of its jobs' `order` (forwards: by message id), ready at its head's not_before ----
def forward(order: float, not_before: float = 0.0) -> Job:
    return Job(1, 1, f"message {order:g}", [SetStatus("open")], lane="forward", order=order, not_before=not_before)


async def test_a_lane_runs_its_jobs_by_order_whatever_order_they_were_queued_in(store):
    for n, order in enumerate((12.0, 10.0, 11.5, 11.0, 13.0)):
        await store.commit(Commit(f"d:{n}", "1:1", jobs=[forward(order)]), 100.0)
    ran = []
    while (claimed := await store.claim(100.0)) is not None:
        ran.append(claimed.order)
        await store.finish(claimed, 100.0)
    assert ran == [10.0, 11.0, 11.5, 12.0, 13.0]


async def test_a_job_queued_with_a_lower_order_waits_for_the_one_running_then_goes_first(store):
    await store.commit(Commit("d:1", "1:1", jobs=[forward(12.0)]), 100.0)
    running = await store.claim(100.0)
    await store.commit(Commit("d:2", "1:1", jobs=[forward(10.0)]), 100.0)  # Chatwoot delivered it late
    await store.commit(Commit("d:3", "1:1", jobs=[forward(11.0)]), 100.0)
    running.next_at = 101.0  # its team bot answered 503: it retries, and goes on holding the later ones
    assert await store.retry(running) is True
    assert await store.claim(100.5) is None
    ran = []
    while (claimed := await store.claim(101.0)) is not None:
        ran.append(claimed.order)
        await store.finish(claimed, 101.0)
    assert ran == [10.0, 11.0, 12.0]  # once released, the lower ones first


async def test_a_ready_time_beyond_the_horizon_is_due_and_a_near_one_waits(store):
    """Issue 20, time that cannot jump: a retry time written before the wall clock stepped back (here 2,000 s
    ahead, past HORIZON) must not hold the conversation's queue; one a minute ahead is a real wait."""
    await store.commit(Commit("d:1", "1:1", jobs=[job(1)]), 100.0)
    await store.commit(Commit("d:2", "1:2", jobs=[job(2)]), 100.0)
    for j in (await store.claim(100.0), await store.claim(100.0)):
        j.attempts, j.next_at = 1, 100.0 + (HORIZON + 1_000 if j.display_id == 1 else 60)
        await store.retry(j)
    due = await store.claim(101.0)
    assert due is not None and due.display_id == 1
    assert await store.claim(101.0) is None


async def test_a_lane_is_ready_when_its_next_job_may_run(store):
    await store.commit(Commit("d:1", "1:1", jobs=[forward(10.0, not_before=100.5)]), 100.0)
    await store.commit(Commit("d:2", "1:1", jobs=[forward(11.0, not_before=100.8)]), 100.1)
    assert await store.claim(100.4) is None  # nothing claimed just to be told to wait (a synced write)
    first = await store.claim(100.5)
    assert first.order == 10.0
    await store.finish(first, 100.6)
    assert await store.claim(100.7) is None
    assert (await store.claim(100.8)).order == 11.0


# ---- Chatwoot's jobs alone (the outbox's budget of workers for the other lanes is spent) ----------------------
async def test_a_claim_of_chatwoots_jobs_alone_finds_them_behind_the_other_lanes_and_takes_none_of_those(store):
    lanes = [Job(1, n, "forward", [SetStatus("open")], lane=("forward", "evolution")[n % 2]) for n in range(1, 40)]
    await store.commit(Commit("d:1", "1:1", jobs=lanes), 100.0)  # due first
    await store.commit(Commit("d:2", "1:99", jobs=[job(99, "open")]), 101.0)
    opening = await store.claim(200.0, lanes=CHATWOOT_ONLY)
    assert opening.reason == "open" and await store.finish(opening, 200.0)
    assert await store.claim(200.0, lanes=CHATWOOT_ONLY) is None  # the lanes' jobs wait for a worker of their share
    running = await store.claim(200.0)
    assert running.lane and await store.renew(running, 201.0) and await store.progress(running, 201.0)
    running.next_at = 202.0
    assert await store.retry(running) is True
    assert await store.claim(300.0, lanes=CHATWOOT_ONLY) is None  # a retried, renewed or saved job is still a lane's
    await store.commit(Commit("d:3", "1:98", jobs=[job(98, "open 98")]), 300.0)
    assert (await store.claim(300.0, lanes=CHATWOOT_ONLY)).reason == "open 98"


async def test_a_claim_takes_the_lane_kinds_it_is_given_and_none_of_the_others(store):
    contact = Job(1, 0, "webwidget_triggered", [SetStatus("open")], lane="forward-contact-7")  # a forward's kind too
    evolution = Job(1, 2, "pause", [SetStatus("open")], lane="evolution")
    await store.commit(Commit("d:1", "1:1", jobs=[forward(10.0), contact]), 100.0)
    await store.commit(Commit("d:2", "1:2", jobs=[evolution]), 101.0)
    assert (await store.claim(200.0, lanes=frozenset({"evolution"}))).lane == "evolution"
    assert await store.claim(200.0, lanes=frozenset({"evolution"})) is None  # the forwards wait for their share
    forwards = {(await store.claim(200.0, lanes=frozenset({"forward"}))).lane for _ in range(2)}
    assert forwards == {"forward", "forward-contact-7"}


async def test_a_claim_leaving_a_lane_kind_out_walks_none_of_its_due_queues_however_many_wait(tmp_path):
    """SQLite: the relay's backlog (thousands of forwards due while their share of the workers is spent) was scanned
    by every claim of the other kinds, so each claim cost more as the backlog grew. Measured in SQLite's virtual
    machine instructions on the store's read connection: the claim's work, whatever the machine's speed."""
    store = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    await store.open()
    steps = Instructions(store)

    async def claim_work() -> int:
        steps.count = 0
        assert await store.claim(200.0, lanes=frozenset({"evolution"})) is None
        assert await store.claim(200.0, lanes=CHATWOOT_ONLY) is None
        return steps.count

    def forwards(conversations: range) -> list[Job]:
        return [Job(1, n, "message", [SetStatus("open")], lane="forward") for n in conversations]

    try:
        await store.commit(Commit("d:1", "1:1", jobs=forwards(range(1, 11))), 100.0)
        await claim_work()  # the first claim also reads the schema
        few = await claim_work()
        await store.commit(Commit("d:2", "1:2", jobs=forwards(range(11, 3011))), 100.0)
        many = await claim_work()
        assert many < 2 * few, f"{many} instructions with 3,010 forwards due, {few} with 10"
        assert (await store.claim(200.0, lanes=frozenset({"forward"}))).lane == "forward"  # they are due
    finally:
        await store.close()


async def test_a_claim_asks_sqlite_only_once_a_job_was_queued_or_freed_since_one_found_none_due(tmp_path):
    """SQLite: most claims find nothing (a worker woken for a job another took, one that finished), and under load
    each read starts cold (another connection committed). Until this process queues or frees a job, or
    RECHECK passes (another process's jobs), a claim after one that found the next free queue due later need
    not look."""
    from agentbot.store.sqlite import RECHECK

    store = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    await store.open()
    other = open_store(f"sqlite:///{tmp_path}/s.sqlite3")  # a command beside the server
    await other.open()
    steps = Instructions(store)
    try:
        await store.commit(Commit("d:1", "1:1", jobs=[forward(10.0, not_before=100.5)]), 100.0)  # held till 100.5
        assert await store.claim(100.0) is None
        steps.count = 0
        assert await store.claim(100.05) is None and steps.count == 0  # nothing queued or freed since: no look
        await store.commit(Commit("d:2", "1:2", jobs=[job(2, "first"), job(2, "second")]), 100.06)
        first = await store.claim(100.06)  # queued: claimed at once
        assert first.reason == "first" and await store.claim(100.07) is None  # its queue is busy, the forward held
        assert await store.finish(first, 100.08)
        assert (await store.claim(100.08)).reason == "second"  # freed by the finish: claimed at once
        assert (await store.claim(100.5)).lane == "forward"  # due
        await other.commit(Commit("d:3", "1:3", jobs=[job(3, "the command's")]), 100.5)
        assert (await store.claim(100.5 + RECHECK)).reason == "the command's"  # another process's: after RECHECK

        await store.commit(Commit("d:4", "1:4", timer=(101.0, job(4, "timer"))), 100.7)
        assert await store.claim(100.95) is None  # nothing due until RECHECK from now
        assert await store.fire_timers(101.0) == 1 and (await store.claim(101.0)).reason == "timer"  # fired
        buried = job(5, "dead letter")
        await store.commit(Commit("d:5", "1:5", jobs=[buried]), 101.0)
        assert await store.bury(await store.claim(101.0), 101.0) and await store.claim(101.0) is None
        assert await store.requeue_dead(101.0) == 1 and (await store.claim(101.0)).reason == "dead letter"  # revived
    finally:
        await other.close()
        await store.close()


async def test_a_queue_beyond_horizon_is_claimed_next_though_the_next_free_queue_is_due_later(tmp_path):
    """A ready time beyond HORIZON (written before the wall clock stepped back) is due: the claim that takes another
    queue must not remember "nothing due until the held forward" past it (a review's case)."""
    store = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    await store.open()
    try:
        await store.commit(Commit("d:1", "1:1", jobs=[forward(10.0, not_before=100.5)]), 100.0)  # due at 100.5
        await store.commit(Commit("d:3", "1:3", jobs=[job(3, "past the horizon")]), 100.0)
        await store.commit(Commit("d:4", "1:4", jobs=[job(4, "ordinary")]), 100.0)
        stepped = await store.claim(100.0)
        assert stepped.reason == "past the horizon"
        stepped.next_at = 100.0 + HORIZON + 500
        assert await store.retry(stepped)
        assert (await store.claim(100.02)).reason == "ordinary"
        assert (await store.claim(100.02)).reason == "past the horizon"
    finally:
        await store.close()


async def test_a_lane_job_an_older_version_runs_is_not_claimed_again_before_its_lease_ends(redis):
    """During a rolling deploy an instance of the version before the shares per lane kind (one `ready` set) claims a
    lane's head job; this version queues the customer's next message in that lane meanwhile."""
    import redis as sync_redis

    from agentbot.store.base import LEASE
    from tests.test_review3 import OLD_CLAIM

    old = sync_redis.Redis.from_url(redis)
    old.rpush("agentbot:q:1:1/forward", forward(10.0).dumps())
    old.zadd("agentbot:ready", {"1:1/forward": 100.0}, nx=True)
    running = json.loads(old.eval(OLD_CLAIM, 0, 100.0, LEASE, "old-instance", 900)[0])
    store = open_store(redis)
    await store.open()
    try:
        await store.commit(Commit("d:2", "1:1", jobs=[forward(11.0)]), 101.0)
        assert await store.claim(101.0) is None  # the older instance runs the head job
        taken = await store.claim(100.0 + LEASE + 1)  # its lease ran out: taken over, its call may have landed
        assert taken.reason == running["reason"] and taken.attempt.maybe
    finally:
        await store.close()


async def test_lane_queues_an_older_version_kept_with_chatwoots_are_moved_and_claimed_with_their_kind(redis):
    """Before the workers' share per lane kind, Redis kept every queue's ready time in one sorted set."""
    import redis as sync_redis

    old = sync_redis.Redis.from_url(redis)
    for display_id, lane in ((1, "forward"), (2, "evolution")):
        queue = f"1:{display_id}/{lane}"
        old.rpush(f"agentbot:q:{queue}", Job(1, display_id, lane, [SetStatus("open")], lane=lane, id=lane).dumps())
        old.zadd("agentbot:ready", {queue: 100.0})
    store = open_store(redis)
    await store.open()
    try:
        assert await store.claim(200.0, lanes=CHATWOOT_ONLY) is None  # moved to their kinds' sets as it meets them
        assert (await store.claim(200.0, lanes=frozenset({"evolution"}))).lane == "evolution"
        assert (await store.claim(200.0)).lane == "forward"
        assert old.zrangebyscore("agentbot:ready", "-inf", 200.0) == []  # in `ready`: only the running ones' leases
    finally:
        await store.close()
