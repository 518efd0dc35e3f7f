"""The webhook goes first (turns.py): while a delivery is being answered the outbox's workers start one step per
turn of the event loop, in the order they asked; none waits when no delivery is; a stop that begins meanwhile
starts no lane's job; and a delivery that never finishes arriving paces the outbox but does not stop it (the real
app, the fake Chatwoot, the stand-in team bot)."""

from __future__ import annotations

import asyncio
from contextlib import nullcontext

import pytest

from agentbot.actions import Job, PrivateNote
from agentbot.metrics import Metrics
from agentbot.outbox import Outbox
from agentbot.store import Commit
from agentbot.store.base import LANES
from agentbot.turns import Turns
from tests.conftest import wait_for
from tests.teambot import TeamBot
from tests.test_outbox import Clock, Gated, memory, queue  # noqa: F401 (memory: the fixture)


class LoopTurns:
    """Counts the event loop's turns: a callback that schedules itself again runs once per turn."""

    def __init__(self) -> None:
        self.count, self._stopped = 0, False
        asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        if not self._stopped:
            self.count += 1
            asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        self._stopped = True


async def _steps(turns: Turns, n: int, clock: LoopTurns) -> tuple[list[asyncio.Task[None]], list[tuple[int, int]]]:
    """`n` workers asking for a turn, in order; what they record: (worker, loop turn it got its turn in)."""
    got: list[tuple[int, int]] = []

    async def worker(i: int) -> None:
        await turns.take()
        got.append((i, clock.count))

    tasks = [asyncio.create_task(worker(i)) for i in range(n)]
    await asyncio.sleep(0)  # each has asked
    return tasks, got


@pytest.mark.parametrize(
    ("answering", "cancelled", "expected"),
    [
        # no delivery being answered: every step at once, in one turn
        (False, set(), {"order": [0, 1, 2, 3], "turns": 1}),
        # one being answered: one step per turn, in the order they asked, turn after turn
        (True, set(), {"order": [0, 1, 2, 3], "turns": 4}),
        # a worker cancelled while it waits (shutdown) gives up its place and takes no turn
        (True, {1}, {"order": [0, 2, 3], "turns": 3}),
    ],
)
async def test_steps_take_turns_while_a_delivery_is_answered(answering, cancelled, expected):
    turns, clock = Turns(), LoopTurns()
    with turns.webhook() if answering else nullcontext():
        tasks, got = await _steps(turns, 4, clock)
        for i in cancelled:
            tasks[i].cancel()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)  # a stuck pace fails, not hangs
    clock.stop()
    assert [i for i, _ in got] == expected["order"]
    turns_taken = sorted({turn for _, turn in got})
    assert len(turns_taken) == expected["turns"] == turns_taken[-1] - turns_taken[0] + 1  # no turn wasted


async def test_no_step_waits_when_no_delivery_is_answered_and_the_rest_go_once_it_is():
    turns, clock = Turns(), LoopTurns()
    asked = clock.count
    await turns.take()
    assert clock.count == asked  # it did not wait for a turn
    with turns.webhook():
        tasks, got = await _steps(turns, 5, clock)
        while len(got) < 2:  # bounded: one step per turn
            await asyncio.sleep(0)
    ended = clock.count
    await asyncio.wait_for(asyncio.gather(*tasks), 5)  # the answer is out: the others at once
    clock.stop()
    assert [i for i, _ in got] == [0, 1, 2, 3, 4]
    assert got[0][1] < got[1][1] <= ended  # one per turn while it was being answered
    rest = [turn for _, turn in got[2:]]
    assert max(rest) - ended <= 2  # the three left went together (one per turn would take three)
    assert turns.webhooks == 0


async def test_a_lanes_job_starts_a_turn_after_its_claim_and_the_next_claim_waits_its_turn_too(memory):  # noqa: F811
    """Three handoff jobs of one conversation, then three forward-lane jobs of another, while a delivery is
    answered: a handoff starts in its claim's turn; a lane's job a turn later, and the claim after it (another
    worker's, or the same one's) comes later than after a handoff."""
    clock, turns = Clock(), LoopTurns()
    claimed: dict[str, list[int]] = {"": [], "forward": []}  # per lane: each claim's turn, each call's start turn
    began: dict[str, list[int]] = {"": [], "forward": []}

    class Client(Gated):
        async def create_message(self, account: int, display_id: int, content: str, private: bool) -> None:
            began[content].append(turns.count)
            await super().create_message(account, display_id, content, private)

    client = Client()
    client.gate.set()
    outbox = Outbox(memory, client, Metrics(), clock, 3600.0)  # type: ignore[arg-type]
    real = memory.claim

    async def claim(now: float, lanes: frozenset[str] = LANES) -> object:
        job = await real(now, lanes)
        if job is not None:
            claimed[job.lane].append(turns.count)
        return job

    memory.claim = claim
    outbox.start()
    try:
        for display, lane in ((1, ""), (2, "forward")):
            await wait_for(lambda: len(outbox._sleepers) == len(outbox.workers), what="every worker idle")
            now = clock()
            jobs = [Job(1, display, "why", [PrivateNote(lane)], created_at=now, decided_at=now, lane=lane)] * 3
            assert await memory.commit(Commit(f"d:{display}", f"1:{display}", jobs=jobs), now)
            with outbox.turns.webhook():
                outbox.wake(1)
                await wait_for(lambda: len(began[lane]) == 3 and client.in_flight == 0, what="the three jobs done")  # noqa: B023
    finally:
        await outbox.stop(1.0)
        turns.stop()

    def gaps(lane: str) -> tuple[set[int], set[int]]:
        c, b = claimed[lane], began[lane]
        return {b[k] - c[k] for k in range(3)}, {c[k + 1] - b[k] for k in range(2)}

    (handoff_start,), (handoff_next,) = gaps("")
    (lane_start,), (lane_next,) = gaps("forward")
    assert handoff_start == 0 < lane_start  # a handoff at once; a lane's job on a turn of its own
    assert lane_next > handoff_next  # after a lane's job the next claim waits its turn


