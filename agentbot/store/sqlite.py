"""SQLite backend (embedded default, WAL mode, one process); `memory://` is SQLite in memory."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any, NamedTuple, TypeVar

from loguru import logger

from ..actions import Attempt, Job
from ..facts import ConversationState, Resolved, fingerprint
from .base import (
    DEDUP_TTL,
    ECHOES_KEPT,
    HORIZON,
    LANES,
    LOG_TTL,
    STATE_TTL,
    Commit,
    DecisionEntry,
    Store,
    opened_entry,
)
from .locks import KeyedLocks

SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, expires REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conversations (key TEXT PRIMARY KEY, state TEXT NOT NULL, expires REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS contacts (key TEXT PRIMARY KEY, resolved TEXT NOT NULL, expires REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lookups (key TEXT PRIMARY KEY, value TEXT, expires REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, conv TEXT NOT NULL, body TEXT NOT NULL, dead INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS jobs_conv ON jobs (conv, dead, id);
CREATE TABLE IF NOT EXISTS queues (conv TEXT PRIMARY KEY, ready_at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS queues_ready ON queues (ready_at);
CREATE INDEX IF NOT EXISTS queues_chatwoot_ready ON queues (ready_at) WHERE instr(conv, '/') = 0;
CREATE TABLE IF NOT EXISTS timers (conv TEXT PRIMARY KEY, due REAL NOT NULL, body TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS timers_due ON timers (due);
CREATE TABLE IF NOT EXISTS echoes (conv TEXT NOT NULL, id INTEGER NOT NULL, crc INTEGER NOT NULL, expires REAL NOT NULL,
  PRIMARY KEY (conv, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS decisions (account INTEGER NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL, size INTEGER NOT NULL,
  body TEXT NOT NULL, PRIMARY KEY (account, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS opens (account INTEGER NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL, size INTEGER NOT NULL,
  body TEXT NOT NULL, PRIMARY KEY (account, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
"""
# A queue's next job: the lowest `order` (Job.order; a forward's message id), then the first queued.
HEAD_FIRST = "ORDER BY coalesce(json_extract(body, '$.order'), 0), id"
_HEAD_NOT_BEFORE = (
    f"SELECT coalesce(json_extract(body, '$.not_before'), 0) FROM jobs WHERE conv=? AND dead=0 {HEAD_FIRST} LIMIT 1"
)
T = TypeVar("T")
PATIENCE = 3.0  # seconds a read or write waits for another connection's lock before it fails
BUSY_DELAYS = (0.002, 0.2)  # first and longest pause between tries while the database is locked


class Write(NamedTuple):
    apply: Callable[[], Any]
    future: asyncio.Future[Any]
    synced: bool  # wait for the sync to disk (not echoes, nor the outbox's progress and finished jobs)


