"""Whether a job's next step still applies: a pure verdict from what the bot observed. No I/O.

`needs` says what to observe before a step (the outbox gathers exactly that: observe.py); `verdict` turns the
job, its step, the step's last attempt and the observation into one of Send, Done, Drop or Wait. Every step
kind is guarded: none acts once the conversation's period ended, or once people moved it on since the decision.
The table of cases is tests/test_guard.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .actions import Attempt, Guard, Job, PrivateNote, PublicMessage, SetStatus, Step
from .constants import CATCH_UP, CATCH_UP_EVERY, LATE, OPEN_WAIT
from .events import Listed, Message
from .period import Phase

EXPIRE = "expire"  # the rule of an expiry's job (expiry.py): it acts only while nobody wrote since


class Look(StrEnum):
    """What the bot observes before a step."""

    CONVERSATION = "conversation"  # GET the conversation (bot token, Chatwoot 4.16+; else the bot's memory only)
    ECHO = "echo"  # whether the step's note or message was delivered back to the bot in its period (posts_after)
    MESSAGES = "messages"  # the conversation's latest messages (a user token), to find a note or message posted


@dataclass(frozen=True, slots=True)
class Seen:
    """What the bot observed of the conversation for one step. The bot's memory (period, phase, status) is
    always there; the rest only when `needs` asked for it."""

    period: int  # the conversation's current pending period
    phase: Phase
    status: str | None  # from Chatwoot just now when `fresh`, else the bot's memory
    fresh: bool = False
    unheard: bool = False  # a read shows a customer message the bot has not been delivered yet
    posted: bool | None = False  # the step's note or message is in the conversation; None: it cannot be told
    customer_latest: int | None = None  # a read's last message, when it is the customer's
    incoming: int = 0  # the customer's messages the bot heard in the current period


# ---- verdicts ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Send:
    """Make the step's call."""


@dataclass(frozen=True, slots=True)
class Done:
    """The step's effect is in Chatwoot already (an earlier attempt landed): go on with the next step."""

    why: str


@dataclass(frozen=True, slots=True)
class Drop:
    """The conversation moved on since the decision: the rest of the job is moot."""

    why: str


@dataclass(frozen=True, slots=True)
class Wait:
    """Look again at `until` (the outbox's clock); `catch_up_until` is when waiting for an unheard message ends."""

    until: float
    why: str
    catch_up_until: float | None = None


Verdict = Send | Done | Drop | Wait


def late(job: Job, now: float) -> bool:
    """A job retried, recovered, decided from old facts (the sweep), or starting long after its decision:
    where the conversation is now is read from Chatwoot, not taken from memory."""
    return job.attempts > 0 or job.recovered or job.verify or now - job.decided_at > LATE


def attempt_at(job: Job) -> Attempt | None:
    """What is known of the current step's last call."""
    if job.attempt is not None and job.attempt.step == job.step:
        return job.attempt
    return Attempt(job.step, maybe=True) if job.recovered else None


def _maybe(job: Job) -> bool:
    """The current step's call may have landed already."""
    attempt = attempt_at(job)
    return attempt is not None and attempt.maybe


def _posts(step: Step) -> bool:
    return isinstance(step, PrivateNote | PublicMessage)


def needs(job: Job, step: Step, now: float) -> frozenset[Look]:
    """What to observe before `step`, besides the bot's memory (all that steps of other lanes follow)."""
    if step.guard is not Guard.WHERE_LEFT:
        return frozenset()
    maybe, old = _maybe(job), late(job, now)
    # A handoff's message looks even on its first run: the period may have ended since its open landed.
    read = maybe or old or (isinstance(step, PublicMessage) and job.status_done)
    # A handoff's note or message is not posted when the same text went out in its period (posts_after), e.g. from a
    # call of the period before that Chatwoot carried out late; a late one (a retry, `outbox --retry`) when it went out
    # after its trigger, e.g. from the handoff that replaced a dead letter: its echo says so, the bot's own message
    # delivered back. One that may have landed is looked for everywhere.
    posted = (Look.ECHO, Look.MESSAGES) if maybe else (Look.ECHO,) if old or job.status_target == "open" else ()
    return frozenset(((Look.CONVERSATION,) if read else ()) + (posted if _posts(step) else ()))


def verdict(job: Job, period: int, step: Step, seen: Seen, now: float, settle: float) -> Verdict:
    """`period` is the job's (period.period_of); `settle` how long an unanswered call may still be under way."""
    waiting = _not_yet(job, now, settle)
    if waiting is not None:
        return waiting
    if step.guard is not Guard.WHERE_LEFT:
        return _by_period(step.guard, period, seen) or _open_seen(job, step.guard, seen, now) or Send()
    return (
        _moot(job, period, step, seen, _maybe(job))
        or _catching_up(job, step, seen, now)
        or _posting(job, step, seen, now)
    )


def _not_yet(job: Job, now: float, settle: float) -> Wait | None:
    attempt = attempt_at(job)
    if attempt is not None and attempt.sent_at and now < attempt.sent_at + settle:
        return Wait(attempt.sent_at + settle, "its last call may still be under way")
    return Wait(job.not_before, "it runs no sooner") if now < job.not_before else None


def _catching_up(job: Job, step: Step, seen: Seen, now: float) -> Wait | None:
    """An open that sees a customer message Chatwoot has not delivered to the bot waits for it, CATCH_UP at most
    (a delivery can be lost with a killed instance): it may begin a new period, the one to decide on."""
    if not (step == SetStatus("open") and seen.unheard):
        return None
    deadline = job.context.get("catch_up_until") or now + CATCH_UP
    if now >= deadline:
        return None
    return Wait(now + CATCH_UP_EVERY, "Chatwoot shows a customer message the bot has not received", deadline)