@pytest.mark.parametrize("grace", [0.0, 5.0, None])
async def test_a_lanes_job_stopped_before_its_turn_to_start_is_given_back_as_it_was(memory, grace):  # noqa: F811
    """A lane's job (a forward, an Evolution switch) starts on a turn of its own; stop() begins while it waits, or
    its grace ends there (None: the worker is cancelled while it waits): no call was made, so it is not started and
    is given back without the mark of a call that may have landed, which lets the guard take a note it cannot
    check for posted (shown with a note queued in a lane, which the outbox runs like any step)."""
    clock, client = Clock(), Gated()
    client.gate.set()
    outbox = Outbox(memory, client, Metrics(), clock, 3600.0)  # type: ignore[arg-type]
    outbox.start()
    await wait_for(lambda: len(outbox._sleepers) == len(outbox.workers), what="every worker idle")
    now = clock()
    job = Job(1, 1, "why", [PrivateNote("n")], created_at=now, decided_at=now, trigger=1, lane="forward")
    assert await memory.commit(Commit("d:1", "1:1", jobs=[job]), now)
    with outbox.turns.webhook():
        outbox.wake(1)
        for _ in range(100):  # bounded: a turn each
            if outbox._running:
                break
            await asyncio.sleep(0)
        assert outbox._running and client.done == client.in_flight == 0  # claimed, waiting for its turn
        if grace is None:  # what stop() does to the workers when its grace ends, while the job waits
            for task in outbox.workers:
                task.cancel()
        await outbox.stop(grace or 0.0)
    assert client.done == client.in_flight == 0  # not started
    job = await memory.claim(clock())
    assert job is not None and job.attempt is None
    await Outbox(memory, client, Metrics(), clock, 3600.0).run(job)  # type: ignore[arg-type]
    assert client.done == 1  # the note is posted, not taken for posted


async def test_a_delivery_still_arriving_paces_the_outbox_but_never_stops_it(fake, start_bot):
    team = await TeamBot().start()
    try:
        running = await start_bot(FORWARD_URL=team.url, HANDOFF_KEYWORDS="human")
        bot = running.bot
        assert bot.outbox.turns is bot.turns  # the webhook's answers and the outbox's steps share one pace
        host, port = running.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /webhook HTTP/1.1\r\nHost: bot\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )  # the headers and the first byte of a body that does not come (a slow or stuck sender)
        await writer.drain()
        await wait_for(lambda: bot.turns.webhooks == 1, 5, "the bot to answer the stuck delivery")
        maria, joao = fake.contact("Maria Lopez"), fake.contact("João Silva")
        conv = fake.customer_writes(maria, "Hi, is my order on its way?").conversation
        handed = fake.customer_writes(joao, "a human please").conversation
        await wait_for(lambda: handed.status == "open", 5, "João's handoff while the stuck delivery waits")
        await wait_for(
            lambda: any(r.payload.get("conversation", {}).get("id") == conv.display_id for r in team.delivered),
            5,
            "Maria's message at the team's bot while the stuck delivery waits",
        )
        assert bot.turns.webhooks == 1  # all of it happened while the delivery was still being answered
        writer.write(b" " * 99)  # the rest of it: not a delivery
        await writer.drain()
        status = await reader.readline()
        assert status.startswith(b"HTTP/1.1 4")  # refused, as any bad delivery is
        writer.close()
        await wait_for(lambda: bot.turns.webhooks == 0, 5, "the stuck delivery's answer")
    finally:
        await team.close()


@pytest.mark.parametrize("cut", ["sender gone mid-body", "wrong token"])
async def test_a_delivery_that_ends_without_an_answer_is_no_longer_counted(fake, start_bot, cut):
    """The count of deliveries being answered comes back down when the handler is cut off (the sender hangs up
    mid-body) or raises (a wrong WEBHOOK_TOKEN is a 404 raised before the body is read)."""
    running = await start_bot(WEBHOOK_TOKEN="t0ken-for-the-webhook-path")
    bot = running.bot
    host, port = running.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    path = running.webhook_path if cut == "sender gone mid-body" else "/webhook/not-the-token"
    writer.write(f"POST {path} HTTP/1.1\r\nHost: bot\r\nContent-Length: 100\r\n\r\n{{".encode())
    await writer.drain()
    if cut == "sender gone mid-body":
        await wait_for(lambda: bot.turns.webhooks == 1, 5, "the bot to answer the delivery")
        writer.transport.abort()
    else:
        assert (await reader.readline()).startswith(b"HTTP/1.1 404")
        writer.close()
    await wait_for(lambda: bot.turns.webhooks == 0, 5, "the count back to zero")
