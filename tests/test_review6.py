"""review6: a second adversarial read of the SQLite writer after 5caddac (the fixes of review5): the defects it
found, as stories, each failing on 5caddac; and the hardening it asked for (a write that swallows the error that
ended its transaction)."""

from __future__ import annotations

import asyncio
import sqlite3
from functools import partial

from agentbot.store import open_store, writer
from agentbot.store import sqlite as sqlite_store
from agentbot.store.writer import Kind, locked
from tests.conftest import wait_for
from tests.sqlite_locks import holding_write_lock


async def test_a_transaction_left_open_is_rolled_back_even_when_the_next_write_changes_the_sync_level(tmp_path):
    """_statements sets PRAGMA synchronous before it rolls back a transaction left open (by a ROLLBACK that
    failed): SQLite refuses to change the safety level inside a transaction, so the next transaction fails whole
    whenever it syncs otherwise than the last one did."""
    store = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    await store.open()
    try:
        await store._write(lambda: None)  # synced: the connection is at FULL
        store.db.execute("BEGIN")  # what a failed ROLLBACK leaves (the writer is idle: the connection is the loop's)
        assert await store._enqueue(lambda: "written", Kind.UNSYNCED) == "written"
    finally:
        await store.close()


async def test_writes_queued_together_through_a_lock_wait_run_out_of_patience_together(tmp_path, monkeypatch):
    """PATIENCE counts per transaction, not per write: when the first MOST writes of a lock wait fail for lack of
    it, the writes queued with them (at the same moment) start a new wait of their own, and so on: the last of
    3,000 writes fails after 12 x 3 s, and close() during the second wait takes two PATIENCEs."""
    monkeypatch.setattr(writer, "PATIENCE", 0.3)
    monkeypatch.setattr(writer, "MOST", 4)
    path = tmp_path / "s.sqlite3"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    other = holding_write_lock(path)  # held until the first writes fail
    try:
        insert = partial(store.db.execute, "INSERT INTO meta VALUES (?, '')")
        written = [store._enqueue(partial(insert, (f"w{n}",)), Kind.SYNCED) for n in range(12)]
        await asyncio.wait(written, return_when=asyncio.FIRST_COMPLETED)
        for _ in range(5):
            await asyncio.sleep(0)  # loop turns
        assert locked(written[0].exception())
        waiting = sum(not w.done() for w in written)
        assert waiting == 0, f"{waiting} of 12 writes, queued with the failed ones, wait again"
    finally:
        other.execute("ROLLBACK")
        await asyncio.gather(*written, return_exceptions=True)
        other.close()
        await store.close()


async def test_an_echo_made_while_the_pruning_runs_stays_in_memory(tmp_path, monkeypatch):
    """prune() drops the first `recent` echoes of _recent once its bulk write is in: those it found when it began.
    _recent is bounded (RECENT_ECHOES, reached after 1,024 echoes in a PRUNE_EVERY): an echo made while the
    pruning runs pushes the oldest out, and prune() then drops the new one, not yet written (it waits behind the
    pruning), so echoed() does not find it until it is, and never if that write is lost."""
    monkeypatch.setattr(sqlite_store, "RECENT_ECHOES", 4)
    store = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    await store.open()
    try:
        for n in range(4):
            await store.echo("1:1", n, f"old {n}", 1.0)
        await store._write(lambda: None)  # the four written
        pruning = asyncio.ensure_future(store.prune(2.0))
        await asyncio.sleep(0)  # it counts _recent and hands its bulk write to the thread
        await store.echo("1:1", 10, "new", 2.0)
        await pruning
        assert any(row[1] == 10 for row in store._recent), list(store._recent)
    finally:
        await store.close()


async def test_a_memory_store_answers_every_write_of_a_long_queue(monkeypatch):
    """_answer starts the next transaction inside its own call: on memory:// (commits on the loop) every batch of
    a queue runs nested in one callback, the loop never turning between them (what MOST is for), until the stack
    overflows (~490 batches: 125,000 writes with MOST=256). The RecursionError escapes _next between setting _busy
    and answering: the writer is wedged and every write waits for ever. MOST=1 reaches the depth with 2,000."""
    monkeypatch.setattr(writer, "MOST", 1)
    store = open_store("memory://")
    await store.open()
    try:
        written = [store._enqueue(lambda: "written", Kind.SYNCED) for _ in range(2000)]
        await wait_for(lambda: all(w.done() for w in written), what="every write answered")
        assert [w.result() for w in written] == ["written"] * 2000
    finally:
        await store.close()


async def test_a_write_that_swallows_the_error_ending_its_transaction_fails_and_the_others_land(tmp_path):
    """A write caught SQLite's error for a full database, which rolls the whole transaction back: the writes before
    it were answered as written though they were gone, and the ones after it were committed one by one outside any
    transaction. Now that write fails alone, and the others are applied again and committed together."""
    from agentbot.actions import Job, SetStatus
    from agentbot.facts import ConversationState
    from agentbot.store import Commit

    store = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    await store.open()
    try:
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count={pages + 8}")

        def swallows() -> None:
            try:
                store.db.execute("INSERT INTO meta VALUES ('big', ?)", ("x" * 1_000_000,))
            except sqlite3.OperationalError:
                pass

        def decision(n: int) -> Commit:
            return Commit(
                f"d:{n}", f"1:{n}", ConversationState(incoming=n), [Job(1, n, "handoff", [SetStatus("open")])]
            )

        outcomes = await asyncio.gather(
            store.commit(decision(1), 1.0),
            store._write(swallows),
            store.commit(decision(2), 1.0),
            return_exceptions=True,
        )
        assert outcomes[0] is True and outcomes[2] is True and isinstance(outcomes[1], sqlite3.OperationalError)
        for n in (1, 2):
            assert (await store.load(f"1:{n}", None))[0] == ConversationState(incoming=n)
        assert await store.depth() == 2
    finally:
        await store.close()
