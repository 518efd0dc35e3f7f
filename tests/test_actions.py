"""Jobs as stored: what earlier versions wrote is read back to the same steps, with what their marks said of the
current step's attempt; what is written now reads back to the same job."""

from __future__ import annotations

import pytest

from agentbot.actions import (
    AssignAgent,
    AssignTeam,
    Attempt,
    Job,
    PrivateNote,
    PublicMessage,
    SetPriority,
    SetStatus,
)

# Job.dumps() of the version whose steps were plain dicts (every step kind), as its stores hold them.
HANDOFF = (
    '{"account_id":1,"display_id":42,"reason":"Returning customer","steps":[{"op":"team","team_id":3},'
    '{"op":"priority","priority":"high"},{"op":"assign","assignee_id":7,"fallback":"team 3"},'
    '{"op":"assign","assignee_id":null},{"op":"assign","assignee_id":5},{"op":"status","status":"open"},'
    '{"op":"note","content":"Returning customer"},{"op":"message","content":"An agent will be with you"},'
    '{"op":"status","status":"pending"}],"step":2,"context":{"remark":". Ann is offline"},"attempts":1,'
    '"created_at":100.0,"next_at":101.5,"error":"assignments: 500 boom","rule":"returning","trigger":9,"id":"j1",'
    '"decided_at":100.0,"unsure":true,"sent_at":100.5,"claim":"c1","verify":true}'
)
GREETING = (
    '{"account_id":1,"display_id":43,"reason":"greeting","steps":[{"op":"message","content":"Hi"}],"step":0,'
    '"context":{},"attempts":0,"created_at":0.0,"next_at":0.0,"error":null,"rule":"","trigger":null,"id":"",'
    '"decided_at":0.0,"unsure":false,"sent_at":0.0,"claim":"","verify":false}'
)


def test_jobs_written_by_the_previous_version_read_as_typed_steps() -> None:
    job = Job.loads(HANDOFF)
    assert job.steps == [
        AssignTeam(3),
        SetPriority("high"),
        AssignAgent(7, "team 3"),
        AssignAgent(None),
        AssignAgent(5),
        SetStatus("open"),
        PrivateNote("Returning customer"),
        PublicMessage("An agent will be with you"),
        SetStatus("pending"),
    ]
    assert (job.step, job.context, job.trigger, job.attempt, job.verify, job.period) == (
        2,
        {"remark": ". Ann is offline"},
        9,
        Attempt(2, maybe=True, sent_at=100.5),  # its `unsure` mark: the call may have landed, sent at 100.5
        True,
        None,  # written before the period model: period.period_of tells its period
    )
    assert job.describe() == (
        "conversation 1:42: assign team 3, priority high, assign agent 7, assign agent None, "
        "assign agent 5, set open, private note 'Returning customer', "
        "message 'An agent will be with you', set pending"
    )


@pytest.mark.parametrize("stored", [HANDOFF, GREETING], ids=["every-step-kind", "greeting"])
def test_jobs_are_written_back_without_the_old_marks_and_read_back_the_same(stored: str) -> None:
    job = Job.loads(stored)
    written = job.dumps()
    assert '"unsure"' not in written
    assert Job.loads(written) == job


def test_an_unknown_step_is_refused() -> None:
    with pytest.raises(Exception, match="Invalid value 'wave'"):
        Job.loads(GREETING.replace('"op":"message"', '"op":"wave"'))


def test_what_a_step_is_lives_on_the_step() -> None:
    extras = [AssignTeam(1), AssignAgent(2), SetPriority("low")]
    assert all(s.optional for s in extras)
    assert not any(s.optional for s in (SetStatus("open"), PublicMessage("hi"), PrivateNote("x")))
    assert [s.op for s in (*extras, SetStatus("open"), PrivateNote("x"), PublicMessage("y"))] == [
        "team",
        "assign",
        "priority",
        "status",
        "note",
        "message",
    ]
