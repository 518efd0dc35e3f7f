"""The SQLite store's group commit (store/writer.py): what waits for a sync to disk is not held back by what does not,
and every write is answered in the order the store needs."""

from __future__ import annotations

import asyncio

from agentbot.actions import Job, SetStatus
from agentbot.store import Commit, open_store


async def test_a_decision_is_written_while_the_outbox_keeps_writing_its_progress(tmp_path):
    """The outbox's progress is written without a sync, the webhook's decisions with one; a steady stream of the
    first (the relay workload: a forward finished per delivery) must not hold the second back until it stops."""
    store = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    await store.open()
    job = Job(1, 42, "r", [SetStatus("open")])
    job.id = "1"
    answered: list[str] = []

    async def outbox() -> None:
        writes = []
        for _ in range(2000):  # always some progress waiting, whenever the writer looks
            writes.append(asyncio.ensure_future(store.progress(job, 1.0)))
            await asyncio.sleep(0)
        await asyncio.gather(*writes)
        answered.append("the outbox's progress")

    async def decision() -> None:
        await asyncio.sleep(0.005)  # once the stream flows
        assert await store.commit(Commit("d:1", "1:42", jobs=[Job(1, 42, "handoff", [SetStatus("open")])]), 1.0)
        answered.append("the decision")

    await asyncio.gather(outbox(), decision())
    await store.close()
    assert answered == ["the decision", "the outbox's progress"]


async def test_echoes_are_written_before_a_later_write(tmp_path):
    """Echoes wait for the end of the loop's turn to be written together; a write queued after them (here the
    pruning, which keeps only the latest) finds them in the store."""
    store = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    await store.open()
    for message_id in range(10, 20):
        await store.echo("1:42", message_id, f"note {message_id}", 100.0)
    assert await store.echoed("1:42", "note 19", after=18)  # not written yet: found in memory
    await store.prune(100.0 + 24 * 3600)
    assert not await store.echoed("1:42", "note 11", after=None)  # pruned: it was in the store by then
    assert await store.echoed("1:42", "note 12", after=None)
    await store.close()
