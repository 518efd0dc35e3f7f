"""review4: an independent review of the SQLite writer thread (hotpath) and the lanes' shares of the outbox's workers
(lanes3): the defects it found, as stories. (Its other finding, lane queues left in a `ready:lanes` set, concerned a
Redis layout that lived on main for an hour of this round and never shipped: no store has it.)"""

from __future__ import annotations

import asyncio

from agentbot.store import open_store
from tests.sqlite_locks import holding_write_lock


async def test_an_echo_on_its_way_to_the_disk_is_found(tmp_path):
    path = tmp_path / "s.sqlite3"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    backup = holding_write_lock(path)  # another connection holds SQLite's write lock
    try:
        await store.echo("1:42", 7, "Someone from the team will be with you shortly.", 100.0)
        await asyncio.sleep(0)  # the loop's turn ends: the echoes go to the writer thread, which waits for the lock
        assert await store.echoed("1:42", "Someone from the team will be with you shortly.", after=6)
    finally:
        backup.execute("ROLLBACK")
        backup.close()
        await store.close()