def _posting(job: Job, step: Step, seen: Seen, now: float) -> Done | Send:
    """A note or message is not posted again when it is found in its period; one that may have landed, or runs late,
    neither when that cannot be told (better lost than sent twice)."""
    if not _posts(step) or seen.posted is False:
        return Send()
    if seen.posted:
        return Done(f"the {step.op} was posted already")
    if _maybe(job) or late(job, now):
        return Done(f"the {step.op} may have been posted already and cannot be checked")
    return Send()


def _by_period(rule: Guard, period: int, seen: Seen) -> Drop | None:
    """The steps that follow the conversation's periods, not its status (other lanes than Chatwoot's)."""
    if rule is Guard.ALWAYS:
        return None
    if period < seen.period:
        return Drop("a later pending period began")
    if rule in (Guard.PERIOD, Guard.AFTER_OPEN) and seen.phase is Phase.CLOSED:
        return Drop("was resolved or snoozed since")
    return None


def _open_seen(job: Job, rule: Guard, seen: Seen, now: float) -> Wait | None:
    """A step that follows the handoff's open waits until the bot sees the conversation open, OPEN_WAIT at most
    (the open's event may be lost: then it goes ahead)."""
    if rule is not Guard.AFTER_OPEN or seen.phase is Phase.HUMANS or now >= job.decided_at + OPEN_WAIT:
        return None
    return Wait(min(now + CATCH_UP_EVERY, job.decided_at + OPEN_WAIT), "it waits for the handoff's open")


def _moot(job: Job, period: int, step: Step, seen: Seen, maybe: bool) -> Drop | Done | None:
    """Drop when the conversation moved on since the decision; Done when the step's status is set already."""
    by_status = _by_status(job, step, seen, maybe)
    if isinstance(by_status, Drop):
        return by_status
    if job.rule == EXPIRE and _customer_wrote(job, seen):
        return Drop("the customer wrote since it was found stale")
    return _period_over(job, period, seen) or by_status


def _customer_wrote(job: Job, seen: Seen) -> bool:
    """Since an expiry was decided: by a read (4.16+), or by what the bot heard (every version)."""
    heard = seen.incoming > int(job.context.get("incoming", seen.incoming))
    return heard or (seen.customer_latest or 0) > (job.trigger or 0)


def _period_over(job: Job, period: int, seen: Seen) -> Drop | None:
    """The pending period the job was decided in is over."""
    if period < seen.period:
        return Drop("a later pending period began")
    if job.expected_status != "pending":
        return None
    if seen.phase is Phase.CLOSED:
        return Drop("was resolved or snoozed since")
    if seen.phase is Phase.HUMANS and seen.status == "pending":
        return Drop("is pending again since it was opened")
    return None


def _after_own_status(job: Job, status: str, fresh: bool) -> Drop | None:
    """Once the job set the status, back to the one the decision saw is a new period, unless the bot's memory
    lags its own change."""
    if status == job.status_target or (status == job.expected_status and not fresh):
        return None
    return Drop(f"is {status} now")


def _by_status(job: Job, step: Step, seen: Seen, maybe: bool) -> Drop | Done | None:
    """What the conversation's status says: a step acts only where the decision left the conversation."""
    status = seen.status
    if status is None:
        return None
    if job.status_done:
        return _after_own_status(job, status, seen.fresh)
    if status == job.expected_status:
        return None
    # Not where the decision left it: the job's own status set already (an earlier call landed, or a run cut short
    # got past this step), or moved on by someone else.
    own = status == job.status_target and maybe
    if isinstance(step, SetStatus):
        return Done(f"it is {status} already") if own else Drop(f"is {status} now")
    return Done(f"it is {status} already: the steps before were carried out") if own else Drop(f"is {status} now")


# ---- reading what was observed -------------------------------------------------------------------
def unheard(job: Job, step: Step, view: Listed, latest_message: int | None) -> bool:
    """Chatwoot shows a customer message the bot has not had delivered yet in the pending conversation this step
    would open. It may begin a new pending period (the handoff's open landed unanswered, an agent resolved, the
    customer wrote again, with those events still on their way); then that message is the one to decide on."""
    last = view.last_message
    return (
        step == SetStatus("open")
        and view.conversation.status == "pending"
        and last is not None
        and last.kind == "incoming"
        and last.id > max(latest_message or 0, job.trigger or 0)
    )


def posted(
    content: str, private: bool, after: int | None, echoed: bool, view: Listed | None, latest: list[Message] | None
) -> bool | None:
    """Whether the bot's `content`, a note when `private`, is in the conversation after message `after` (posts_after),
    from the evidence gathered: its echo (delivered back to the bot), the conversation's last message (a read), its
    latest messages (a user token). None when nothing could show it either way."""
    last = [view.last_message] if view and view.last_message else []
    if echoed or any(_ours(m, content, private, None) for m in last):
        return True
    if latest is not None:
        return any(_ours(m, content, private, after) for m in latest)
    return False if view is not None else None


def posts_after(job: Job, period: int, first_message: int | None) -> int | None:
    """The message after which the job's note or message counts as posted (`period` and `first_message`: the
    conversation's current period and the first customer message the bot heard in it): its trigger, or for a
    handoff in its own period the period's first message when earlier. A period has one handoff, so its note and
    message go out once per period: the period before's, carried out late by Chatwoot after the customer wrote
    again, count (chaos seed 276). Other posts (an expiry's notice may come twice in a period) keep their trigger."""
    if job.status_target == "open" and job.period == period and first_message is not None:
        return min(job.trigger or first_message, first_message)
    return job.trigger


def _ours(m: Message, content: str, private: bool, after: int | None) -> bool:
    return m.sender.kind == "agent_bot" and m.content == content and m.private == private and m.id > (after or 0)
