"""The outbox's retry, backoff and dead-letter policy, with a fake client that records calls and fails on
request, and the memory store; the clock is injected, so nothing waits."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import pytest

from agentbot.actions import AssignAgent, AssignTeam, Job, PrivateNote, PublicMessage, SetPriority, SetStatus, Step
from agentbot.chatwoot import Agent, ChatwootError, NoAnswer, TimedOut, Unreachable, http_error
from agentbot.constants import WORKERS
from agentbot.metrics import Metrics
from agentbot.outbox import Outbox
from agentbot.store import Commit, Store, open_store
from tests.conftest import wait_for

START = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
MAX_AGE = 3600.0
TIMEOUT = 1.0  # the client's timeout: a call without an answer may land until 2 × TIMEOUT later
HANDOFF: list[Step] = [AssignTeam(2), SetPriority("high"), SetStatus("open"), PrivateNote("why"), PublicMessage("hi")]
CALLS = [
    ("assignments", {"team_id": 2}),
    ("toggle_priority", "high"),
    ("toggle_status", "open"),
    ("messages", ("why", True)),
    ("messages", ("hi", False)),
]
# A handoff's message looks at the conversation first; this Chatwoot (before 4.16) refuses that read once.
DONE = [*CALLS[:4], ("show", 42), CALLS[4]]


def error(
    endpoint: str, status: int | None, detail: str = "boom", sent: bool = True, retry_after: float | None = None
) -> ChatwootError:
    if status is not None:
        return http_error(endpoint, status, detail, retry_after)
    kind = TimedOut if detail == "timed out" else NoAnswer if sent else Unreachable
    return kind(endpoint, None, detail)


REFUSED = "You are not authorized for bots"  # what an older Chatwoot answers a bot token (401)


class FakeChatwoot:
    """Records every call; `fail[endpoint]` lists the errors its next calls raise, in order."""

    def __init__(self, fail: dict[str, list[ChatwootError]] | None = None, agent: Agent | None = None) -> None:
        self.fail, self.agent = fail or {}, agent
        self.calls: list[tuple[str, Any]] = []
        self.timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        self.reads = True

    def _call(self, endpoint: str, what: Any) -> None:
        self.calls.append((endpoint, what))
        if self.fail.get(endpoint):
            raise self.fail[endpoint].pop(0)

    async def toggle_status(self, account: int, display_id: int, status: str) -> None:
        self._call("toggle_status", status)

    async def toggle_priority(self, account: int, display_id: int, priority: str) -> None:
        self._call("toggle_priority", priority)

    async def create_message(self, account: int, display_id: int, content: str, private: bool) -> None:
        self._call("messages", (content, private))

    async def assign_team(self, account: int, display_id: int, team_id: int) -> None:
        self._call("assignments", {"team_id": team_id})

    async def assign_agent(self, account: int, display_id: int, assignee_id: int | None) -> Agent | None:
        self._call("assignments", {"assignee_id": assignee_id})
        return self.agent if assignee_id is not None else None

    async def conversation_if_readable(self, account: int, display_id: int) -> None:
        """A Chatwoot before 4.16: it refuses the first read (the client asks no more); the outbox relies on its
        memory."""
        if self.reads:
            self.reads = False
            self._call("show", display_id)


@dataclass
class Clock:
    """The outbox's clock (seconds)."""

    at: datetime = START

    def __call__(self) -> float:
        return self.at.timestamp()

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


@pytest.fixture
async def memory() -> Any:
    store = open_store("memory://")
    await store.open()
    yield store
    await store.close()


async def run(
    store: Store, client: FakeChatwoot, clock: Clock, steps: list[Step], age: float = 0.0, attempts: int = 0
) -> tuple[Job | None, list[Job], Outbox]:
    """Queue one job decided `age` seconds ago and run it once: (the job as the store keeps it for its next run,
    or None when it is done or dead; the dead letters; the outbox)."""
    outbox = Outbox(store, client, Metrics(), clock, MAX_AGE)  # type: ignore[arg-type]
    now = clock()
    job = Job(1, 42, "why", list(steps), created_at=now - age, decided_at=now - age, trigger=4711, attempts=attempts)
    assert await store.commit(Commit("d:1", "1:42", jobs=[job]), now)
    claimed = await store.claim(now)
    assert claimed is not None
    await outbox.run(claimed)
    clock.advance(3600 * 24)  # anything still in the outbox is due by then
    waiting = await store.claim(clock())
    return waiting, await store.dead_letters(), outbox


