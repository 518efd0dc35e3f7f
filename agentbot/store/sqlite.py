"""SQLite backend (embedded default, WAL mode, one process); `memory://` is SQLite in memory."""
from __future__ import annotations

import sqlite3

from ..actions import Job
from ..facts import ConversationState, Resolved
from .base import DEDUP_TTL, STATE_TTL, Commit, Store
from .locks import KeyedLocks

SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS conversations (key TEXT PRIMARY KEY, state TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS contacts (key TEXT PRIMARY KEY, resolved TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS lookups (key TEXT PRIMARY KEY, value TEXT, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, conv TEXT NOT NULL, body TEXT NOT NULL, dead INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS jobs_conv ON jobs (conv, dead, id);
CREATE TABLE IF NOT EXISTS queues (conv TEXT PRIMARY KEY, ready_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS queues_ready ON queues (ready_at);
CREATE TABLE IF NOT EXISTS timers (conv TEXT PRIMARY KEY, due REAL NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS timers_due ON timers (due);
"""


class SQLiteStore(Store):
    # Calls are synchronous: each is a few indexed statements on a local file (microseconds),
    # cheaper than handing them to a thread. Nothing awaits inside a transaction.

    def __init__(self, path: str) -> None:
        self.path = path
        self._locks = KeyedLocks()
        self._busy: set[str] = set()  # conversations whose head job a worker is running

    async def open(self) -> None:
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    async def close(self) -> None:
        self.db.close()

    async def load(self, conversation_key, contact_key):
        row = self.db.execute("SELECT state FROM conversations WHERE key=?", (conversation_key,)).fetchone()
        prev = None
        if contact_key:
            hit = self.db.execute("SELECT resolved FROM contacts WHERE key=?", (contact_key,)).fetchone()
            prev = Resolved.loads(hit[0]) if hit else None
        return ConversationState.loads(row[0] if row else None), prev

    def lock(self, conversation_key):
        return self._locks(conversation_key)

    async def commit(self, c: Commit, now: float) -> bool:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("INSERT OR IGNORE INTO seen VALUES (?,?)", (c.dedup_key, now + DEDUP_TTL)).rowcount == 0:
                db.execute("ROLLBACK")
                return False
            if c.state is not None:
                db.execute("INSERT OR REPLACE INTO conversations VALUES (?,?,?)", (c.conversation_key, c.state.dumps(), now + STATE_TTL))
            for job in c.jobs:
                self._push(job, now)
            if c.cancel_timer:
                db.execute("DELETE FROM timers WHERE conv=?", (c.conversation_key,))
            if c.timer:
                db.execute("INSERT OR REPLACE INTO timers VALUES (?,?,?)", (c.conversation_key, c.timer[0], c.timer[1].dumps()))
            if c.resolved and c.contact_key:
                db.execute("INSERT OR REPLACE INTO contacts VALUES (?,?,?)", (c.contact_key, c.resolved.dumps(), now + STATE_TTL))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return True

    def _push(self, job: Job, now: float) -> None:
        job.created_at = job.created_at or now
        self.db.execute("INSERT INTO jobs (conv, body) VALUES (?,?)", (job.conversation_key, job.dumps()))
        self.db.execute("INSERT OR IGNORE INTO queues VALUES (?,?)", (job.conversation_key, now))

    async def remember(self, contact_key, resolved, ttl, now):
        value = resolved.dumps() if resolved else None
        self.db.execute("INSERT OR REPLACE INTO lookups VALUES (?,?,?)", (contact_key, value, now + ttl))

    async def recall(self, contact_key, now):
        row = self.db.execute("SELECT value FROM lookups WHERE key=? AND expires>?", (contact_key, now)).fetchone()
        return (True, Resolved.loads(row[0])) if row else (False, None)

    async def claim(self, now):
        busy = tuple(self._busy)
        marks = ",".join("?" * len(busy))
        row = self.db.execute(
            f"SELECT conv FROM queues WHERE ready_at<=? AND conv NOT IN ({marks}) ORDER BY ready_at LIMIT 1",
            (now, *busy),
        ).fetchone()
        if row is None:
            return None
        head = self.db.execute("SELECT id, body FROM jobs WHERE conv=? AND dead=0 ORDER BY id LIMIT 1", row).fetchone()
        if head is None:
            self.db.execute("DELETE FROM queues WHERE conv=?", row)
            return await self.claim(now)
        self._busy.add(row[0])
        job = Job.loads(head[1])
        job.id = str(head[0])
        return job

    async def progress(self, job, now):
        self.db.execute("UPDATE jobs SET body=? WHERE id=?", (job.dumps(), int(job.id)))

    async def finish(self, job, now):
        self._release(job, now, "DELETE FROM jobs WHERE id=?", (int(job.id),))

    async def retry(self, job):
        self._release(job, job.next_at, "UPDATE jobs SET body=? WHERE id=?", (job.dumps(), int(job.id)))

    async def bury(self, job, now):
        self._release(job, now, "UPDATE jobs SET body=?, dead=1 WHERE id=?", (job.dumps(), int(job.id)))

    def _release(self, job: Job, ready_at: float, sql: str, args: tuple) -> None:
        """Apply `sql` to the job and reschedule its conversation's queue, in one transaction."""
        conv = job.conversation_key
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute(sql, args)
            if self.db.execute("SELECT 1 FROM jobs WHERE conv=? AND dead=0 LIMIT 1", (conv,)).fetchone():
                self.db.execute("UPDATE queues SET ready_at=? WHERE conv=?", (ready_at, conv))
            else:
                self.db.execute("DELETE FROM queues WHERE conv=?", (conv,))
        self._busy.discard(conv)

    async def dead_letters(self):
        rows = self.db.execute("SELECT id, body FROM jobs WHERE dead=1 ORDER BY id").fetchall()
        jobs = []
        for row_id, body in rows:
            job = Job.loads(body)
            job.id = str(row_id)
            jobs.append(job)
        return jobs

    async def requeue_dead(self, now):
        rows = self.db.execute("SELECT id, body FROM jobs WHERE dead=1").fetchall()
        for row_id, body in rows:
            job = Job.loads(body)
            job.attempts, job.created_at, job.next_at, job.error = 0, now, now, None
            self.db.execute("UPDATE jobs SET body=?, dead=0 WHERE id=?", (job.dumps(), row_id))
            self.db.execute("INSERT OR REPLACE INTO queues VALUES (?,?)", (job.conversation_key, now))
        return len(rows)

    async def depth(self):
        return self.db.execute("SELECT count(*) FROM jobs WHERE dead=0").fetchone()[0]

    async def fire_timers(self, now):
        due = self.db.execute("SELECT conv, body FROM timers WHERE due<=?", (now,)).fetchall()
        for conv, body in due:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM timers WHERE conv=?", (conv,))
            job = Job.loads(body)
            job.created_at = now
            self._push(job, now)
            self.db.execute("COMMIT")
        return len(due)

    async def prune(self, now):
        for table in ("seen", "lookups", "conversations", "contacts"):
            self.db.execute(f"DELETE FROM {table} WHERE expires<=?", (now,))
