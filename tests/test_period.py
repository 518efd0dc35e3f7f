"""period.py as a table: the conversation's phase × the event → its next period, phase and what else happens.

One named row per transition of docs/lifecycle.md, per out-of-order or duplicate delivery, and per chaos seed
that ever found a defect in this seam. Pure: no server, no store, well under a second."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pytest
from msgspec.structs import replace

from agentbot.facts import ConversationState
from agentbot.period import (
    CustomerWrote,
    Effect,
    Event,
    GivenBack,
    HandoffDecided,
    PendingAgain,
    Phase,
    StatusShown,
    on_event,
    period_of,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
T = 1_800_000_000.0  # the conversation's updated_at when the state was written
BOT, DEFERRED, HANDOFF, HUMANS, CLOSED = Phase.BOT, Phase.DEFERRED, Phase.HANDOFF, Phase.HUMANS, Phase.CLOSED
CANCEL, RESOLVED = Effect.CANCEL_TIMER, Effect.REMEMBER_RESOLVED


def state(phase: Phase = BOT, period: int = 2, **more: Any) -> ConversationState:
    """The conversation in `phase` of its period 2, last written at T with message 100 the latest."""
    fields: dict[str, Any] = {"status": "pending", "updated": T, "latest_message": 100, **more}
    return ConversationState(period=period, phase=phase, **fields)


def shown(status: str, updated: float = T + 1, last: int | None = 101) -> StatusShown:
    return StatusShown(f"conversation_{status}", status, updated, last)


def wrote(message_id: int = 101, queued: bool = False) -> CustomerWrote:
    return CustomerWrote(message_id, "pending", T + 1, queued=queued)


@dataclass
class Row:
    before: ConversationState
    event: Event
    period: int  # after
    phase: Phase  # after
    effects: frozenset[Effect] = frozenset()
    ignored: str | None = None  # a part of why nothing changes
    decide: bool = False  # the rules decide on the message
    since: int | None | str = "same"  # messages up to this id belong to earlier periods ("same": unchanged)
    more: dict[str, Any] = field(default_factory=dict)  # other fields of the state after


def row(name: str, before: ConversationState, event: Event, period: int, phase: Phase, **more: Any) -> Any:
    return pytest.param(Row(before, event, period, phase, **more), id=name)


ROWS = [
    # ---- a customer message ----
    row(
        "bot-message-is-decided-and-the-periods-first-is-remembered",
        state(BOT),
        wrote(),
        2,
        BOT,
        decide=True,
        more={"first_message": 101},
    ),
    row(
        "bot-message-written-before-the-first-heard-becomes-the-periods-first",  # delivered out of order (a review)
        state(BOT, since=90, first_message=105),
        wrote(103),
        2,
        BOT,
        decide=True,
        more={"first_message": 103},
    ),
    row(
        "bot-message-after-the-periods-first-keeps-it",
        state(BOT, first_message=90),
        wrote(),
        2,
        BOT,
        decide=True,
        more={"first_message": 90},
    ),
    row(
        "message-after-a-resolve-begins-the-next-period-with-it",
        state(CLOSED, since=90, first_message=80),
        wrote(),
        3,
        BOT,
        decide=True,
        more={"first_message": 101},
    ),
    row(
        "message-after-an-open-begins-the-next-period-with-it",
        state(HUMANS, since=90),
        wrote(),
        3,
        BOT,
        decide=True,
        more={"first_message": 101},
    ),
    row(
        "message-written-before-the-period-began-is-late",
        state(BOT, since=101),
        wrote(101),
        2,
        BOT,
        ignored="late delivery",
    ),
    row(
        "message-written-before-a-resolve-delivered-after-it-is-late",
        state(CLOSED, since=120),
        wrote(110),
        2,
        CLOSED,
        ignored="late delivery",
    ),
    row(
        "message-in-a-handed-off-period-is-heard-while-its-handoff-is-queued",
        state(HANDOFF),
        wrote(queued=True),
        2,
        HANDOFF,
        ignored="handoff already decided",
        more={"latest_message": 101},
    ),
    row(
        "message-in-a-handed-off-period-is-not-remembered-once-its-handoff-ended",
        state(HANDOFF),
        wrote(queued=False),
        2,
        HANDOFF,
        ignored="handoff already decided",
        more={"latest_message": 100},
    ),
    row("message-while-deferred-is-heard", state(DEFERRED, timer_due=T + 600), wrote(), 2, DEFERRED, ignored="handoff"),
    row(
        "seeds-10-and-41-the-same-message-delivered-again-by-the-peer-of-a-killed-instance-is-heard-once",
        state(HANDOFF, latest_message=101),
        wrote(101, queued=True),
        2,
        HANDOFF,
        ignored="handoff already decided",
    ),
    # ---- Chatwoot shows the conversation's status after a save ----
    row(
        "resolve-closes-the-period-and-remembers-the-contact",
        state(HANDOFF),
        shown("resolved"),
        2,
        CLOSED,
        effects=frozenset({CANCEL, RESOLVED}),
        since=101,
        more={"resolved_on": "2026-11-25", "status": "resolved"},
    ),
    row(
        "resolve-of-a-conversation-the-bot-never-saw-pending-is-remembered",
        ConversationState(),
        shown("resolved", updated=T, last=50),
        0,
        CLOSED,
        effects=frozenset({CANCEL, RESOLVED}),
        since=50,
    ),
    row(
        "open-in-a-period-hands-it-to-humans",
        state(HANDOFF),
        shown("open"),
        2,
        HUMANS,
        effects=frozenset({CANCEL}),
        since=101,
    ),
    row(
        "snooze-in-a-period-closes-it",
        state(BOT, incoming=1),
        shown("snoozed"),
        2,
        CLOSED,
        effects=frozenset({CANCEL}),
        since=101,
        more={"incoming": 0},
    ),
    row("open-outside-a-period-needs-nothing", state(HUMANS), shown("open"), 2, HUMANS, ignored="needs nothing"),
    row(
        "an-event-of-an-earlier-save-is-stale",
        state(HANDOFF),
        shown("resolved", updated=T - 1),
        2,
        HANDOFF,
        ignored="older than what the bot already acted on",
    ),
    row(
        "an-event-older-than-the-latest-message-is-stale",
        state(BOT, incoming=1),
        shown("open", last=99),
        2,
        BOT,
        ignored="older than what the bot already acted on",
    ),
    row(
        "seed-60-the-open-of-a-handoff-delivered-after-a-later-message-is-stale-not-the-end-of-the-next-period",
        state(BOT, period=3, incoming=1, latest_message=120),
        shown("open", updated=T - 5, last=101),
        3,
        BOT,
        ignored="older than what the bot already acted on",
    ),
    # ---- the bot's and the agents' own moves ----
    row("handoff-decided", state(BOT, incoming=1), HandoffDecided(), 2, HANDOFF),
    row(
        "handoff-deferred-to-the-opening-time",
        state(BOT),
        HandoffDecided(due=T + 3600),
        2,
        DEFERRED,
        more={"timer_due": T + 3600},
    ),
    row(
        "operator-brings-a-deferred-handoff-forward",
        state(DEFERRED, timer_due=T + 3600),
        HandoffDecided(),
        2,
        HANDOFF,
        effects=frozenset({CANCEL}),
        more={"timer_due": None},
    ),
    row(
        "give-back-begins-the-next-period-with-no-customer-message",
        state(HUMANS, since=90, first_message=80),
        GivenBack(),
        3,
        BOT,
        effects=frozenset({CANCEL}),
        more={"given_back": True, "first_message": None},
    ),
    row(
        "seeds-11-and-36-pending-again-after-an-unseen-resolve-begins-the-next-period",
        state(HANDOFF, incoming=2),
        PendingAgain(100),
        3,
        BOT,
        since=100,
        more={"incoming": 0},
    ),
    row(
        "the-sweep-finds-a-dead-letters-period-pending-again",
        state(HANDOFF, since=80),
        PendingAgain(99),
        3,
        BOT,
        since=99,
    ),
]


@pytest.mark.parametrize("r", ROWS)
def test_transition(r: Row) -> None:
    t = on_event(r.before, r.event, NOW)
    assert (t.state.period, t.state.phase) == (r.period, r.phase)
    assert t.effects == r.effects
    assert t.decide == r.decide
    if r.ignored:
        assert t.ignored and r.ignored in t.ignored
        assert {**r.more} == {k: getattr(t.state, k) for k in r.more}
        return
    assert t.ignored is None, t.ignored
    assert t.state.since == (r.before.since if r.since == "same" else r.since)
    for name, value in r.more.items():
        assert getattr(t.state, name) == value, name


@pytest.mark.parametrize(
    "job_period, trigger, before, want",
    [
        pytest.param(1, 50, state(BOT), 1, id="a-job-carries-its-period"),
        pytest.param(None, 101, state(BOT, since=100), 2, id="an-old-job-after-the-period-began-is-this-periods"),
        pytest.param(None, 90, state(BOT, since=100), 1, id="an-old-job-before-the-period-began-is-an-earlier-ones"),
        pytest.param(None, 90, state(HUMANS, since=100), 2, id="an-old-job-of-the-period-that-just-left-pending"),
    ],
)
def test_the_period_of_a_job(job_period: int | None, trigger: int, before: ConversationState, want: int) -> None:
    assert period_of(job_period, trigger, before) == want


def test_a_state_written_before_the_period_model_loads_as_a_phase() -> None:
    old = (
        '{"resolved_on":null,"handed_off":true,"greeted":false,"incoming":1,"timer_due":null,"away_period":null,'
        '"left_pending_after":3,"closed_after":3,"given_back":false,"status":"pending","updated":1.0,'
        '"latest_message":7,"human_owned":false}'
    )
    loaded = ConversationState.loads(old)
    assert (loaded.period, loaded.phase, loaded.since, loaded.incoming) == (0, HANDOFF, 3, 1)
    assert "handed_off" not in loaded.dumps() and ConversationState.loads(loaded.dumps()) == loaded
    assert replace(loaded, phase=DEFERRED).handed_off