@dataclass
class Case:
    fail: dict[str, list[ChatwootError]]
    steps: list[Step]
    calls: list[tuple[str, Any]]  # what reached the client
    fate: str  # "done", "retry" or "dead"
    unsure: bool = False  # the failed call may have landed: checked before it is sent again
    delay: tuple[float, float] = (0.0, 0.0)  # the retry's next_at - now, at least and at most
    age: float = 0.0
    attempts: int = 0  # before this run


def case(case_id: str, **fields: Any) -> Any:
    fields.setdefault("steps", HANDOFF)
    return pytest.param(Case(**fields), id=case_id)


STATUS_500 = {"toggle_status": [error("toggle_status", 500)]}
CASES = [
    case("all-steps-in-order", fail={}, calls=DONE, fate="done"),
    case(
        "server-error-retries-with-backoff",
        fail=STATUS_500,
        calls=CALLS[:3],
        fate="retry",
        unsure=True,
        delay=(0.25, 0.5),
    ),  # a 500 may have been applied (unsure), but the call is over: no wait for it to land
    case(
        "backoff-doubles-per-attempt",
        fail={"assignments": [error("assignments", 502)]},
        steps=[AssignTeam(2)],
        calls=[("show", 42), CALLS[0]],  # a retried routing step looks where the conversation is first
        fate="retry",
        unsure=True,
        attempts=3,
        delay=(2.0, 4.0),
    ),
    case(
        "backoff-is-capped",
        fail={"assignments": [error("assignments", 503)]},
        steps=[AssignTeam(2)],
        calls=[("show", 42), CALLS[0]],  # a retried routing step looks where the conversation is first
        fate="retry",
        unsure=True,
        attempts=20,
        delay=(30.0, 60.0),
    ),
    case(
        "retry-after-is-respected",
        fail={"toggle_status": [error("toggle_status", 429, retry_after=30.0)]},
        calls=CALLS[:3],
        fate="retry",
        delay=(30.0, 30.0),
    ),
    case(
        "unsent-call-retries-soon",
        fail={"toggle_status": [error("toggle_status", None, "refused", sent=False)]},
        calls=CALLS[:3],
        fate="retry",
        delay=(0.25, 0.5),
    ),
    case(
        "timeout-waits-until-the-call-can-have-landed",
        fail={"toggle_status": [error("toggle_status", None, "timed out")]},
        calls=CALLS[:3],
        fate="retry",
        unsure=True,
        delay=(2 * TIMEOUT, 2 * TIMEOUT),
    ),
    case(
        "final-answer-is-a-dead-letter",
        fail={"toggle_status": [error("toggle_status", 422)]},
        calls=CALLS[:3],
        fate="dead",
    ),
    case("not-found-is-a-dead-letter", fail={"messages": [error("messages", 404)]}, calls=CALLS[:4], fate="dead"),
    case(
        "bad-token-is-a-dead-letter",
        fail={"toggle_status": [error("toggle_status", 401, "Invalid Access Token")]},
        calls=CALLS[:3],
        fate="dead",
    ),
    case(
        "too-old-is-a-dead-letter",
        fail=STATUS_500,
        calls=[("show", 42), *CALLS[:3]],
        fate="dead",
        age=MAX_AGE + 1,
    ),  # late: the outbox first looks where the conversation is
    case(
        "extras-refused-to-bots-are-skipped",
        fail={
            "assignments": [error("assignments", 401, REFUSED)],
            "toggle_priority": [error("toggle_priority", 401, REFUSED)],
        },
        calls=DONE,
        fate="done",
    ),
    case(
        "status-refused-to-bots-is-a-dead-letter",
        fail={"toggle_status": [error("toggle_status", 401, REFUSED)]},
        calls=CALLS[:3],
        fate="dead",
    ),
]


