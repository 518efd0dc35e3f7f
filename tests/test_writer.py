"""The SQLite store's group commit (store/writer.py): what waits for a sync to disk is not held back by what does not,
and every write is answered in the order the store needs."""

from __future__ import annotations

import asyncio
import threading
import time

from agentbot.actions import Job, SetStatus
from agentbot.facts import ConversationState
from agentbot.store import Commit, open_store
from agentbot.store import writer as writer_module
from agentbot.store.writer import LAZY, Kind
from tests.sqlite_locks import holding_write_lock


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
        assert await store._write(where, Kind.BULK) == "sqlite-writer"
    finally:
        await store.close()


async def test_writes_wait_for_another_connections_lock_without_stopping_the_loop_and_land_in_order(tmp_path):
    """The loop waits for SQLite's write lock with timers, not by sleeping: it keeps turning, later writes (a bulk one
    too) join the wait, and all land in the order they were put once the lock is free."""
    path = tmp_path / "s.sqlite3"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    other = holding_write_lock(path)  # a backup, `outbox --retry`: SQLite's write lock is theirs
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
        assert store._writer._urgent == 0  # the requeues kept the count of synced writes queued
        decision = store._writer.put(_nothing, Kind.SYNCED)  # so it starts at once
        await asyncio.sleep(0)
        assert store._writer._busy
        await decision
    finally:
        other.close()
        await store.close()


def _commits(store) -> list[str]:
    """The COMMITs the store's writer connection runs from now on (in either thread)."""
    seen: list[str] = []
    store.db.set_trace_callback(lambda sql: seen.append(sql) if sql == "COMMIT" else None)
    return seen


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def _nothing() -> None:
    return None


async def test_while_decisions_come_the_outboxs_progress_waits_for_the_next_one_to_share_its_commit(
    tmp_path, monkeypatch
):
    """Under a stream of decisions (the relay workload: a forward finished per delivery), the outbox's progress waits
    up to LAZY for the next decision and rides in its transaction: one COMMIT, not one more of its own. Here it is
    queued while a decision commits, and waits once that is answered; the next decision starts its transaction at
    once (a synced write never waits) and takes it along. (LAZY is long here: a slow disk changes nothing.)"""
    monkeypatch.setattr(writer_module, "LAZY", 5.0)
    store = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    await store.open()
    w = store._writer
    try:
        commits = _commits(store)
        first = w.put(_nothing, Kind.SYNCED)
        await asyncio.sleep(0)  # its transaction began: its COMMIT is in the thread, answered on a later turn
        assert w._busy
        progress = w.put(_nothing, Kind.UNSYNCED)
        await first
        await _turns()
        assert not progress.done() and not w._busy  # waiting for a decision, not written alone
        second = w.put(_nothing, Kind.SYNCED)
        await asyncio.sleep(0)
        assert w._busy  # the decision's transaction began on the next turn, the progress in it
        await second
        assert progress.done()
        assert commits == ["COMMIT", "COMMIT"]
    finally:
        await store.close()


async def test_the_outboxs_progress_waits_no_longer_than_lazy_and_not_at_all_without_decisions(tmp_path):
    """No decision follows: the progress is written in a transaction of its own once it waited LAZY; with no decision
    lately (a quiet webhook), it waits for none."""
    store = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    await store.open()
    w = store._writer
    try:
        await w.put(_nothing, Kind.SYNCED)
        commits = _commits(store)
        await asyncio.wait_for(w.put(_nothing, Kind.UNSYNCED), 1.0)  # the LAZY timer, or at once if the COMMIT was slow
        assert commits == ["COMMIT"]
        deadline = time.monotonic() + 1.0
        while time.monotonic() - w._synced_at <= LAZY:  # until no decision came for LAZY
            assert time.monotonic() < deadline
            await asyncio.sleep(LAZY / 4)
        progress = w.put(_nothing, Kind.UNSYNCED)
        await asyncio.sleep(0)
        assert w._busy  # its transaction began on the next turn
        await progress
        assert commits == ["COMMIT", "COMMIT"]
    finally:
        await store.close()


async def test_memory_stores_write_the_outboxs_progress_at_once(monkeypatch):
    """memory:// commits on the loop: nothing to share, so nothing waits."""
    monkeypatch.setattr(writer_module, "LAZY", 5.0)
    store = open_store("memory://")
    await store.open()
    w = store._writer
    try:
        await w.put(_nothing, Kind.SYNCED)
        progress = w.put(_nothing, Kind.UNSYNCED)
        await _turns()
        assert progress.done()
    finally:
        await store.close()


async def test_a_bulk_write_opens_no_wait_for_the_outboxs_progress(tmp_path, monkeypatch):
    """A bulk write (the pruning, timers) runs alone in the thread: nothing can share it, so what follows it does not
    wait for one."""
    monkeypatch.setattr(writer_module, "LAZY", 5.0)
    store = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    await store.open()
    w = store._writer
    try:
        await w.put(_nothing, Kind.BULK)
        progress = w.put(_nothing, Kind.UNSYNCED)
        await asyncio.sleep(0)
        assert w._busy  # its transaction began on the next turn
        await progress
    finally:
        await store.close()
