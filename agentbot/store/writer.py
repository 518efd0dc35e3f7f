"""SQLite's group commit: the writes queued while a transaction commits share the next one.

A transaction's statements run on the event loop: each takes microseconds, and a thread running them had to win
the GIL back from the busy loop after every one (under the relay workload, four fifths of its time went to that
wait, and every delivery waited for its commit). Its COMMIT, which writes the WAL and syncs it to disk, runs in a
thread of its own, so the loop never waits for the disk. A transaction is synced when any of its writes waits for
a sync (a decision), else not (the outbox's progress, echoes): writes that ride along with a decision pay no sync
of their own, and a steady stream of unsynced writes never holds a synced one back. While decisions come (the
relay workload: a forward finished per delivery), unsynced writes wait up to LAZY for the next one and share its
transaction: one COMMIT, and one wait for the GIL, instead of two. Bulk writes (the pruning, timers firing, dead
letters revived: as many rows as there are) run whole in that thread, in their turn, so the loop never runs a
statement without bound. `memory://` commits on the loop too: there is no disk to wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from enum import Enum
from functools import partial
from typing import Any, NamedTuple

PATIENCE = 3.0  # seconds a write waits for another connection's lock before it fails
BUSY_DELAYS = (0.002, 0.2)  # first and longest pause between tries while the database is locked
MOST = 256  # writes in one transaction on the loop: a lock wait gathers thousands, and the loop runs them at once
LAZY = 0.01  # seconds an unsynced write waits for a synced one to share its transaction, while synced ones come
Results = list[tuple[bool, Any]]  # (ok, value or exception) per write


class Kind(Enum):
    """What a write waits for."""

    SYNCED = "synced"  # its transaction on disk, synced (a decision, a retry's attempt): starts one at once
    UNSYNCED = "unsynced"  # no sync of its own (the outbox's progress and finished jobs, echoes): rides along
    BULK = "bulk"  # synced, rows without bound (the pruning, timers firing, dead letters revived): whole in the thread

    @property
    def synced(self) -> bool:
        return self is not Kind.UNSYNCED


class Write(NamedTuple):
    apply: Callable[[], Any]
    future: asyncio.Future[Any] | None  # None: a hint nobody waits for (Writer.hint)
    kind: Kind
    lost: Callable[[BaseException], None] | None = None  # a hint's failure goes here
    queued: float = 0.0  # time.monotonic() when it was put: its patience counts from then at the earliest

    @property
    def synced(self) -> bool:
        return self.kind.synced

    @property
    def bulk(self) -> bool:
        return self.kind is Kind.BULK


def locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


def _failure(exc: BaseException) -> Exception:
    """What a future can be failed with (not a StopIteration, nor a BaseException)."""
    if isinstance(exc, Exception) and not isinstance(exc, StopIteration):
        return exc
    failure = RuntimeError(f"the write raised {exc!r}")
    failure.__cause__ = exc
    return failure


def _pause(locked_for: float) -> float:
    return min(BUSY_DELAYS[0] * 2 ** min(locked_for / 0.05, 20), BUSY_DELAYS[1])  # no float overflow


class Writer:
    """Carries out writes on the writer connection `db` (busy_timeout 0: a locked database is tried again after a
    pause, for up to PATIENCE seconds, later writes joining the wait). The connection is the thread's from a
    COMMIT (or a bulk write) handed to it until its answer reaches the loop, and the loop's otherwise."""

    def __init__(self, db: sqlite3.Connection, threaded: bool) -> None:
        self.db = db
        self.pending = 0  # writes queued and not answered yet
        self._synced = True  # the connection's synchronous setting is FULL
        self._queued: deque[Write] = deque()  # in the order put, for the next transactions
        self._busy = False  # a transaction is open, committing, or waiting for another connection's lock
        self._scheduled = False  # the loop's next turn starts a transaction
        self._later: asyncio.TimerHandle | None = None  # a transaction of unsynced writes, once they waited LAZY
        self._urgent = 0  # queued writes that start a transaction at once (synced or bulk)
        self._synced_at = -LAZY  # time.monotonic() when the latest SYNCED write was put (one an unsynced can join)
        self._locked_since: float | None = None
        self._stopped = False
        self._work: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="sqlite-writer", daemon=True) if threaded else None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if self._thread is not None:
            self._thread.start()

    def put(self, apply: Callable[[], Any], kind: Kind) -> asyncio.Future[Any]:
        future = self._loop.create_future()
        self._add(Write(apply, future, kind, queued=time.monotonic()))
        return future

    def hint(self, apply: Callable[[], Any], lost: Callable[[BaseException], None]) -> None:
        """A write nobody waits for, without a sync (the bot's echoes): it costs the event loop no answer; its
        failure goes to `lost`."""
        self._add(Write(apply, None, Kind.UNSYNCED, lost, queued=time.monotonic()))

    def stop(self) -> None:
        """End the thread once its work is done (waits for it); what is still queued is written here, at once."""
        self._stopped = True
        if self._later is not None:
            self._later.cancel()
            self._later = None
        if self._thread is not None and self._thread.is_alive():
            self._work.put(None)
            self._thread.join()
        if self._queued:
            writes = list(self._queued)
            self._queued.clear()
            self._urgent = 0
            self._answer(writes, self._whole(writes, self._locked_since))

    # ---- the event loop's side ----
    def _add(self, write: Write) -> None:
        if self._stopped:  # the connection is closing: nothing will write it
            failure = RuntimeError("the store is closed")
            if write.lost:
                write.lost(failure)
            elif write.future:
                write.future.set_exception(failure)
            return
        self.pending += 1
        self._queued.append(write)
        self._urgent += write.synced
        if write.kind is Kind.SYNCED:
            self._synced_at = write.queued
        self._schedule()

    def _patience(self) -> float:
        """Seconds the queued writes may still wait for a synced one to share its transaction (the outbox's progress
        riding along with a decision: one COMMIT and one wait for the GIL, not two). Only while synced writes come
        (a busy webhook), and only where a thread commits."""
        if self._urgent or self._thread is None or not self._queued:
            return 0.0
        now = time.monotonic()
        if now - self._synced_at > LAZY:
            return 0.0
        return self._queued[0].queued + LAZY - now

    def _schedule(self) -> None:
        """The next transaction on a later turn of the loop (never nested in this one's callback), or once the
        unsynced writes queued have waited their LAZY for a synced one."""
        if not self._queued or self._busy or self._scheduled or self._stopped:
            return
        wait = self._patience()
        if wait > 0:
            if self._later is None:
                self._later = self._loop.call_later(wait, self._next)
            return
        self._scheduled = True
        self._loop.call_soon(self._next)

    def _next(self) -> None:
        """The next transaction, if the connection is free: the writes queued up to a bulk one, or that one."""
        self._scheduled = False
        if self._later is not None:
            self._later.cancel()
            self._later = None
        if self._busy or self._stopped or not self._queued:
            return
        self._busy = True
        if self._queued[0].bulk and self._thread is not None:
            self._locked_since = None  # a wait on the loop ends here: the thread waits its own PATIENCE
            self._work.put(partial(self._in_thread, [self._popleft()]))
            return
        writes = self._take()
        try:
            results = self._statements(writes)
        except BaseException as exc:
            self._rollback()
            if not locked(exc):
                self._locked_since = None
            elif not (writes := self._wait_for_lock(writes)):
                return
            self._answer(writes, [(False, exc)] * len(writes))
            self._schedule()
            if not isinstance(exc, Exception):
                raise
            return
        self._locked_since = None
        if self._thread is not None:
            self._work.put(partial(self._commit_in_thread, writes, results))
            return
        self._answer(writes, self._committed(results))
        self._schedule()  # a later turn: a long queue on memory:// must not nest transactions in one callback

    def _take(self) -> list[Write]:
        """The next transaction's writes: the first queued and those behind it, up to a bulk one or MOST."""
        writes = [self._popleft()]
        while self._queued and not self._queued[0].bulk and len(writes) < MOST:
            writes.append(self._popleft())
        return writes

    def _popleft(self) -> Write:
        write = self._queued.popleft()
        self._urgent -= write.synced
        return write

    def _wait_for_lock(self, writes: list[Write]) -> list[Write]:
        """Another connection holds the write lock: try again after a pause (later writes join). Each write waits
        up to PATIENCE from the start of the wait or its own queueing, whichever is later: the writes that have
        spent it (the first ones), to fail; the others are queued again in front, and tried after a pause if none."""
        now = time.monotonic()
        self._locked_since = self._locked_since or now
        spent = sum(now - max(w.queued, self._locked_since) > PATIENCE for w in writes)  # FIFO: a prefix
        self._queued.extendleft(reversed(writes[spent:]))
        self._urgent += sum(w.synced for w in writes[spent:])
        if not spent:
            self._loop.call_later(_pause(now - self._locked_since), self._resume)
        elif not self._queued:  # every write of the wait fails: the next one waits from its own start
            self._locked_since = None
        return writes[:spent]

    def _resume(self) -> None:
        self._busy = False
        self._next()

    def _answer(self, writes: list[Write], results: Results) -> None:
        """The outcome to those who wait, a hint's failure to the log; the connection is the loop's again."""
        self.pending -= len(writes)
        try:
            for write, (ok, value) in zip(writes, results, strict=True):
                if write.lost:
                    if not ok:
                        write.lost(value)
                elif write.future and not write.future.done():
                    write.future.set_result(value) if ok else write.future.set_exception(_failure(value))
        finally:
            self._busy = False

    def _answered(self, writes: list[Write], results: Results) -> None:
        """The thread's answer, on the loop: then the next transaction at once (what was queued meanwhile), unless
        it is only unsynced writes that may wait for a synced one."""
        self._answer(writes, results)
        if self._patience() > 0:
            self._schedule()
        else:
            self._next()

    # ---- either side: the connection is theirs ----
    def _statements(self, writes: list[Write]) -> Results:
        """BEGIN and each write's statements, the transaction left open for its COMMIT; raises what stopped them
        all (another connection's lock, a failed connection). A write whose statements fail takes the transaction
        with it: then they are applied again, each in a savepoint of its own (`_isolated`)."""
        if self.db.in_transaction:  # left by a ROLLBACK that failed: the connection is only ever ours here
            self.db.execute("ROLLBACK")  # first: SQLite refuses to change the safety level inside a transaction
        synced = any(w.synced for w in writes)
        if synced != self._synced:
            self.db.execute(f"PRAGMA synchronous={'FULL' if synced else 'NORMAL'}")
            self._synced = synced
        self.db.execute("BEGIN IMMEDIATE")
        results: Results = []
        try:
            for w in writes:
                results.append((True, w.apply()))
                if not self.db.in_transaction:  # it caught an error that ended the transaction (before it too)
                    break
        except BaseException as exc:
            self._rollback()
            if locked(exc) or not isinstance(exc, Exception) or self.db.in_transaction:  # or the ROLLBACK failed
                raise
            if len(writes) == 1:
                return [(False, exc)]
            return self._isolated(writes)
        return results if self.db.in_transaction else self._isolated(writes)

    def _isolated(self, writes: list[Write]) -> Results:
        """The writes in a transaction again, each in a savepoint: only the failed ones are undone. One whose failure
        ends the whole transaction (a full disk, say) is left out, and the others are applied again."""
        failed: dict[int, Exception] = {}
        while True:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                results: Results = []
                for i, w in enumerate(writes):
                    results.append((False, failed[i]) if i in failed else self._alone(w.apply))
                    if not results[-1][0] and not self.db.in_transaction:  # it took the transaction with it
                        failed[i] = results[-1][1]
                        break
                else:
                    return results
            except BaseException:
                self._rollback()
                raise

    def _alone(self, apply: Callable[[], Any]) -> tuple[bool, Any]:
        self.db.execute("SAVEPOINT one")
        try:
            value = apply()
        except Exception as exc:
            if not self.db.in_transaction:
                return False, exc
            self.db.execute("ROLLBACK TO one")
            self.db.execute("RELEASE one")
            return False, exc
        if not self.db.in_transaction:  # it caught the error that ended the transaction
            return False, sqlite3.OperationalError("the write ended its transaction")
        self.db.execute("RELEASE one")
        return True, value

    def _committed(self, results: Results) -> Results:
        """COMMIT the open transaction: `results` once it is on disk, else its failure for every write."""
        if not self.db.in_transaction:  # its one write failed and was rolled back: nothing to commit
            return results
        try:
            self.db.execute("COMMIT")
        except Exception as exc:
            self._rollback()
            return [(False, exc)] * len(results)
        return results

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")

    def _whole(self, writes: list[Write], since: float | None = None) -> Results:
        """A transaction run to its end here and now: waits (sleeping) for another connection's lock up to
        PATIENCE."""
        since = since or time.monotonic()
        while True:
            try:
                return self._committed(self._statements(writes))
            except BaseException as exc:  # in the thread, a BaseException has nowhere to go but the write
                waited = time.monotonic() - since
                if not locked(exc) or waited > PATIENCE:
                    self._rollback()
                    return [(False, exc)] * len(writes)
            time.sleep(_pause(waited))

    # ---- the writer thread ----
    def _run(self) -> None:
        while (work := self._work.get()) is not None:
            work()

    def _commit_in_thread(self, writes: list[Write], results: Results) -> None:
        self._tell(writes, self._committed(results))

    def _in_thread(self, writes: list[Write]) -> None:
        self._tell(writes, self._whole(writes))

    def _tell(self, writes: list[Write], results: Results) -> None:
        try:
            self._loop.call_soon_threadsafe(self._answered, writes, results)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass
