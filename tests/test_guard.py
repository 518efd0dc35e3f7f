"""guard.py as a table: the step × what was observed × its last attempt → send, done, drop or wait; and what a
step needs observed. One named row per case, and per chaos seed that found a defect in this seam. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from agentbot import guard
from agentbot.actions import (
    AssignAgent,
    AssignTeam,
    Attempt,
    DecideAgain,
    EvolutionPause,
    EvolutionSwitch,
    Forward,
    ForwardEvent,
    Guard,
    Job,
    PrivateNote,
    PublicMessage,
    SetPriority,
    SetStatus,
    _Step,
)
from agentbot.guard import Done, Drop, Look, Seen, Send, Wait
from agentbot.period import Phase

NOW = 1_800_000_000.0
SETTLE = 20.0
OPEN, PENDING = SetStatus("open"), SetStatus("pending")
NOTE, MESSAGE = PrivateNote("Returning customer"), PublicMessage("A person will answer.")
HANDOFF = [AssignTeam(2), SetPriority("urgent"), OPEN, AssignAgent(6), NOTE, MESSAGE]  # a bot-owned one (4.16+)
AT = {step.op if step.op != "status" else "open": n for n, step in enumerate(HANDOFF)}
MAYBE = Attempt(0, maybe=True)  # its step is set per row


def job(steps: list[Any] = HANDOFF, at: str | int = 0, **more: Any) -> Job:
    """A job of period 2 decided a moment ago on message 100, at step `at` (its op, or an index)."""
    step = AT[at] if isinstance(at, str) else at
    fields: dict[str, Any] = {"decided_at": NOW - 1, "created_at": NOW - 1, "period": 2, "trigger": 100, **more}
    if isinstance(fields.get("attempt"), Attempt):
        fields["attempt"] = Attempt(step, fields["attempt"].maybe, fields["attempt"].sent_at)
    return Job(1, 42, "why", list(steps), step=step, **fields)


def seen(status: str | None = "pending", phase: Phase = Phase.HANDOFF, period: int = 2, **more: Any) -> Seen:
    return Seen(period, phase, status, **more)


@dataclass
class Row:
    job: Job
    seen: Seen
    verdict: type
    why: str = ""  # a part of the verdict's reason
    until: float | None = None  # a Wait's time
    more: dict[str, Any] = field(default_factory=dict)


def row(name: str, j: Job, s: Seen, verdict: type, why: str = "", until: float | None = None) -> Any:
    return pytest.param(Row(j, s, verdict, why, until), id=name)


ROWS = [
    # ---- the open ----
    row("open-while-pending-is-sent", job(at="open"), seen(), Send),
    row("open-an-agent-opened-first-is-dropped", job(at="open"), seen("open", Phase.HUMANS), Drop, "is open now"),
    row("open-resolved-meanwhile-is-dropped", job(at="open"), seen("resolved", Phase.CLOSED), Drop, "resolved"),
    row("open-whose-unanswered-call-landed-is-done", job(at="open", attempt=MAYBE), seen("open", fresh=True), Done),
    row(
        "open-whose-timed-out-call-may-still-be-under-way-waits",
        job(at="open", attempt=Attempt(0, True, NOW - 5)),
        seen(),
        Wait,
        "under way",
        until=NOW - 5 + SETTLE,
    ),
    row(
        "open-that-sees-an-unheard-customer-message-waits-for-its-delivery",
        job(at="open", attempt=MAYBE),
        seen(fresh=True, unheard=True),
        Wait,
        "not received",
        until=NOW + 0.5,
    ),
    row(
        "open-waits-for-an-unheard-message-only-so-long",
        job(at="open", attempt=MAYBE, context={"catch_up_until": NOW - 1}),
        seen(fresh=True, unheard=True),
        Send,
    ),
    # ---- routing: every step kind is guarded (issue 20, defect 1) ----
    row("team-while-pending-is-sent", job(at="team"), seen(), Send),
    row(
        "team-retried-after-an-agent-took-the-conversation-is-dropped",
        job(at="team", attempts=1),
        seen("open", Phase.HUMANS, fresh=True),
        Drop,
        "is open now",
    ),
    row(
        "priority-after-an-agent-opened-it-is-dropped",
        job(at="priority"),
        seen("open", Phase.HUMANS),
        Drop,
        "is open now",
    ),
    row(
        "assignee-after-the-bots-open-is-sent",
        job(at="assign"),
        seen("open", Phase.HUMANS, fresh=True),
        Send,
    ),
    row(
        "review1-assignee-retried-after-the-bots-open-is-sent-whoever-chatwoots-auto-assignment-chose",
        job(at="assign", attempts=1),
        seen("open", Phase.HUMANS, fresh=True),
        Send,
    ),
    row(
        "review1-a-recovered-team-step-finding-the-jobs-own-open-is-done",
        job(at="team", attempt=MAYBE),
        seen("open", Phase.HANDOFF, fresh=True),
        Done,
        "carried out",
    ),
    row(
        "an-agents-open-before-a-fresh-team-step-drops-it",
        job(at="team"),
        seen("open", Phase.HUMANS, fresh=True),
        Drop,
        "is open now",
    ),
    # ---- the note and the message ----
    row("note-after-the-open-is-sent", job(at="note"), seen("open", Phase.HUMANS), Send),
    row(
        "note-whose-echo-came-back-is-done",
        job(at="note", attempt=MAYBE),
        seen("open", Phase.HUMANS, posted=True),
        Done,
        "posted already",
    ),
    row(
        "note-that-may-have-landed-and-cannot-be-checked-is-not-posted-twice",
        job(at="note", attempt=MAYBE),
        seen("open", Phase.HUMANS, posted=None),
        Done,
        "cannot be checked",
    ),
    row(
        "seeds-11-and-36-a-note-of-an-earlier-period-is-dropped",
        job(at="note"),
        seen("pending", Phase.BOT, period=3),
        Drop,
        "later pending period",
    ),
    row(
        "seeds-27-and-38-a-message-finding-the-conversation-pending-again-after-its-open-is-dropped",
        job(at="message"),
        seen("pending", Phase.HUMANS, fresh=True),
        Drop,
        "is pending now",
    ),
    row(
        "a-message-whose-open-the-bots-memory-has-not-heard-of-yet-is-sent",
        job(at="message"),
        seen("pending", Phase.HANDOFF),
        Send,
    ),
    row(
        "seed-3-a-retried-message-an-earlier-handoff-posted-after-its-trigger-is-done",
        job(at="message", attempts=1),
        seen("open", Phase.HUMANS, fresh=True, posted=True),
        Done,
        "posted already",
    ),
    row(
        "seed-276-a-fresh-message-that-a-late-call-of-the-period-before-posted-in-this-one-is-done",
        job(at="message"),
        seen("open", Phase.HUMANS, fresh=True, posted=True),
        Done,
        "posted already",
    ),
    row(
        "a-message-of-a-resolved-period-is-dropped",
        job(at="message"),
        seen("resolved", Phase.CLOSED, fresh=True),
        Drop,
        "is resolved now",
    ),
    row(
        "a-note-whose-period-was-snoozed-is-dropped",
        job(at="note"),
        seen("snoozed", Phase.CLOSED),
        Drop,
        "is snoozed now",
    ),
    # ---- jobs without a status step, and the give-back ----
    row("greeting-while-pending-is-sent", job([MESSAGE]), seen(phase=Phase.BOT), Send),
    row("greeting-after-an-open-is-dropped", job([MESSAGE]), seen("open", Phase.HUMANS), Drop, "is open now"),
    row("give-back-while-open-is-sent", job([PENDING], period=3), seen("open", Phase.BOT, period=3), Send),
    row(
        "give-back-resolved-meanwhile-is-dropped",
        job([PENDING], period=3),
        seen("resolved", Phase.CLOSED, period=3),
        Drop,
        "is resolved now",
    ),
    row(
        "a-job-stored-before-the-period-model-keeps-its-period",
        job(at="open", period=None),
        seen(),
        Send,
    ),
]


@pytest.mark.parametrize("r", ROWS)
def test_verdict(r: Row) -> None:
    period = r.job.period if r.job.period is not None else r.seen.period
    v = guard.verdict(r.job, period, r.job.steps[r.job.step], r.seen, NOW, SETTLE)
    assert type(v) is r.verdict, v
    if r.why:
        assert r.why in v.why, v  # type: ignore[union-attr]
    if r.until is not None:
        assert isinstance(v, Wait) and v.until == pytest.approx(r.until)


class Follows(_Step, tag="test-period", frozen=True):
    """A step of another lane, which follows the conversation's periods, not its status (an Evolution pause)."""

    guard = Guard.PERIOD


class AfterClose(_Step, tag="test-no-later", frozen=True):
    guard = Guard.NO_LATER


class Always(_Step, tag="test-always", frozen=True):
    guard = Guard.ALWAYS


AGAIN = DecideAgain("{}", None)  # a customer's message decided again once the handoff queued when it came ended


@pytest.mark.parametrize(
    "step, s, verdict",
    [
        pytest.param(Follows(), seen("open", Phase.HUMANS), Send, id="period-step-after-the-open-is-sent"),
        pytest.param(Follows(), seen("resolved", Phase.CLOSED), Drop, id="period-step-once-resolved-is-dropped"),
        pytest.param(Follows(), seen(period=3), Drop, id="period-step-of-an-earlier-period-is-dropped"),
        pytest.param(AfterClose(), seen("resolved", Phase.CLOSED), Send, id="no-later-step-after-the-resolve-is-sent"),
        pytest.param(AfterClose(), seen(period=3), Drop, id="no-later-step-once-a-later-period-began-is-dropped"),
        pytest.param(Always(), seen(period=9), Send, id="always-step-is-sent"),
        pytest.param(AGAIN, seen(phase=Phase.HUMANS), Send, id="decide-again-in-its-period-is-carried-out"),
        pytest.param(AGAIN, seen(period=3, phase=Phase.BOT), Drop, id="decide-again-once-given-back-is-dropped"),
    ],
)
def test_verdict_of_steps_that_follow_the_periods(step: Any, s: Seen, verdict: type) -> None:
    j = job([step])
    assert type(guard.verdict(j, 2, step, s, NOW, SETTLE)) is verdict
    assert guard.needs(j, step, NOW) == set()


PAUSE = EvolutionPause("typebot", "paused", "5511912345678@s.whatsapp.net", 4, "WhatsApp")
OPENED, CLOSED = (EvolutionSwitch("typebot", s, PAUSE.remote_jid, 4) for s in ("opened", "closed"))


@pytest.mark.parametrize(
    "step, s, verdict",
    [
        pytest.param(PAUSE, seen(), Wait, id="evolution-pause-waits-for-the-handoffs-open"),
        pytest.param(PAUSE, seen("open", Phase.HUMANS), Send, id="evolution-pause-after-the-open-is-sent"),
        pytest.param(PAUSE, seen("resolved", Phase.CLOSED), Drop, id="evolution-pause-once-resolved-is-dropped"),
        pytest.param(PAUSE, seen(period=3, phase=Phase.BOT), Drop, id="evolution-pause-once-given-back-is-dropped"),
        pytest.param(OPENED, seen(phase=Phase.BOT), Send, id="evolution-opened-in-its-period-is-sent"),
        pytest.param(OPENED, seen(period=3), Drop, id="evolution-opened-once-handed-off-again-is-dropped"),
        pytest.param(CLOSED, seen("resolved", Phase.CLOSED), Send, id="evolution-closed-after-the-resolve-is-sent"),
        pytest.param(
            CLOSED, seen(period=3, phase=Phase.HANDOFF), Drop, id="evolution-closed-after-a-newer-handoff-is-dropped"
        ),
    ],
)
def test_verdict_of_evolutions_switches(step: Any, s: Seen, verdict: type) -> None:
    j = job([step], attempts=3, attempt=MAYBE)  # a retried one looks at nothing either: the bot's memory says it all
    assert type(guard.verdict(j, 2, step, s, NOW, SETTLE)) is verdict
    assert guard.needs(j, step, NOW) == set()


def test_the_second_pause_waits_for_its_time_then_follows_its_period() -> None:
    j = job([PAUSE], not_before=NOW + 10)
    assert guard.verdict(j, 2, PAUSE, seen("open", Phase.HUMANS), NOW, SETTLE) == Wait(NOW + 10, "it runs no sooner")
    assert isinstance(guard.verdict(j, 2, PAUSE, seen(period=3), NOW + 10, SETTLE), Drop)


def test_an_evolution_pause_goes_ahead_when_the_open_is_not_seen_within_open_wait() -> None:
    j = job([PAUSE], decided_at=NOW - 31)
    assert type(guard.verdict(j, 2, PAUSE, seen(), NOW, SETTLE)) is Send


def test_a_job_runs_no_sooner_than_it_may() -> None:
    j = job([Follows()], not_before=NOW + 10)
    v = guard.verdict(j, 2, j.steps[0], seen(), NOW, SETTLE)
    assert isinstance(v, Wait) and v.until == NOW + 10


C, E, M = Look.CONVERSATION, Look.ECHO, Look.MESSAGES


@pytest.mark.parametrize(
    "j, looks",
    [
        pytest.param(job(at="team"), set(), id="a-fresh-routing-step-looks-at-memory-only"),
        pytest.param(job(at="open"), set(), id="a-fresh-open-looks-at-memory-only"),
        pytest.param(job(at="team", attempts=1), {C}, id="a-retried-step-reads-the-conversation"),
        pytest.param(job(at="open", attempt=MAYBE), {C}, id="an-open-that-may-have-landed-reads-it"),
        pytest.param(job(at="note"), {E}, id="a-fresh-note-looks-for-its-echo-in-its-period"),
        pytest.param(job(at="note", attempts=1), {C, E}, id="a-retried-note-looks-for-its-echo"),
        pytest.param(job(at="note", attempt=MAYBE), {C, E, M}, id="a-note-that-may-have-landed-is-looked-for"),
        pytest.param(job(at="message"), {C, E}, id="a-message-after-the-open-reads-the-conversation-first"),
        pytest.param(job([MESSAGE]), set(), id="a-fresh-greeting-looks-at-memory-only"),
        pytest.param(job(at="open", recovered=True), {C}, id="a-recovered-step-reads-the-conversation"),
        pytest.param(job(at="note", verify=True), {C, E}, id="the-sweeps-late-facts-are-checked"),
        pytest.param(job(at="open", decided_at=NOW - 60), {C}, id="a-job-starting-long-after-its-decision"),
    ],
)
def test_what_a_step_needs_observed(j: Job, looks: set[Look]) -> None:
    assert guard.needs(j, j.steps[j.step], NOW) == looks