def _report_lost_echo(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception():
        logger.warning(
            "could not remember the bot's own message ({}); a lost answer to it is checked in Chatwoot only",
            future.exception(),
        )


def _boot_id() -> str:
    """This machine's boot (Linux); another one after a restart means a reboot, maybe a power cut."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown"  # never equal to a stored one: every recovered step is checked


def _locked(exc: Exception) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


TRIM_EVERY = 64  # decision-log entries per account between deletions of the oldest


class SQLiteStore(Store):
    # Reads are synchronous on the event loop: a statement or two on a local file, cheaper than handing them
    # to a thread, and WAL lets them run beside a write. Writes made while the previous batch is being
    # written share one transaction (group commit), which a single writer thread carries out on its own
    # connection: its sync to disk (synchronous=FULL, so an acknowledged decision survives a power cut)
    # never stalls the event loop, and each caller resumes only after its writes are committed. Only what must
    # survive a power cut waits for the sync (a decision, a retry's attempt): the outbox's progress and the end
    # of a job are committed without it, in a batch of their own, as a run cut short before they reach the disk
    # is found at start-up and its steps are checked, not trusted (`_recovered`). SQLite
    # never waits for a lock held by another connection (busy_timeout 0): reads and writes that find the
    # database locked are tried again after a pause, for up to PATIENCE seconds. (`memory://` has one
    # connection and writes on the loop: there is no disk to wait for.) Echoes are hints: a batch of
    # nothing else is committed without a sync (synchronous=NORMAL: it survives the process, not a power cut).

    def __init__(self, path: str, runs_jobs: bool = False) -> None:
        self.path, self.runs_jobs = path, runs_jobs
        self._locks = KeyedLocks()
        self._busy: set[str] = set()  # conversations whose head job a worker is running
        self._writes: list[Write] = []
        self._writing = False  # a batch is being written
        self._locked_since: float | None = None  # the pending writes found the database locked
        self._writer: ThreadPoolExecutor | None = None
        self._synced = True  # the writer connection's synchronous setting is FULL
        # Jobs a run may have been cut short in (found at an unclean start-up), each with whether a power cut may
        # have lost progress written without a sync since.
        self._recovered: dict[int, bool] = {}

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
        db.execute("PRAGMA busy_timeout=0")
        return db

    async def open(self) -> None:
        self.db = self._connect()  # writes (in the writer thread, for a file)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        if self.runs_jobs:
            self._recover()
        self._opened_at = time.time()  # the queue's clock: wall seconds (clock.SteadyClock starts from them)
        if self.path == ":memory:":
            self.rdb = self.db
        else:
            self.rdb = self._connect()  # reads, on the event loop
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")

    def _recover(self) -> None:
        """After a stop that was not clean (SIGKILL, a crash, a power cut), any job may have been claimed by a run
        that sent a call and died before its progress was written: each such job's current step is checked, not
        trusted. After a reboot (another boot id) a power cut may also have lost progress written without a sync:
        then every step of the job is checked until one is sent. The mark of a clean stop is removed, and the
        boot recorded, before anything runs (synced)."""
        marks = dict(self.db.execute("SELECT key, value FROM meta WHERE key IN ('clean', 'boot')").fetchall())
        rebooted = marks.get("boot") != _boot_id()
        if "clean" not in marks:
            self._recovered = {row[0]: rebooted for row in self.db.execute("SELECT id FROM jobs WHERE dead=0")}
        self.db.execute("DELETE FROM meta WHERE key='clean'")
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('boot', ?)", (_boot_id(),))

    async def close(self) -> None:
        for _ in range(int(PATIENCE / 0.01)):  # let the batch being written, and what waits for it, finish
            if not (self._writing or self._writes):
                break
            await asyncio.sleep(0.01)
        if self.runs_jobs and not (self._writing or self._writes or self._recovered or self._busy):
            # Every job released (a run cut short at stop gave its job back with its attempt): the next start-up
            # trusts the stored progress. Without the mark it checks every job: safe, only slower.
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('clean', '1')")
        if self._writer:
            self._writer.shutdown(wait=True)
            self.rdb.close()
        self.db.close()

    async def _write(self, apply: Callable[[], T]) -> T:
        """Run `apply` (statements only) in the next shared write transaction; return what it returned."""
        return await self._enqueue(apply, synced=True)

    def _enqueue(self, apply: Callable[[], T], synced: bool) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._writes.append(Write(apply, future, synced))
        if len(self._writes) == 1 and not self._writing and self._locked_since is None:
            loop.call_soon(self._flush)
        return future

    async def _read(self, query: Callable[[], T]) -> T:
        started, pause = time.monotonic(), BUSY_DELAYS[0]
        while True:
            try:
                return query()
            except sqlite3.OperationalError as exc:
                if not _locked(exc) or time.monotonic() - started > PATIENCE:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, BUSY_DELAYS[1])

    def _flush(self) -> None:
        if self._writing:
            return  # the batch being written flushes again when it is done
        # Writes nobody waits a sync for (the outbox's progress, echoes) go in a transaction of their own, first:
        # they never wait behind a sync to disk. The synced ones follow in the next batch.
        writes = [w for w in self._writes if not w.synced] or self._writes
        self._writes = [w for w in self._writes if w.synced] if len(writes) < len(self._writes) else []
        if not writes:
            self._locked_since = None
            return
        applies = [w.apply for w in writes]
        synced = any(w.synced for w in writes)
        if self._writer is None:
            self._written(writes, self._batch(applies, synced))
            return
        self._writing = True
        done = asyncio.get_running_loop().run_in_executor(self._writer, self._batch, applies, synced)
        done.add_done_callback(lambda f: self._written(writes, f.result()))

    def _batch(self, applies: list[Callable[[], Any]], synced: bool) -> list[tuple[bool, Any]] | BaseException:
        """The writes' transaction (in the writer thread): (ok, value or exception) each, or the lock error."""
        if synced != self._synced:
            self.db.execute(f"PRAGMA synchronous={'FULL' if synced else 'NORMAL'}")
            self._synced = synced
        try:
            return [(True, value) for value in self._transaction(applies)]
        except Exception as exc:
            if _locked(exc):
                return exc
            # one writer's statements failed and took the shared transaction with them: give each its own
            return [self._alone(apply) for apply in applies] if len(applies) > 1 else [(False, exc)]

    def _written(self, writes: list[Write], results: list[tuple[bool, Any]] | BaseException) -> None:
        self._writing = False
        if isinstance(results, BaseException):
            if self._wait_for_lock(writes):
                return
            results = [(False, results)] * len(writes)
        self._locked_since = None
        for (_, future, _), (ok, value) in zip(writes, results, strict=True):
            if not future.done():
                future.set_result(value) if ok else future.set_exception(value)
        if self._writes:  # written while this batch was
            asyncio.get_running_loop().call_soon(self._flush)

    def _wait_for_lock(self, writes: list[Write]) -> bool:
        """Another connection holds the write lock: try the same writes again shortly, unless they have
        waited PATIENCE seconds already. Later writes join them."""
        now = time.monotonic()
        if self._locked_since is None:
            self._locked_since = now
        waited = now - self._locked_since
        if waited > PATIENCE:
            return False
        self._writes = writes + self._writes
        pause = min(BUSY_DELAYS[0] * 2 ** (waited / 0.05), BUSY_DELAYS[1])
        asyncio.get_running_loop().call_later(pause, self._flush)
        return True

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

    async def load(self, conversation_key: str, contact_key: str | None) -> tuple[ConversationState, Resolved | None]:
        try:
            state, prev = self._load(conversation_key, contact_key)
        except sqlite3.OperationalError as exc:  # rare with WAL: only while another connection recovers it
            if not _locked(exc):
                raise
            state, prev = await self._read(lambda: self._load(conversation_key, contact_key))
        return ConversationState.loads(state), Resolved.loads(prev)

    def _load(self, conversation_key: str, contact_key: str | None) -> tuple[str | None, str | None]:
        return self.rdb.execute(
            "SELECT (SELECT state FROM conversations WHERE key=?), (SELECT resolved FROM contacts WHERE key=?)",
            (conversation_key, contact_key),
        ).fetchone()

    async def echo(self, conversation_key: str, message_id: int, content: str | None, now: float) -> None:
        # One statement: the ignore path carries these; prune() keeps the latest ECHOES_KEPT per conversation.
        row = (conversation_key, message_id, fingerprint(content), now + STATE_TTL)
        apply = partial(self.db.execute, "INSERT OR REPLACE INTO echoes VALUES (?,?,?,?)", row)
        self._enqueue(apply, synced=False).add_done_callback(_report_lost_echo)  # not awaited: a hint

    async def echoed(self, conversation_key: str, content: str, after: int | None) -> bool:
        row = await self._read(
            lambda: self.rdb.execute(
                "SELECT 1 FROM echoes WHERE conv=? AND crc=? AND id>?",
                (conversation_key, fingerprint(content), after or 0),
            ).fetchone()
        )
        return row is not None

    def lock(self, conversation_key: str) -> AbstractAsyncContextManager[None]:
        return self._locks(conversation_key)

    async def commit(self, c: Commit, now: float) -> bool:
        return await self._write(lambda: self._commit(c, now))

    def _commit(self, c: Commit, now: float) -> bool:
        db = self.db
        if db.execute("INSERT OR IGNORE INTO seen VALUES (?,?)", (c.dedup_key, now + DEDUP_TTL)).rowcount == 0:
            return False
        if c.state is not None:
            db.execute(
                "INSERT OR REPLACE INTO conversations VALUES (?,?,?)",
                (c.conversation_key, c.state.dumps(), now + STATE_TTL),
            )
        for job in c.jobs:
            self._push(job, now)
        if c.cancel_timer:
            db.execute("DELETE FROM timers WHERE conv=?", (c.conversation_key,))
        if c.timer:
            db.execute(
                "INSERT OR REPLACE INTO timers VALUES (?,?,?)", (c.conversation_key, c.timer[0], c.timer[1].dumps())
            )
        if c.resolved and c.contact_key:
            db.execute(
                "INSERT OR REPLACE INTO contacts VALUES (?,?,?)", (c.contact_key, c.resolved.dumps(), now + STATE_TTL)
            )
        if c.log is not None and c.log_size > 0:
            self._log(c.log, c.log_size)
        return True

    def _log(self, entry: DecisionEntry, size: int, table: str = "decisions") -> None:
        # A sequence per account makes the bound index seeks, whatever the size. Old entries are deleted
        # every TRIM_EVERY entries (deleting one per commit dirtied one more page per transaction);
        # decisions() never returns more than `size` per account.
        account = entry.account_id
        last = self.db.execute(f"SELECT max(seq) FROM {table} WHERE account=?", (account,)).fetchone()[0]
        seq = (last or 0) + 1
        self.db.execute(f"INSERT INTO {table} VALUES (?,?,?,?,?)", (account, seq, entry.at, size, entry.dumps()))
        if seq % TRIM_EVERY == 0:
            self.db.execute(f"DELETE FROM {table} WHERE account=? AND seq<=?", (account, seq - size))

    def _log_opened(self, entry: DecisionEntry | None) -> None:
        """Log when a handoff's open landed, in a table of its own bounded to the account's DECISION_LOG_SIZE (so
        opens take no decision's place); none where the account keeps no log."""
        if entry is None:
            return
        size = self.db.execute(
            "SELECT size FROM decisions WHERE account=? ORDER BY seq DESC LIMIT 1", (entry.account_id,)
        ).fetchone()
        if size is not None:
            self._log(entry, size[0], "opens")

    def _push(self, job: Job, now: float) -> None:
        job.created_at = job.created_at or now
        self.db.execute("INSERT INTO jobs (conv, body) VALUES (?,?)", (job.queue_key, job.dumps()))
        self.db.execute("INSERT OR IGNORE INTO queues VALUES (?,?)", (job.queue_key, max(now, job.not_before)))

    async def remember(self, contact_key: str, resolved: Resolved | None, ttl: float, now: float) -> None:
        value = resolved.dumps() if resolved else None
        await self._write(
            lambda: self.db.execute("INSERT OR REPLACE INTO lookups VALUES (?,?,?)", (contact_key, value, now + ttl))
        )

    async def recall(self, contact_key: str, now: float) -> tuple[bool, Resolved | None]:
        row = await self._read(
            lambda: self.rdb.execute(
                "SELECT value FROM lookups WHERE key=? AND expires>?", (contact_key, now)
            ).fetchone()
        )
        return (True, Resolved.loads(row[0])) if row else (False, None)

    async def claim(self, now: float, lanes: frozenset[str] = LANES) -> Job | None:
        while True:
            row = await self._read(lambda: self._next(now, lanes))
            if row is None:
                return None
            conv, job_id, body = row
            if job_id is not None:
                break
            # its jobs are all done or dead
            await self._write(
                partial(
                    self.db.execute,
                    "DELETE FROM queues WHERE conv=? AND NOT EXISTS (SELECT 1 FROM jobs WHERE conv=? AND dead=0)",
                    (conv, conv),
                )
            )
        self._busy.add(conv)
        assert body is not None  # a job id comes with its body
        job = Job.loads(body)
        job.id = str(job_id)
        if job_id in self._recovered:  # its call may have landed, or still be under way when this process began
            job.attempt = Attempt(job.step, maybe=True, sent_at=self._opened_at)
            job.recovered = self._recovered.pop(job_id)
        return job

    def _next(self, now: float, lanes: frozenset[str]) -> tuple[str, int | None, str | None] | None:
        busy = tuple(self._busy)
        marks = ",".join("?" * len(busy))
        # A ready time beyond HORIZON was written before the wall clock stepped back: it is due. Chatwoot's queues
        # alone (a lane's queue is "<conversation>/<lane>") are found through their own index, however many
        # queues of the other lanes wait.
        kinds = sorted(lanes)
        of_kinds = "".join(" OR q.conv GLOB ? OR q.conv GLOB ?" for _ in kinds)  # "<conv>/forward", "<conv>/forward-*"
        return self.rdb.execute(
            "SELECT q.conv, j.id, j.body FROM queues q LEFT JOIN jobs j "
            f"ON j.id = (SELECT id FROM jobs WHERE conv=q.conv AND dead=0 {HEAD_FIRST} LIMIT 1) "
            f"WHERE (q.ready_at<=? OR q.ready_at>?) AND q.conv NOT IN ({marks}) AND (instr(q.conv, '/') = 0{of_kinds}) "
            "ORDER BY q.ready_at LIMIT 1",
            (now, now + HORIZON, *busy, *(p for k in kinds for p in (f"*/{k}", f"*/{k}-*"))),
        ).fetchone()

    async def renew(self, job: Job, now: float) -> bool:
        return True  # one process: a claim ends only with the job

    async def progress(self, job: Job, now: float) -> bool:
        body, opened = job.dumps(), opened_entry(job, now)

        def apply() -> None:
            self.db.execute("UPDATE jobs SET body=? WHERE id=?", (body, int(job.id)))
            self._log_opened(opened)

        await self._enqueue(apply, synced=False)
        return True

    async def finish(self, job: Job, now: float) -> bool:
        opened = opened_entry(job, now, finishing=True)
        return await self._release(job, now, "DELETE FROM jobs WHERE id=?", (int(job.id),), False, opened)

    async def retry(self, job: Job) -> bool:
        return await self._release(job, job.next_at, "UPDATE jobs SET body=? WHERE id=?", (job.dumps(), int(job.id)))

    async def bury(self, job: Job, now: float) -> bool:
        return await self._release(job, now, "UPDATE jobs SET body=?, dead=1 WHERE id=?", (job.dumps(), int(job.id)))

    async def _release(
        self,
        job: Job,
        ready_at: float,
        sql: str,
        args: tuple[Any, ...],
        synced: bool = True,
        opened: DecisionEntry | None = None,
    ) -> bool:
        """Apply `sql` to the job and reschedule its queue, in one transaction (with the open's log entry)."""
        conv = job.queue_key

        def apply() -> bool:
            found = self.db.execute(sql, args).rowcount > 0
            self._log_opened(opened)
            head = self.db.execute(_HEAD_NOT_BEFORE, (conv,)).fetchone()
            if head:  # the queue is ready when its next job may run
                self.db.execute("UPDATE queues SET ready_at=? WHERE conv=?", (max(ready_at, head[0]), conv))
            else:
                self.db.execute("DELETE FROM queues WHERE conv=?", (conv,))
            return found

        found = await self._enqueue(apply, synced)
        self._busy.discard(conv)  # only once released: until then no other worker may take the conversation
        return found

    async def dead_letters(self) -> list[Job]:
        rows = await self._read(
            lambda: self.rdb.execute("SELECT id, body FROM jobs WHERE dead=1 ORDER BY id").fetchall()
        )
        jobs = []
        for row_id, body in rows:
            job = Job.loads(body)
            job.id = str(row_id)
            jobs.append(job)
        return jobs

    async def requeue_dead(self, now: float) -> int:
        return await self._write(
            lambda: self._revive(self.db.execute("SELECT id, body FROM jobs WHERE dead=1").fetchall(), now)
        )

    def _revive(self, rows: list[tuple[int, str]], now: float) -> int:
        """Dead letters (id, body) back into their conversations' queues, with a fresh ACTION_MAX_AGE."""
        for row_id, body in rows:
            job = Job.loads(body)
            job.attempts, job.created_at, job.next_at, job.error = 0, now, now, None
            self.db.execute("UPDATE jobs SET body=?, dead=0 WHERE id=?", (job.dumps(), row_id))
            self.db.execute("INSERT OR REPLACE INTO queues VALUES (?,?)", (job.queue_key, now))
        return len(rows)

    async def jobs(self, conversation_key: str) -> list[Job]:
        rows = await self._read(
            lambda: self.rdb.execute(
                "SELECT body FROM jobs WHERE conv=? AND dead=0 UNION ALL SELECT body FROM timers WHERE conv=?",
                (conversation_key, conversation_key),
            ).fetchall()
        )
        return [Job.loads(body) for (body,) in rows]

    async def depth(self) -> int:
        return await self._read(lambda: self.rdb.execute("SELECT count(*) FROM jobs WHERE dead=0").fetchone()[0])

    async def decisions(self, now: float) -> list[DecisionEntry]:
        # Per account only the newest `size` decisions (the size in force at the newest), and as many opens.
        newest = (
            "SELECT d.at, d.seq, {kind} AS kind, body FROM {table} d JOIN (SELECT account, max(seq) AS top FROM {table} "
            "GROUP BY account) m USING (account) WHERE d.at>? AND d.seq > m.top - (SELECT size FROM {table} "
            "WHERE account=d.account AND seq=m.top)"
        )
        rows = self.rdb.execute(
            f"SELECT body FROM ({newest.format(kind=0, table='decisions')} UNION ALL "
            f"{newest.format(kind=1, table='opens')}) ORDER BY at DESC, kind DESC, seq DESC",
            (now - LOG_TTL, now - LOG_TTL),
        )
        return [DecisionEntry.loads(body) for (body,) in rows]

    async def requeue_one(self, job_id: str, now: float) -> bool:
        if not job_id.isdigit():
            return False

        def rows() -> list[Any]:
            return self.db.execute("SELECT id, body FROM jobs WHERE id=? AND dead=1", (int(job_id),)).fetchall()

        return await self._write(lambda: self._revive(rows(), now) == 1)

    async def fire_timers(self, now: float) -> int:
        def apply() -> int:
            due = self.db.execute("SELECT conv, body FROM timers WHERE due<=?", (now,)).fetchall()
            for conv, body in due:
                self.db.execute("DELETE FROM timers WHERE conv=?", (conv,))
                job = Job.loads(body)
                job.created_at = now
                self._push(job, now)
            return len(due)

        return await self._write(apply)

    async def prune(self, now: float) -> None:
        def apply() -> None:
            for table in ("seen", "lookups", "conversations", "contacts", "echoes"):
                self.db.execute(f"DELETE FROM {table} WHERE expires<=?", (now,))
            self.db.execute(
                "DELETE FROM echoes WHERE (conv, id) IN (SELECT conv, id FROM (SELECT conv, id, row_number() OVER "
                "(PARTITION BY conv ORDER BY id DESC) AS n FROM echoes) WHERE n > ?)",
                (ECHOES_KEPT,),
            )
            for table in ("decisions", "opens"):
                self.db.execute(f"DELETE FROM {table} WHERE at<=?", (now - LOG_TTL,))

        await self._write(apply)
