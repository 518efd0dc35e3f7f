"""review5: an independent review of the SQLite writer's second form (a transaction's statements on the event loop,
its COMMIT in the writer thread, bulk writes whole in the thread): the defects it found, as stories. Each failed on
the first form of the change (05007c0); 3, 5 and 6 passed before it."""

from __future__ import annotations

import asyncio
import collections
import sqlite3
import time
from functools import partial

import pytest

from agentbot.actions import Job, SetStatus
from agentbot.facts import ConversationState
from agentbot.store import Commit, open_store, writer
from agentbot.store.writer import Kind, locked
from tests.conftest import wait_for
from tests.sqlite_locks import holding_write_lock


def decision(i: int) -> Commit:
    return Commit(f"d:{i}", f"1:{i}", ConversationState(incoming=1), jobs=[Job(1, i, "handoff", [SetStatus("open")])])


async def test_a_write_whose_failure_cannot_be_set_on_its_future_does_not_stop_the_writer(tmp_path):
    """Future.set_exception refuses a StopIteration (TypeError): _answer stops half way and _busy stays True, so no
    later write is ever carried out (before the change only that batch's answers were lost)."""
    store = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    await store.open()

    def stops() -> None:
        raise StopIteration

    try:
        failed = store._enqueue(stops, Kind.SYNCED)
        await wait_for(lambda: store._writer.pending == 0, what="the failing write's transaction")
        later = asyncio.ensure_future(store._write(lambda: "written"))
        await wait_for(lambda: later.done(), timeout=2.0, what="a later write")
        assert later.result() == "written"
        assert isinstance(failed.exception(), RuntimeError)  # answered (and read: no "never retrieved" at exit)
    finally:
        await store.close()


class Abort(BaseException):
    pass


@pytest.mark.parametrize("kind", [Kind.SYNCED, Kind.BULK], ids=["on the loop", "in the thread"])
async def test_a_write_raising_a_base_exception_leaves_no_transaction_open_and_the_writer_going(tmp_path, kind):
    """A BaseException from a write's statements escapes _statements with BEGIN's transaction open (no ROLLBACK):
    on the loop it escapes _next with _busy True, in the thread it ends the thread. Every later write waits for
    ever (and close() fails them: 'cannot start a transaction within a transaction')."""
    store = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    await store.open()

    def aborts() -> None:
        store.db.execute("INSERT INTO meta VALUES ('half', 'done')")
        raise Abort

    try:
        failed = store._writer.put(aborts, kind)
        await wait_for(lambda: not store._writer._queued, what="the write taken")
        later = asyncio.ensure_future(store._write(lambda: "written"))
        await wait_for(lambda: later.done(), timeout=2.0, what="a later write")
        assert later.result() == "written"
        assert failed.done()
        assert store.rdb.execute("SELECT 1 FROM meta WHERE key='half'").fetchone() is None
    finally:
        await store.close()


async def test_a_write_that_fills_the_database_fails_alone(tmp_path):
    """SQLITE_FULL (disk full; here max_page_count) rolls the whole transaction back, not just the statement. The
    savepoint pass then fails on 'ROLLBACK TO one' (no such savepoint) and every write of the group fails with that
    error; the old code ran each write alone, and only the one too big failed."""
    store = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    await store.open()
    try:
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count={pages + 8}")  # room for a few small rows, not for 1 MB

        def big() -> None:
            store.db.execute("INSERT INTO meta VALUES ('big', ?)", ("x" * 1_000_000,))

        small = [store.commit(decision(1), 1.0), store._write(big), store.commit(decision(2), 1.0)]
        outcomes = await asyncio.gather(*small, return_exceptions=True)
        assert isinstance(outcomes[1], sqlite3.OperationalError) and "full" in str(outcomes[1])
        assert outcomes[0] is True and outcomes[2] is True, outcomes
    finally:
        await store.close()