@pytest.mark.parametrize("c", CASES)
async def test_policy(memory: Store, c: Case) -> None:
    client, clock = FakeChatwoot({k: list(v) for k, v in c.fail.items()}), Clock()
    before = clock()
    waiting, dead, _ = await run(memory, client, clock, c.steps, c.age, c.attempts)
    fate = "dead" if dead else "retry" if waiting else "done"
    assert (fate, client.calls) == (c.fate, c.calls), f"{fate}: {client.calls}"
    failed_step = len([call for call in c.calls if call[0] != "show"]) - 1
    if fate == "retry":
        assert waiting is not None
        delay = waiting.next_at - before
        maybe = waiting.attempt is not None and waiting.attempt.maybe
        assert (waiting.attempts, maybe, waiting.step) == (c.attempts + 1, c.unsure, failed_step)
        assert c.delay[0] <= delay <= c.delay[1], f"retry after {delay:.2f} s, want {c.delay}"
        assert waiting.error and waiting.error.startswith(client.calls[-1][0])
    if fate == "dead":
        assert [(j.attempts, j.step) for j in dead] == [(c.attempts + 1, failed_step)]


async def test_a_retry_goes_on_from_the_failed_step(memory: Store) -> None:
    client, clock = FakeChatwoot(dict(STATUS_500)), Clock()
    waiting, _, outbox = await run(memory, client, clock, HANDOFF)
    assert waiting is not None
    client.calls.clear()
    await outbox.run(waiting)
    # The status call may have landed: the outbox asks Chatwoot first (refused to bots here), then its memory.
    assert client.calls == [("show", 42), *CALLS[2:]]
    assert await memory.depth() == 0 and await memory.dead_letters() == []


@pytest.mark.parametrize(
    "agent, calls, remark",
    [
        pytest.param(Agent(6, "Ann", "Ann", "online"), [], "", id="online-keeps-the-agent"),
        pytest.param(
            Agent(6, "Ann", "Ann B.", "offline"),
            [("assignments", {"assignee_id": None})],
            ". Ann B. is offline; handed to team 2 instead.",
            id="offline-falls-back",
        ),
        pytest.param(None, [], ". The previous agent (id 6) no longer exists; handed to team 2.", id="gone-falls-back"),
    ],
)
async def test_a_returning_customers_agent_who_is_away_gives_way(
    memory: Store, agent: Agent | None, calls: list[tuple[str, Any]], remark: str
) -> None:
    client, clock = FakeChatwoot(agent=agent), Clock()
    await run(memory, client, clock, [AssignAgent(6, "team 2"), SetStatus("open"), PrivateNote("Returning")])
    assert client.calls == [
        ("assignments", {"assignee_id": 6}),
        *calls,
        ("toggle_status", "open"),
        ("messages", ("Returning" + remark, True)),
    ]


# ---- idle workers: asleep until woken, one looks every POLL (work another instance committed, retries) ----


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


async def queue(store: Any, clock: Clock, n: int, start: int = 1) -> None:
    now = clock()
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

    async def claim(now: float, lanes: bool = True) -> Any:
        if down:
            raise ConnectionError("store down")
        return await real(now, lanes)

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


async def test_claims_that_raise_or_are_cancelled_give_their_lane_slots_back(memory):
    """Each claim takes a slot of every lane share it may fill before it asks the store: never more than a share,
    and each slot given back whatever becomes of the claim."""
    outbox = Outbox(memory, Gated(), Metrics(), Clock(), 3600.0)  # type: ignore[arg-type]
    asked: list[frozenset[str]] = []

    async def claim(now: float, lanes: frozenset[str]) -> Any:
        asked.append(lanes)
        if len(asked) <= 3:
            raise ConnectionError("store down")
        await asyncio.Event().wait()  # the store stalls until stop() cancels the claims

    memory.claim = claim
    outbox.start()
    await wait_for(lambda: len(asked) == WORKERS + 3, what="every worker claiming, three of them twice")
    waiting = asked[3:]
    for kind in ("forward", "evolution"):
        assert sum(kind in lanes for lanes in waiting) == outbox._in_lane[kind] == outbox.lane_share == WORKERS // 2
    assert sum(bool(lanes) for lanes in waiting) == outbox._in_lanes <= outbox.lanes_share == WORKERS * 3 // 4
    await outbox.stop(0.1)
    assert outbox._in_lanes == 0 and set(outbox._in_lane.values()) == {0}
