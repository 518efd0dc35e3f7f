"""A store written by the bot before the period model (tests/data/store-before-periods.sqlite, made by the code
of f20d241) loads into the model: conversation states as periods and phases, jobs with their attempts, the
timer and the dead letter, and a job claimed when that bot died is checked, not trusted; its decision log takes the
open that lands (the operator page's time from message to open)."""

from __future__ import annotations

import shutil
from pathlib import Path

from agentbot.actions import AssignTeam, PrivateNote, PublicMessage, SetStatus
from agentbot.page.panels import opens
from agentbot.period import Phase
from agentbot.store import open_store
from agentbot.store.base import OPENED

OLD = Path(__file__).parent / "data" / "store-before-periods.sqlite"
NOW = 1_800_000_000.0  # when that bot wrote it


async def test_a_store_written_before_the_period_model_loads(tmp_path):
    path = tmp_path / "old.sqlite"
    shutil.copy(OLD, path)
    store = open_store(f"sqlite:///{path}", runs_jobs=True)
    await store.open()
    try:
        phases = {key: (await store.load(key, None))[0] for key in ("1:40", "1:41", "1:42", "1:43", "1:44")}
        assert {key: (s.period, s.phase, s.since) for key, s in phases.items()} == {
            "1:40": (0, Phase.HANDOFF, 3),
            "1:41": (0, Phase.DEFERRED, None),
            "1:42": (0, Phase.CLOSED, 20),
            "1:43": (0, Phase.HUMANS, 30),
            "1:44": (0, Phase.HANDOFF, None),
        }
        assert (await store.load("1:40", "1:900"))[1].display_id == 39  # the contact's resolved conversation
        job = await store.claim(NOW + 10)
        assert job is not None and job.conversation_key == "1:40"
        assert job.steps == [
            AssignTeam(2),
            SetStatus("open"),
            PrivateNote("Returning customer"),
            PublicMessage("A person will answer."),
        ]
        # Claimed when that bot died (its `unsure` mark), no clean stop since, and no boot recorded: its call is
        # waited for and checked, and so is every later step (a power cut may have lost its progress).
        assert job.attempt is not None and job.attempt.maybe and job.recovered and job.period is None
        [dead] = await store.dead_letters()
        assert (dead.display_id, dead.error, dead.attempt) == (44, 'toggle_status: 422 {"error": "fault"}', None)
        assert await store.fire_timers(NOW + 3600) == 1  # the deferred handoff's timer
        for _ in range(2):  # its team, then its open (landed): the open goes into that bot's decision log
            job.next_step()
            assert await store.progress(job, NOW + 20)
        logged = await store.decisions(NOW + 30)
        assert [(e.display_id, e.outcome, e.at) for e in logged] == [(40, OPENED, NOW + 20), (40, "handoff", NOW - 5)]
        assert [o.waited for o in opens(logged)] == [25.0]  # the operator page's time from message to open
    finally:
        await store.close()