async def test_a_lock_wait_after_a_transaction_that_failed_outright_waits_its_full_patience(tmp_path, monkeypatch):
    """_locked_since is cleared on success and when patience runs out, not when a transaction that had waited for
    the lock then fails with another error: the next lock wait, however much later, counts from the old one and
    gives up at once."""
    monkeypatch.setattr(writer, "PATIENCE", 0.3)
    path = tmp_path / "s.sqlite3"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count={pages + 8}")

        def big() -> None:
            store.db.execute("INSERT INTO meta VALUES ('big', ?)", ("x" * 1_000_000,))

        other.execute("BEGIN IMMEDIATE")
        first = asyncio.gather(store.commit(decision(1), 1.0), store._write(big), return_exceptions=True)
        await wait_for(lambda: store._writer._locked_since is not None, what="a lock wait")
        other.execute("ROLLBACK")
        await first  # the group failed, not on the lock
        since = time.monotonic()
        await wait_for(lambda: time.monotonic() - since > 0.4, what="more than PATIENCE later")

        other.execute("BEGIN IMMEDIATE")  # held for a moment only
        later = asyncio.ensure_future(store.commit(decision(3), 1.0))
        for _ in range(3):
            await asyncio.sleep(0)  # let loop turns pass
        other.execute("ROLLBACK")
        assert await later is True
    finally:
        other.close()
        await store.close()


async def test_the_writes_queued_through_a_lock_wait_do_not_stop_the_loop_once_it_ends(tmp_path):
    """Every write queued was taken into the next transaction, whose statements run in one callback on the loop:
    after a lock wait (up to PATIENCE, 3 s of webhooks) that was thousands of writes at once (~50 ms here for 3,000;
    before the change the thread ran them and the loop kept turning). A transaction on the loop now takes at most
    writer.MOST. Each write below reads, on the other connection, how many writes were committed before its own
    transaction: the writes of one transaction all read the same number."""
    path = tmp_path / "s.sqlite3"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    other = holding_write_lock(path)

    def write(n: int) -> int:
        store.db.execute("INSERT INTO meta VALUES (?, '')", (f"w{n}",))
        return store.rdb.execute("SELECT count(*) FROM meta WHERE key GLOB 'w*'").fetchone()[0]

    try:
        written = [store._enqueue(partial(write, n), Kind.SYNCED) for n in range(3000)]
        await asyncio.sleep(0)  # a loop turn: the writer finds the lock taken
        other.execute("ROLLBACK")
        before = await asyncio.gather(*written)
        transactions = collections.Counter(before)
        assert sum(transactions.values()) == 3000
        assert max(transactions.values()) <= writer.MOST, transactions.most_common(1)
    finally:
        other.close()
        await store.close()


async def test_close_during_a_lock_wait_gives_the_waiting_writes_their_patience_once(tmp_path, monkeypatch):
    """Writes waiting (on the loop) for another connection's lock are back in _queued; stop() runs them with
    _whole, which starts their PATIENCE again and sleeps on the loop: close() takes its own wait plus a whole
    PATIENCE more (3 + 3 s with the shipped values; the old thread gave up PATIENCE after the first try)."""
    from agentbot.store import sqlite as sqlite_store

    monkeypatch.setattr(writer, "PATIENCE", 1.0)
    monkeypatch.setattr(sqlite_store, "PATIENCE", 0.9)  # close()'s own wait for pending writes
    path = tmp_path / "s.sqlite3"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    other = holding_write_lock(path)  # held throughout
    try:
        written = asyncio.ensure_future(store.commit(decision(1), 1.0))
        await wait_for(lambda: store._writer._locked_since is not None, what="the lock wait")
        started = time.monotonic()
        await store.close()
        took = time.monotonic() - started
        [outcome] = await asyncio.gather(written, return_exceptions=True)
        assert isinstance(outcome, sqlite3.OperationalError) and locked(outcome)
        assert took < writer.PATIENCE + 0.5, f"close() took {took:.2f} s"
    finally:
        other.close()
