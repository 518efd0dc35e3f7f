"""A conversation's life as the bot sees it: numbered pending periods, each in one phase, moved by events.

Pure: no I/O, the clock passed in. `on_event(state, event, now)` is the whole state machine; decide.py applies
the rules inside a period and the outbox asks `guard.py` whether a job of some period still applies. The
machine is drawn in docs/lifecycle.md: a change to the transitions here changes that diagram too (as
python/bedevere's stage.py and its README).

A period is one stretch of the conversation in `pending`. It starts with the first customer message the bot
hears after the conversation was open, resolved or snoozed (or with a give-back, or when Chatwoot shows a
handed-off conversation pending again), and ends when the bot sees it leave pending. Jobs carry the number of
the period they were decided in, so "this job is moot" is one comparison (`guard.py`). Chatwoot delivers in no
set order: an event about an earlier save is `Stale`, and a message written before the period began (its id at
most `since`) belongs to an earlier one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from msgspec.structs import replace

if TYPE_CHECKING:
    from .facts import ConversationState


class Phase(StrEnum):
    BOT = "bot"  # pending, the bot's: the rules decide on each customer message
    DEFERRED = "deferred"  # a handoff is decided for the next opening time (the conversation's timer holds it)
    HANDOFF = "handoff"  # a handoff is decided and queued: its job opens the conversation
    HUMANS = "humans"  # the bot saw the conversation leave pending for open (its handoff's open, or an agent's)
    CLOSED = "closed"  # the bot saw it resolved or snoozed: the period is over


HANDED_OFF = (Phase.DEFERRED, Phase.HANDOFF)  # a handoff is decided in this period
LEFT = (Phase.HUMANS, Phase.CLOSED)  # the bot saw the conversation leave pending


# ---- events ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StatusShown:
    """A conversation event (`event`, e.g. conversation_resolved): Chatwoot's status after a save."""

    event: str
    status: str
    updated: float
    last_message_id: int | None
    bot_owned: bool | None = None


@dataclass(frozen=True, slots=True)
class CustomerWrote:
    """A message in the pending conversation from the customer (or a person answering, before a handoff), as its
    delivery showed the conversation; `queued` says whether a handoff decided earlier is still queued to open it."""

    message_id: int
    status: str
    updated: float
    bot_owned: bool | None = None
    queued: bool = False


@dataclass(frozen=True, slots=True)
class GivenBack:
    """An agent gave the conversation back to the bot (BOT_COMMAND, or bot assignment on Chatwoot 4.16+)."""


@dataclass(frozen=True, slots=True)
class HandoffDecided:
    """The rules (or the operator, the sweep) decided a handoff; `due` when it waits for the opening time."""

    due: float | None = None


@dataclass(frozen=True, slots=True)
class PendingAgain:
    """A read or the sweep shows a conversation pending whose period the bot thought handed off or over, and
    nothing queued will open it (the open was undone, or became a dead letter): a new period. Messages up to
    `latest` belong to the earlier ones."""

    latest: int | None


Event = StatusShown | CustomerWrote | GivenBack | HandoffDecided | PendingAgain


# ---- what a transition asks for besides the new state -----------------------------------------
class Effect(StrEnum):
    CANCEL_TIMER = "cancel timer"  # the conversation's timer (a deferred handoff, HANDOFF_AFTER_SECONDS) is moot
    REMEMBER_RESOLVED = "remember resolved"  # the contact's resolved conversation: their next one is returning


@dataclass(frozen=True, slots=True)
class Transition:
    state: ConversationState
    effects: frozenset[Effect] = frozenset()
    ignored: str | None = None  # why the event changes nothing (older than what the bot knows, or needs nothing)
    decide: bool = False  # a customer message the rules decide on (phase BOT after the transition)


def on_event(state: ConversationState, event: Event, now: datetime) -> Transition:
    """The state machine: the conversation's next state for `event`, and what else it asks for."""
    match event:
        case StatusShown():
            return _status_shown(state, event, now)
        case CustomerWrote():
            return _customer_wrote(state, event)
        case GivenBack():
            return Transition(_next_period(state, given_back=True), frozenset({Effect.CANCEL_TIMER}))
        case HandoffDecided(due):
            phase = Phase.DEFERRED if due is not None else Phase.HANDOFF
            return Transition(replace(state, phase=phase, timer_due=due), _cancel_if(state.timer_due and due is None))
        case PendingAgain(latest):
            return Transition(_next_period(state, since=_max(state.since, latest)))


def _status_shown(state: ConversationState, e: StatusShown, now: datetime) -> Transition:
    if state.is_older(e.updated, e.last_message_id):
        return Transition(state, ignored=f"{e.event} is older than what the bot already acted on")
    seen = state.saw(e.status, e.updated, e.last_message_id, e.bot_owned)
    since = _max(e.last_message_id, state.since)
    if e.status == "resolved":
        closed = _left(seen, Phase.CLOSED, since, resolved_on=now.date().isoformat())
        return Transition(closed, frozenset({Effect.CANCEL_TIMER, Effect.REMEMBER_RESOLVED}))
    if e.status in ("open", "snoozed") and state.in_period:
        phase = Phase.CLOSED if e.status == "snoozed" else Phase.HUMANS
        return Transition(_left(seen, phase, since), frozenset({Effect.CANCEL_TIMER}))
    return Transition(state, ignored=f"{e.event} with status {e.status} needs nothing")


def _customer_wrote(state: ConversationState, e: CustomerWrote) -> Transition:
    if state.phase in HANDED_OFF:
        # Remembered as seen only while the handoff is queued: that handoff, unsure whether its open landed,
        # waits for the messages Chatwoot shows it has not received (guard: Seen.unheard), and the events of an
        # earlier save delivered after it are stale then. Once it is done or dead, late events still end the
        # period (before 4.16 they are how the bot learns of the next one).
        heard = state.saw(e.status, e.updated, e.message_id, e.bot_owned) if e.queued else state
        return Transition(heard, ignored="handoff already decided for this pending conversation")
    if state.since is not None and e.message_id <= state.since:
        return Transition(state, ignored="late delivery: the conversation left pending after this message was written")
    if state.phase in LEFT:
        state = _next_period(state)
    if state.first_message is None or e.message_id < state.first_message:  # the period's first customer message
        state = replace(state, first_message=e.message_id)  # (its own posts follow it), whatever order it came in
    return Transition(state, decide=True)


def _left(state: ConversationState, phase: Phase, since: int | None, **changes: object) -> ConversationState:
    """The conversation left pending: this period's counters and timer are forgotten."""
    return replace(state, phase=phase, since=since, **_FRESH, **changes)


def _next_period(state: ConversationState, **changes: object) -> ConversationState:
    return replace(state, period=state.period + 1, phase=Phase.BOT, **{**_FRESH, "first_message": None, **changes})


_FRESH: dict[str, object] = dict(incoming=0, timer_due=None, away_period=None, given_back=False, contact_known=False)


def _cancel_if(condition: object) -> frozenset[Effect]:
    return frozenset({Effect.CANCEL_TIMER}) if condition else frozenset()


def _max(a: int | None, b: int | None) -> int | None:
    return max((x for x in (a, b) if x is not None), default=None)


def period_of(job_period: int | None, trigger: int | None, state: ConversationState) -> int:
    """The period a job belongs to. Jobs stored before the period model carry none: theirs is the current one,
    unless a period began since their trigger was written (the conversation is pending again)."""
    if job_period is not None:
        return job_period
    began_since = state.phase not in LEFT and state.since is not None and (trigger or 0) <= state.since
    return state.period - 1 if began_since else state.period