def test_a_run_recovered_after_a_power_cut_checks_every_step() -> None:
    j = job(at="assign", recovered=True)  # a power cut may have lost its progress: any later step may have landed
    assert guard.attempt_at(j) == Attempt(j.step, maybe=True)
    j.next_step()
    assert guard.attempt_at(j) == Attempt(j.step, maybe=True)
    assert guard.needs(j, j.steps[j.step], NOW) == {Look.CONVERSATION, Look.ECHO, Look.MESSAGES}


# ---- forwarding to the team's own bot (relay.py): a message's forward lasts its period; an event's always goes ----
MESSAGE_FORWARD = Forward(3, "message_created", "{}", "d1", NOW - 1)
EVENT_FORWARD = ForwardEvent(3, "conversation_resolved", "{}", "d2", NOW - 1)


def forward_job(step: Forward, **more: Any) -> Job:
    return job([step], lane="forward", **more)


@pytest.mark.parametrize(
    "j, s, verdict, why",
    [
        pytest.param(forward_job(MESSAGE_FORWARD), seen(phase=Phase.BOT), Send, "", id="message-forward-while-pending"),
        pytest.param(
            forward_job(MESSAGE_FORWARD),
            seen("open", Phase.HUMANS),
            Send,
            "",
            id="message-forward-queued-before-an-open",
        ),
        pytest.param(
            forward_job(MESSAGE_FORWARD),
            seen("resolved", Phase.CLOSED),
            Drop,
            "resolved or snoozed",
            id="message-forward-of-a-resolved-period-is-dropped",
        ),
        pytest.param(
            forward_job(MESSAGE_FORWARD),
            seen(phase=Phase.BOT, period=3),
            Drop,
            "later pending period",
            id="message-forward-of-an-earlier-period-is-dropped",
        ),
        pytest.param(
            forward_job(EVENT_FORWARD), seen("resolved", Phase.CLOSED), Send, "", id="the-resolve-that-ends-it-goes"
        ),
        pytest.param(
            forward_job(EVENT_FORWARD),
            seen(phase=Phase.BOT, period=5),
            Send,
            "",
            id="an-event-goes-whatever-came-since",
        ),
        pytest.param(
            forward_job(MESSAGE_FORWARD, not_before=NOW + 0.5),
            seen(phase=Phase.BOT),
            Wait,
            "no sooner",
            id="a-forward-is-held-for-an-earlier-message-to-overtake-it",
        ),
        pytest.param(
            forward_job(MESSAGE_FORWARD, attempts=2, attempt=Attempt(0)),
            seen(phase=Phase.BOT),
            Send,
            "",
            id="a-retried-forward-is-sent-again-the-team-bot-drops-a-repeat-by-its-delivery-id",
        ),
    ],
)
def test_verdict_of_forwards(j: Job, s: Seen, verdict: type, why: str) -> None:
    v = guard.verdict(j, 2, j.steps[0], s, NOW, SETTLE)
    assert type(v) is verdict, v
    assert why in getattr(v, "why", "")
    assert guard.needs(j, j.steps[0], NOW) == set()  # the bot's memory is all a forward follows


@pytest.mark.parametrize(
    "j, period, first_message, after",
    [
        pytest.param(job(trigger=100), 2, 90, 90, id="in-its-period-from-the-message-the-period-began-with"),
        pytest.param(job(trigger=100), 2, None, 100, id="a-period-begun-without-a-message-from-the-trigger"),
        pytest.param(job(trigger=100), 3, 120, 100, id="a-later-periods-beginning-is-not-the-jobs"),
        pytest.param(job(trigger=None), 2, 90, 90, id="a-job-without-a-trigger-from-the-periods-first"),
        pytest.param(job(trigger=80), 2, 90, 80, id="a-trigger-before-the-periods-first-message-from-the-trigger"),
        pytest.param(
            job([MESSAGE, SetStatus("resolved")], trigger=100), 2, 90, 100, id="an-expirys-notice-from-its-trigger"
        ),
    ],
)
def test_where_a_note_or_message_counts_as_posted(j: Job, period: int, first_message: int | None, after: int) -> None:
    assert guard.posts_after(j, period, first_message) == after
