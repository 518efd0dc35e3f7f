"""The SQLite store's group commit (store/writer.py): what waits for a sync to disk is not held back by what does not,
and every write is answered in the order the store needs."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

from agentbot.actions import Job, SetStatus
from agentbot.facts import ConversationState
from agentbot.store import Commit, open_store
from agentbot.store.writer import LAZY


async def test_a_decision_is_written_while_the_outbox_keeps_writing_its_progress(tmp_path):
    """The outbox's progress is written without a sync, the webhook's decisions with one; a steady stream of the
    first (the relay workload: a forward finished per delivery) must not hold the second back until it stops."""
    store = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    await store.open()
    job = Job(1, 42, "r", [SetStatus("open")])
    job.id = "1"
    answered: list[str] = []

    async def outbox() -> None:
        writes = []
        for _ in range(2000):  # always some progress waiting, whenever the writer looks
            writes.append(asyncio.ensure_future(store.progress(job, 1.0)))
            await asyncio.sleep(0)
        await asyncio.gather(*writes)
        answered.append("the outbox's progress")

    async def decision() -> None:
        await asyncio.sleep(0.005)  # once the stream flows
        assert await store.commit(Commit("d:1", "1:42", jobs=[Job(1, 42, "handoff", [SetStatus("open")])]), 1.0)
        answered.append("the decision")

    await asyncio.gather(outbox(), decision())
    await store.close()
    assert answered == ["the decision", "the outbox's progress"]


async def test_echoes_are_written_before_a_later_write(tmp_path):
    """Echoes wait for the end of the loop's turn to be written together; a write queued after them (here the
    pruning, which keeps only the latest) finds them in the store."""
    store = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    await store.open()
    for message_id in range(10, 20):
        await store.echo("1:42", message_id, f"note {message_id}", 100.0)
    assert await store.echoed("1:42", "note 19", after=18)  # not written yet: found in memory
    await store.prune(100.0 + 24 * 3600)
    assert not await store.echoed("1:42", "note 11", after=None)  # pruned: it was in the store by then
    assert await store.echoed("1:42", "note 12", after=None)
    await store.close()


async def test_statements_run_on_the_loop_and_bulk_writes_in_the_writer_thread(tmp_path):
    """A write's statements are microseconds: on the loop they wait for no GIL; a bulk write (pruning, timers,
    dead letters: rows without bound) runs whole in the writer thread, so the loop never runs it."""
    store = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    await store.open()
    try:
        where = lambda: threading.current_thread().name  # noqa: E731
        assert await store._write(where) == threading.current_thread().name
        assert await store._write(where, bulk=True) == "sqlite-writer"
    finally:
        await store.close()


async def test_writes_wait_for_another_connections_lock_without_stopping_the_loop_and_land_in_order(tmp_path):
    """The loop waits for SQLite's write lock with timers, not by sleeping: it keeps turning, later writes (a bulk one
    too) join the wait, and all land in the order they were put once the lock is free."""
    path = tmp_path / "s.sqlite3"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")  # a backup, `outbox --retry`: SQLite's write lock is theirs
    try:
        first = asyncio.ensure_future(store.commit(Commit("d:1", "1:1", ConversationState(incoming=1)), 1.0))
        for _ in range(50):  # the loop keeps turning while the write waits
            await asyncio.sleep(0)
        assert not first.done()
        bulk = asyncio.ensure_future(store.prune(2.0))  # joins the wait, after the first
        later = asyncio.ensure_future(store.commit(Commit("d:1", "1:1", ConversationState(incoming=2)), 1.0))
        other.execute("ROLLBACK")
        assert await first is True
        await bulk
        assert await later is False  # the same delivery: the first one's dedup key, written before it
        assert (await store.load("1:1", None))[0] == ConversationState(incoming=1)
    finally:
        other.close()
        await store.close()


def _commits(store) -> list[str]:
    """The COMMITs the store's writer connection runs from now on (in either thread)."""
    seen: list[str] = []
    store.db.set_trace_callback(lambda sql: seen.append(sql) if sql == "COMMIT" else None)
    return seen


async def test_the_outboxs_progress_waits_for_a_decision_to_share_its_commit_while_decisions_come(tmp_path):
    """Under a stream of decisions (the relay workload: a forward finished per delivery), the outbox's progress waits
    up to LAZY for the next decision and rides in its transaction: one COMMIT, and the decision never waits behind a
    transaction of the progress alone. Here the progress is queued, the loop turns, then a decision comes."""
    store = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    await store.open()
    job = Job(1, 42, "r", [SetStatus("open")])
    job.id = "1"
    try:
        assert await store.commit(Commit("d:1", "1:1", ConversationState(incoming=1)), 1.0)  # decisions are coming
        commits = _commits(store)
        progress = asyncio.ensure_future(store.progress(job, 1.0))
        for _ in range(5):  # turns of the loop: a transaction of its own would start in the first
            await asyncio.sleep(0)
        assert not progress.done()
        assert await store.commit(Commit("d:2", "1:2", ConversationState(incoming=1)), 1.0)
        assert await progress is True
        assert commits == ["COMMIT"]
    finally:
        await store.close()


async def test_the_outboxs_progress_waits_no_longer_than_lazy_for_a_decision(tmp_path):
    """No decision follows: the progress is written in a transaction of its own once it waited LAZY; with no decision
    lately (a quiet webhook), it waits for none."""
    store = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    await store.open()
    job = Job(1, 42, "r", [SetStatus("open")])
    job.id = "1"
    try:
        assert await store.commit(Commit("d:1", "1:1", ConversationState(incoming=1)), 1.0)
        commits = _commits(store)
        assert await asyncio.wait_for(store.progress(job, 1.0), 1.0) is True  # the LAZY timer, not a decision
        assert commits == ["COMMIT"]
        deadline = time.monotonic() + 1.0
        while time.monotonic() - store._writer._synced_at <= LAZY:  # until no decision came for LAZY
            assert time.monotonic() < deadline
            await asyncio.sleep(LAZY / 4)
        progress = asyncio.ensure_future(store.progress(job, 1.0))
        for _ in range(5):  # its transaction starts on the next turn and its COMMIT runs in the thread
            await asyncio.sleep(0)
        assert store._writer._busy or progress.done()
        assert await progress is True
        assert commits == ["COMMIT", "COMMIT"]
    finally:
        await store.close()
