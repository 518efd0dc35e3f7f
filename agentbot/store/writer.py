"""SQLite's group commit: a writer thread of its own commits whatever was queued while it wrote the last batch.

Each round takes every write waiting and commits them in one transaction, synced to disk when any of them
waits for a sync (a decision), else not (the outbox's progress, echoes): writes that ride along with a decision
pay no sync of their own. It never waits for the event loop between rounds, and a steady stream of unsynced
writes never holds the synced ones back (before, the unsynced went first, and the decisions only when none
waited). `memory://` writes on the event loop instead, at its next turn: there is no disk to wait for.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from loguru import logger

PATIENCE = 3.0  # seconds a write waits for another connection's lock before it fails
BUSY_DELAYS = (0.002, 0.2)  # first and longest pause between tries while the database is locked
Results = list[tuple[bool, Any]]  # (ok, value or exception) per write


class Write(NamedTuple):
    apply: Callable[[], Any]
    future: asyncio.Future[Any] | None  # None: a hint nobody waits for (Writer.hint)
    synced: bool  # wait for the sync to disk (not echoes, nor the outbox's progress and finished jobs)
    what: str = ""  # a hint's name in the log line of its failure


def _report_lost(what: str, failed: BaseException | None) -> None:
    if failed is not None:
        logger.warning("could not remember {} ({})", what, failed)


def locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


class Writer:
    """Carries out writes on the writer connection `db` (busy_timeout 0: a locked database is tried again
    after a pause, for up to PATIENCE seconds, later writes joining the wait)."""

    def __init__(self, db: sqlite3.Connection, threaded: bool) -> None:
        self.db = db
        self.pending = 0  # writes queued and not answered yet (on the loop)
        self._synced = True  # the connection's synchronous setting is FULL
        self._queue: queue.SimpleQueue[Write | None] = queue.SimpleQueue()
        self._inline: list[Write] = []  # memory://: written at the loop's next turn
        self._thread = threading.Thread(target=self._run, name="sqlite-writer", daemon=True) if threaded else None
        self._stopping = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if self._thread is not None:
            self._thread.start()

    def put(self, apply: Callable[[], Any], synced: bool) -> asyncio.Future[Any]:
        future = self._loop.create_future()
        self.pending += 1
        if self._thread is not None:
            self._queue.put(Write(apply, future, synced))
        else:
            self._inline.append(Write(apply, future, synced))
            if len(self._inline) == 1:
                self._loop.call_soon(self._write_inline)
        return future

    def hint(self, apply: Callable[[], Any], what: str) -> None:
        """A write nobody waits for, without a sync (the bot's echoes): it costs the event loop no answer; its
        failure is logged, naming `what` it was."""
        if self._thread is not None:
            self._queue.put(Write(apply, None, False, what))
            return
        written = self.put(apply, synced=False)
        written.add_done_callback(lambda f: _report_lost(what, None if f.cancelled() else f.exception()))

    def stop(self) -> None:
        """Write what is queued, then end the thread (waits for it)."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    # ---- the event loop's side ----
    def _write_inline(self) -> None:
        writes, self._inline = self._inline, []
        self._answer(writes, self._attempt(writes))

    def _answer(self, writes: list[Write], results: Results | BaseException) -> None:
        if isinstance(results, BaseException):
            results = [(False, results)] * len(writes)
        self.pending -= len(writes)
        for (_, future, _, _), (ok, value) in zip(writes, results, strict=True):
            if future is not None and not future.done():
                future.set_result(value) if ok else future.set_exception(value)

    # ---- the writer thread ----
    def _run(self) -> None:
        while not self._stopping:
            self._commit(self._drain(self._queue.get()))

    def _drain(self, item: Write | None) -> list[Write]:
        """`item` and every write queued behind it; the stop mark (None) ends the thread once they are written."""
        writes = []
        while True:
            if item is None:
                self._stopping = True
            else:
                writes.append(item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return writes

    def _commit(self, writes: list[Write]) -> None:
        locked_since = None
        while True:
            results = self._attempt(writes)
            if not isinstance(results, BaseException):
                break
            now = time.monotonic()
            locked_since = locked_since or now
            if now - locked_since > PATIENCE:
                results = [(False, results)] * len(writes)
                break
            time.sleep(min(BUSY_DELAYS[0] * 2 ** ((now - locked_since) / 0.05), BUSY_DELAYS[1]))
            if not self._queue.empty():  # later writes join the wait
                writes += self._drain(self._queue.get_nowait())
        self._tell(writes, results)

    def _tell(self, writes: list[Write], results: Results) -> None:
        """The outcome to those who wait (on the loop), a hint's failure to the log."""
        waited = [(w, r) for w, r in zip(writes, results, strict=True) if w.future is not None]
        for write, (ok, value) in zip(writes, results, strict=True):
            if write.future is None and not ok:
                _report_lost(write.what, value)
        if not waited:
            return  # hints only: the loop has nothing to hear
        try:
            self._loop.call_soon_threadsafe(self._answer, [w for w, _ in waited], [r for _, r in waited])
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _attempt(self, writes: list[Write]) -> Results | BaseException:
        try:
            return self._batch(writes)
        except Exception as exc:  # the connection failed outside the transaction: these writes fail, not the thread
            return [(False, exc)] * len(writes)

    def _batch(self, writes: list[Write]) -> Results | BaseException:
        """The writes' transaction: (ok, value or exception) each, or the lock error."""
        synced = any(w.synced for w in writes)
        if synced != self._synced:
            self.db.execute(f"PRAGMA synchronous={'FULL' if synced else 'NORMAL'}")
            self._synced = synced
        applies = [w.apply for w in writes]
        try:
            return [(True, value) for value in self._transaction(applies)]
        except Exception as exc:
            if locked(exc):
                return exc
            # one writer's statements failed and took the shared transaction with them: give each its own
            return [self._alone(apply) for apply in applies] if len(applies) > 1 else [(False, exc)]

    def _transaction(self, applies: list[Callable[[], Any]]) -> list[Any]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            values = [apply() for apply in applies]
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        return values

    def _alone(self, apply: Callable[[], Any]) -> tuple[bool, Any]:
        try:
            return True, self._transaction([apply])[0]
        except Exception as exc:
            return False, exc
