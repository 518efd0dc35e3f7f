"""What a handoff writes to a file SQLite store, by whether it waits for a sync to disk: the decision with its
jobs is the one synced write; the outbox's claim, progress and finish wait for none (issue 20; README's
Benchmark counts them before and after). A run cut short before they reach the disk is checked on recovery
(test_store, test_restarts)."""

from __future__ import annotations

import collections
import traceback

from agentbot.store import sqlite
from tests.conftest import returning, wait_for


async def test_a_handoff_pays_one_synced_write_for_its_decision(fake, start_bot, tmp_path, monkeypatch):
    writes: collections.Counter[tuple[str, bool]] = collections.Counter()
    enqueue = sqlite.SQLiteStore._enqueue

    def counting(self, apply, kind):
        writes[(traceback.extract_stack(limit=3)[0].name, kind.synced)] += 1
        return enqueue(self, apply, kind)

    maria, conv = returning(fake)
    bot = await start_bot(STORE_URL=f"sqlite:///{tmp_path}/s.sqlite3", HANDOFF_MESSAGE="A person will answer.")
    monkeypatch.setattr(sqlite.SQLiteStore, "_enqueue", counting)
    fake.hold_deliveries(lambda d: not (d.event == "message_created" and d.payload.get("message_type") == "incoming"))
    fake.customer_writes(maria, "Hello again")  # its handoff: open, note, message; the events it causes held
    await wait_for(lambda: fake.bot_messages(conv.display_id), 5, "the handoff")
    await wait_for(lambda: _empty(bot), 5, "the job's end")
    synced = {caller: n for (caller, is_synced), n in writes.items() if is_synced}
    assert synced == {"commit": 1}, writes


async def _empty(bot) -> bool:
    return await bot.bot.store.depth() == 0
