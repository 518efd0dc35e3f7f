"""review7: a third read of the SQLite writer (after 8b16123): the defects it found, as stories, each failing on
8b16123."""

from __future__ import annotations

import asyncio
import sqlite3

from agentbot.store import open_store, writer
from agentbot.store.writer import Kind, locked
from tests.conftest import wait_for
from tests.sqlite_locks import holding_write_lock


async def test_a_lock_wait_after_a_bulk_write_counts_from_its_own_start(tmp_path, monkeypatch):
    """A lock wait whose spent writes leave a bulk write at the head of the queue keeps _locked_since: the bulk write
    runs in the thread (which never clears it), and the next lock wait on the loop, however much later and after
    the lock was free, counts from the old one: the write behind the bulk one fails at its first try."""
    monkeypatch.setattr(writer, "PATIENCE", 0.3)
    path = tmp_path / "s.sqlite3"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    loop = asyncio.get_running_loop()
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    taker = sqlite3.connect(path, isolation_level=None, timeout=10)  # waits (blocking) for the bulk write's COMMIT
    took = []

    def take() -> None:
        taker.execute("BEGIN IMMEDIATE")  # the moment the bulk write's COMMIT lets go, before its answer
        took.append(True)

    def bulk() -> str:
        store.db.execute("INSERT INTO meta VALUES ('bulk', '')")
        if not took:
            loop.call_soon_threadsafe(take)
        return "bulk"

    insert = lambda key: lambda: store.db.execute("INSERT INTO meta VALUES (?, '')", (key,)) and key  # noqa: E731
    other.execute("BEGIN IMMEDIATE")
    try:
        w1 = asyncio.ensure_future(store._write(insert("w1")))
        b = asyncio.ensure_future(store._write(bulk, Kind.BULK))
        w2 = asyncio.ensure_future(store._write(insert("w2")))
        [out] = await asyncio.gather(w1, return_exceptions=True)
        assert locked(out)  # spent its patience: the lock was never free
        other.execute("ROLLBACK")
        assert await b == "bulk"
        for _ in range(5):
            await asyncio.sleep(0)
        assert not w2.done() or not w2.exception(), f"w2 failed at its first try: {w2.exception()!r}"
        taker.execute("ROLLBACK")
        assert await w2 == "w2"
    finally:
        for conn in (other, taker):
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
        await asyncio.gather(*(f for f in (w1, b, w2)), return_exceptions=True)
        await store.close()


async def test_a_failed_write_whose_rollback_fails_is_not_committed(tmp_path):
    """_statements answers a lone write's failure once it has tried a ROLLBACK, without looking whether the ROLLBACK
    took (_rollback swallows its error); _committed then finds the transaction open and COMMITs it: the failed write's
    first statements land, and its caller, told it failed, tries again (a job queued twice, say). SQLite's ROLLBACK
    fails on an interrupt (here a one-shot progress handler) or an I/O error."""
    store = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    await store.open()

    def fails() -> None:
        store.db.execute("INSERT INTO meta VALUES ('half', 'done')")
        calls = []
        store.db.set_progress_handler(
            lambda: not calls.append(1) and len(calls) == 1, 1
        )  # interrupts the next statement
        raise ValueError("the write fails after its first statement")

    try:
        [outcome] = await asyncio.gather(store._write(fails), return_exceptions=True)
        assert isinstance(outcome, ValueError)
        assert store.rdb.execute("SELECT 1 FROM meta WHERE key='half'").fetchone() is None, "a failed write committed"
    finally:
        store.db.set_progress_handler(None, 1)
        await store.close()


async def test_an_echo_whose_write_ran_out_of_patience_is_not_forgotten_by_a_pruning_that_lands(tmp_path, monkeypatch):
    """prune() drops from memory the echoes made before it, "written before it (one queue, in order)". But the echoes'
    hint waits on the loop with its own PATIENCE and the pruning, a bulk write, starts a fresh one in the thread: under
    a lock held a little longer than PATIENCE the hint fails, the pruning lands, and the echo is in neither the store
    nor memory (the outbox then posts the bot's message again). Before the writer change both failed together."""
    monkeypatch.setattr(writer, "PATIENCE", 0.5)
    path = tmp_path / "s.sqlite3"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    other = holding_write_lock(path)  # a backup
    try:
        await store.echo("1:1", 7, "the bot's message", 1.0)
        pruning = asyncio.ensure_future(store.prune(2.0))  # flushes the echo's hint first, then queues behind it
        await asyncio.sleep(0)  # the pruning queued, behind the echo's hint
        assert len(store._writer._queued) == 2
        await wait_for(  # the echo's write spent its patience, the pruning not yet (8b16123: it is in the thread)
            lambda: store._echoes_made == 2 or (store._writer.pending == 1 and not store._writer._queued),
            what="the echo's write failed",
        )
        other.execute("ROLLBACK")
        await pruning
        assert await store.echoed("1:1", "the bot's message", after=None), "the echo is lost"
        await wait_for(lambda: store._writer.pending == 0, what="the echo written again")
        assert store.rdb.execute("SELECT 1 FROM echoes WHERE conv='1:1' AND id=7").fetchone(), "not in the store"
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
        await store.close()
