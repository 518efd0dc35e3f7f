"""Another connection holding SQLite's write lock (a backup, `python -m agentbot outbox --retry`), for the tests of
how the SQLite store waits for it."""

from __future__ import annotations

import sqlite3
import threading


def holding_write_lock(path) -> sqlite3.Connection:
    """A connection that holds the write lock now; the test rolls it back when the lock is to go, and closes it."""
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")
    return other


def hold_write_lock(path, taken: threading.Event, release: threading.Event) -> None:
    """In a thread: hold the write lock from `taken` until `release` (at most 30 s)."""
    other = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        other.execute("BEGIN IMMEDIATE")
        taken.set()
        release.wait(30)
        other.execute("COMMIT")
    finally:
        other.close()
