"""SQLite backend (embedded default, WAL mode, one process); `memory://` is SQLite in memory."""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from functools import cache, partial
from typing import Any, TypeVar

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
from .writer import BUSY_DELAYS, PATIENCE, Kind, Writer, locked

SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, expires REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conversations (key TEXT PRIMARY KEY, state TEXT NOT NULL, expires REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS contacts (key TEXT PRIMARY KEY, resolved TEXT NOT NULL, expires REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lookups (key TEXT PRIMARY KEY, value TEXT, expires REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, conv TEXT NOT NULL, body TEXT NOT NULL, dead INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS jobs_conv ON jobs (conv, dead, id);
CREATE TABLE IF NOT EXISTS queues (conv TEXT PRIMARY KEY, ready_at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS queues_ready ON queues (ready_at);
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
# Which queues are of Chatwoot ("") or of a lane kind ("<conversation>/<kind>" or "<conversation>/<kind>-…"). Each has
# an index of its own, so a claim leaving some kinds out walks only the others' due queues, however many wait.
_OF_KIND = {"": "instr(conv, '/') = 0", **{k: f"(conv GLOB '*/{k}' OR conv GLOB '*/{k}-*')" for k in sorted(LANES)}}
SCHEMA += "".join(
    f"CREATE INDEX IF NOT EXISTS queues_{kind or 'chatwoot'}_ready ON queues (ready_at) WHERE {where};\n"
    for kind, where in _OF_KIND.items()
)


@cache
def _walk(due: str, lanes: frozenset[str]) -> str:
    """The query of the due queues, earliest first: every queue's, or those of Chatwoot and of the lane kinds in
    `lanes`, each kind's walked in its own index and merged (a kind left out costs nothing, however many of its
    queues are due: one query matching the kinds walked them all, 649 µs a claim with 3,000 forwards due)."""
    if lanes >= LANES:
        return f"SELECT conv, ready_at FROM queues WHERE {due} ORDER BY ready_at"
    parts = [f"SELECT conv, ready_at FROM queues WHERE {due} AND {_OF_KIND[k]}" for k in ("", *sorted(lanes & LANES))]
    return " UNION ALL ".join(parts) + " ORDER BY ready_at"


def _waits(ready_at: float, now: float) -> bool:
    """Whether a queue ready at `ready_at` is not due yet (one beyond HORIZON was written before the wall clock
    stepped back: it is due)."""
    return now < ready_at <= now + HORIZON


# A queue's next job: the lowest `order` (Job.order; a forward's message id), then the first queued.
HEAD_FIRST = "ORDER BY coalesce(json_extract(body, '$.order'), 0), id"
_HEAD_NOT_BEFORE = (
    f"SELECT coalesce(json_extract(body, '$.not_before'), 0) FROM jobs WHERE conv=? AND dead=0 {HEAD_FIRST} LIMIT 1"
)
T = TypeVar("T")


def _boot_id() -> str:
    """This machine's boot (Linux); another one after a restart means a reboot, maybe a power cut."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown"  # never equal to a stored one: every recovered step is checked


TRIM_EVERY = 64  # decision-log entries per account between deletions of the oldest
RECENT_ECHOES = 1024  # the bot's latest echoes also kept in memory (echoed)
RECHECK = 0.1  # seconds a claim that found nothing due trusts it (other processes' jobs: found after this)


_TIMER_DUE = "SELECT 1 FROM timers WHERE due<=? LIMIT 1"


class SQLiteStore(Store):
    # Reads are synchronous on the event loop: a statement or two on a local file, cheaper than handing them
    # to a thread, and WAL lets them run beside a write. Writes made while the previous transaction commits
    # share the next one (group commit), on a connection of their own (writer.py): its statements run on the loop,
    # its COMMIT and sync to disk (synchronous=FULL, so an acknowledged decision survives a power cut) in a
    # writer thread, which never stalls the event loop; each caller resumes only after its writes are committed.
    # Only what must survive a power cut waits for the sync (a decision, a retry's attempt): the outbox's progress
    # and the end of a job need none (synced when a decision shares their transaction: while decisions come, they
    # wait up to writer.LAZY for one), as a run cut short before they reach the disk is found at start-up and its
    # steps are checked, not trusted (`_recovered`).
    # SQLite never waits for a lock held by another connection (busy_timeout 0): reads and writes that find the
    # database locked are tried again after a pause, for up to PATIENCE seconds. (`memory://` has one
    # connection and commits on the loop too: there is no disk to wait for.) Echoes are hints: those of one turn
    # of the event loop are written together, without a sync (synchronous=NORMAL: it survives the process, not a
    # power cut).

    local_locks = True

    def __init__(self, path: str, runs_jobs: bool = False) -> None:
        self.path, self.runs_jobs = path, runs_jobs
        self._locks = KeyedLocks()
        self._busy: set[str] = set()  # conversations whose head job a worker is running
        # No queue is free and due before this (the outbox's clock), as far as this process knows: a claim learns it
        # from the walk, and each write that queues or frees a job moves it back. Other processes' writes (the
        # commands beside the server) are seen at the next claim after RECHECK.
        self._quiet_until = -math.inf
        self._echoes: list[tuple[str, int, int, float]] = []  # the bot's echoes of this turn of the loop
        # The latest echoes, written or not: one handed to the writer is not in the database until its turn
        # comes (another connection may hold the write lock for PATIENCE, or take the echo with it).
        self._recent: deque[tuple[str, int, int, float]] = deque(maxlen=RECENT_ECHOES)
        self._echoes_made = 0  # every echo appended to _recent so far
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
        memory = self.path == ":memory:"
        self.rdb = self.db if memory else self._connect()  # reads, on the event loop
        self._writer = Writer(self.db, threaded=not memory)
        self._writer.start(asyncio.get_running_loop())

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
        self._write_echoes()
        for _ in range(int(PATIENCE / 0.01)):  # let the batch being written, and what waits for it, finish
            if not self._writer.pending:
                break
            await asyncio.sleep(0.01)
        clean = not (self._writer.pending or self._recovered or self._busy)
        self._writer.stop()
        if self.runs_jobs and clean:
            # Every job released (a run cut short at stop gave its job back with its attempt): the next start-up
            # trusts the stored progress. Without the mark it checks every job: safe, only slower.
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('clean', '1')")
        if self.rdb is not self.db:
            self.rdb.close()
        self.db.close()

    async def _write(self, apply: Callable[[], T], kind: Kind = Kind.SYNCED) -> T:
        """Run `apply` (statements only) in the next shared write transaction, synced; return what it returned.
        Kind.BULK: it touches as many rows as there are, so it runs in the writer thread, not on the loop."""
        return await self._enqueue(apply, kind)

    def _enqueue(self, apply: Callable[[], T], kind: Kind) -> asyncio.Future[T]:
        if self._echoes:  # written first: a write after them (prune, say) finds them in the store
            self._write_echoes()
        return self._writer.put(apply, kind)

    async def _read(self, query: Callable[[], T]) -> T:
        started, pause = time.monotonic(), BUSY_DELAYS[0]
        while True:
            try:
                return query()
            except sqlite3.OperationalError as exc:
                if not locked(exc) or time.monotonic() - started > PATIENCE:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, BUSY_DELAYS[1])

    async def load(self, conversation_key: str, contact_key: str | None) -> tuple[ConversationState, Resolved | None]:
        try:
            state, prev = self._load(conversation_key, contact_key)
        except sqlite3.OperationalError as exc:  # rare with WAL: only while another connection recovers it
            if not locked(exc):
                raise
            state, prev = await self._read(lambda: self._load(conversation_key, contact_key))
        return ConversationState.loads(state), Resolved.loads(prev)

    def _load(self, conversation_key: str, contact_key: str | None) -> tuple[str | None, str | None]:
        return self.rdb.execute(
            "SELECT (SELECT state FROM conversations WHERE key=?), (SELECT resolved FROM contacts WHERE key=?)",
            (conversation_key, contact_key),
        ).fetchone()

    async def echo(self, conversation_key: str, message_id: int, content: str | None, now: float) -> None:
        # The ignore path carries these: written together (prune() keeps the latest ECHOES_KEPT per conversation).
        row = (conversation_key, message_id, fingerprint(content), now + STATE_TTL)
        self._echoes.append(row)
        self._recent.append(row)
        self._echoes_made += 1
        if len(self._echoes) == 1:
            asyncio.get_running_loop().call_soon(self._write_echoes)

    def _write_echoes(self) -> None:
        rows, self._echoes = self._echoes, []
        if rows:
            apply = partial(self.db.executemany, "INSERT OR REPLACE INTO echoes VALUES (?,?,?,?)", rows)
            self._writer.hint(apply, partial(self._echoes_lost, rows))

    def _echoes_lost(self, rows: list[tuple[str, int, int, float]], failed: BaseException) -> None:
        """Echoes whose write failed stay in memory as if made now (a pruning that lands meanwhile keeps them); one
        that waited for another connection's lock past PATIENCE is written again."""
        logger.warning("could not remember the bot's own messages ({}); kept in memory", failed)
        self._recent.extend(rows)
        self._echoes_made += len(rows)
        if locked(failed):
            self._echoes.extend(rows)
            asyncio.get_running_loop().call_soon(self._write_echoes)

    async def echoed(self, conversation_key: str, content: str, after: int | None) -> bool:
        crc = fingerprint(content)
        if any(row[0] == conversation_key and row[2] == crc and row[1] > (after or 0) for row in self._recent):
            return True  # this process's own, written or not
        row = await self._read(
            lambda: self.rdb.execute(
                "SELECT 1 FROM echoes WHERE conv=? AND crc=? AND id>?",
                (conversation_key, crc, after or 0),
            ).fetchone()
        )
        return row is not None

    def lock(self, conversation_key: str) -> AbstractAsyncContextManager[None]:
        return self._locks(conversation_key)

    async def commit(self, c: Commit, now: float) -> bool:
        written = await self._write(lambda: self._commit(c, now))
        if written:
            for job in c.jobs:
                self._stir(max(now, job.not_before))
        return written

    def _stir(self, ready_at: float) -> None:
        """A written queue may be claimed from `ready_at` on."""
        self._quiet_until = min(self._quiet_until, ready_at)

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
        if now < self._quiet_until:
            return None  # nothing was queued or freed since a claim found the next free queue due later
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
        # Queues in the order they come due (_walk), busy ones skipped here: passed as an IN list they cost an
        # ephemeral table on every claim, with dozens of busy queues at the index's front under load. A ready time
        # beyond HORIZON was written before the wall clock stepped back: it is due. A walk of every kind goes on to
        # the next free queue: until it is due, and nothing is queued or freed, a claim need not look (_quiet_until).
        every = lanes >= LANES
        soonest = now + RECHECK
        for due, bound in (("1" if every else "ready_at<=:bound", now), ("ready_at>:bound", now + HORIZON)):
            with contextlib.closing(self.rdb.execute(_walk(due, lanes), {"bound": bound})) as rows:
                for conv, ready_at in rows:  # closed even if the head's read fails: an open statement pins the snapshot
                    if conv in self._busy:
                        continue
                    if _waits(ready_at, now):  # the first free queue (a walk of every kind) is not due
                        soonest = min(soonest, ready_at)
                        break
                    head = self.rdb.execute(
                        f"SELECT id, body FROM jobs WHERE conv=? AND dead=0 {HEAD_FIRST} LIMIT 1", (conv,)
                    ).fetchone()
                    if every:
                        self._quiet_until = min(soonest, self._next_free(rows, conv, now))
                    return (conv, *(head or (None, None)))
        if every:
            self._quiet_until = soonest
        return None

    def _next_free(self, rows: Iterable[tuple[str, float]], taken: str, now: float) -> float:
        """When the walk's next free queue (after `taken`) is due; now when a queue beyond HORIZON waits (due)."""
        for conv, ready_at in rows:
            if conv != taken and conv not in self._busy:
                if not _waits(ready_at, now):
                    return now
                beyond = self.rdb.execute("SELECT 1 FROM queues WHERE ready_at>? LIMIT 1", (now + HORIZON,))
                return now if beyond.fetchone() else min(ready_at, now + RECHECK)
        return now + RECHECK

    async def renew(self, job: Job, now: float) -> bool:
        return True  # one process: a claim ends only with the job

    async def progress(self, job: Job, now: float) -> bool:
        body, opened = job.dumps(), opened_entry(job, now)

        def apply() -> None:
            self.db.execute("UPDATE jobs SET body=? WHERE id=?", (body, int(job.id)))
            self._log_opened(opened)

        await self._enqueue(apply, Kind.UNSYNCED)
        return True

    async def finish(self, job: Job, now: float) -> bool:
        opened = opened_entry(job, now, finishing=True)
        return await self._release(job, now, "DELETE FROM jobs WHERE id=?", (int(job.id),), Kind.UNSYNCED, opened)

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
        kind: Kind = Kind.SYNCED,
        opened: DecisionEntry | None = None,
    ) -> bool:
        """Apply `sql` to the job and reschedule its queue, in one transaction (with the open's log entry)."""
        conv = job.queue_key

        def apply() -> tuple[bool, float | None]:
            found = self.db.execute(sql, args).rowcount > 0
            self._log_opened(opened)
            head = self.db.execute(_HEAD_NOT_BEFORE, (conv,)).fetchone()
            if head:  # the queue is ready when its next job may run
                next_at = max(ready_at, head[0])
                self.db.execute("UPDATE queues SET ready_at=? WHERE conv=?", (next_at, conv))
                return found, next_at
            self.db.execute("DELETE FROM queues WHERE conv=?", (conv,))
            return found, None

        found, next_at = await self._enqueue(apply, kind)
        self._busy.discard(conv)  # only once released: until then no other worker may take the conversation
        if next_at is not None:
            self._stir(next_at)
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
        revived = await self._write(
            lambda: self._revive(self.db.execute("SELECT id, body FROM jobs WHERE dead=1").fetchall(), now), Kind.BULK
        )
        if revived:
            self._stir(now)
        return revived

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

        revived = await self._write(lambda: self._revive(rows(), now) == 1)
        if revived:
            self._stir(now)
        return revived

    async def fire_timers(self, now: float) -> int:
        # Asked every TICK: a look first, so an idle tick takes no write lock (another connection may hold it).
        if not await self._read(lambda: self.rdb.execute(_TIMER_DUE, (now,)).fetchone()):
            return 0

        def apply() -> int:
            due = self.db.execute("SELECT conv, body FROM timers WHERE due<=?", (now,)).fetchall()
            for conv, body in due:
                self.db.execute("DELETE FROM timers WHERE conv=?", (conv,))
                job = Job.loads(body)
                job.created_at = now
                self._push(job, now)
            return len(due)

        fired = await self._write(apply, Kind.BULK)
        if fired:
            self._stir(now)
        return fired

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

        made = self._echoes_made
        await self._write(apply, Kind.BULK)
        # Those made before the pruning were written before it (one queue, in order): the store answers for them now;
        # those made since wait behind it (_recent is bounded: they may have pushed older ones out).
        while len(self._recent) > self._echoes_made - made:
            self._recent.popleft()
