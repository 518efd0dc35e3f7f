"""Whether a stale pending conversation expires (PENDING_EXPIRE_*): pure, from the listed conversation, its latest
messages and what the bot knows of it; and the job that expires it.

Chatwoot never auto-resolves pending conversations (its auto-resolve looks only at open ones), so the ones the
bot keeps pending and nobody answers pile up. The time counts from the customer's last incoming message; a
conversation with a handoff queued or deferred, one an agent touched since that message, and a WhatsApp group
(an ongoing chat, not a ticket) never expire.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from .actions import AddLabel, Job, PublicMessage, SetStatus, Step
from .config import Rules
from .events import Conversation, Message
from .facts import ConversationState
from .guard import EXPIRE

RULE = EXPIRE  # the jobs' rule (guard.py drops them once someone wrote since), and the decision log's outcome


class Verdict(enum.Enum):
    EXPIRES = "expires"
    OFF = "expiry off"  # no PENDING_EXPIRE_AFTER for the inbox
    NOT_PENDING = "not pending"
    GROUP = "WhatsApp group"  # or Evolution API's own system conversation
    NO_CUSTOMER_MESSAGE = "no customer message"
    RECENT = "customer wrote recently"
    HANDOFF = "handoff queued or deferred"
    TOUCHED = "an agent acted since"
    QUEUED = "expiry already queued"
    LABELLED = "labelled already"  # PENDING_EXPIRE_ACTION=label: it stays pending with the label


@dataclass(frozen=True)
class Known:
    """What the bot knows of the conversation: its remembered state and its jobs still to run (timer included)."""

    state: ConversationState
    jobs: Sequence[Job] = ()


@dataclass(frozen=True)
class Expiry:
    verdict: Verdict
    reason: str
    last_incoming: Message | None = None  # the customer's last message: the job's trigger

    @property
    def expires(self) -> bool:
        return self.verdict is Verdict.EXPIRES


def expiry(c: Conversation, messages: Sequence[Message], known: Known, now: float, rules: Rules) -> Expiry:
    """Whether `c` (as listed) expires at `now`, given its latest `messages` (oldest first) and what is `known`."""
    after = rules.pending_expire_after
    if not after:
        return Expiry(Verdict.OFF, "PENDING_EXPIRE_AFTER is not set for this inbox")
    if c.status != "pending":
        return Expiry(Verdict.NOT_PENDING, f"it is {c.status}")
    if c.is_group or c.is_evolution_system:
        return Expiry(Verdict.GROUP, "a WhatsApp group is an ongoing chat, not a ticket")
    if rules.pending_expire_action == "label" and rules.pending_expire_label in {x.lower() for x in c.labels}:
        return Expiry(Verdict.LABELLED, f"labelled {rules.pending_expire_label!r} already")
    blocked = _blocked(c, known)
    if blocked:
        return blocked
    customer = [i for i, m in enumerate(messages) if m.kind == "incoming" and not m.private]
    if not customer:
        return Expiry(Verdict.NO_CUSTOMER_MESSAGE, "no customer message among its latest messages")
    last = messages[customer[-1]]
    toucher = next((m for m in messages[customer[-1] + 1 :] if _by_a_person(m)), None)
    if toucher is not None:
        return Expiry(Verdict.TOUCHED, f"{_who(toucher)} after the customer's last message", last)
    if c.assignee is not None and c.assignee.kind == "user":
        return Expiry(Verdict.TOUCHED, f"assigned to {c.assignee.name or 'an agent'}", last)
    quiet = now - last.created_at
    if quiet < after:
        return Expiry(Verdict.RECENT, f"the customer wrote {quiet:.0f} s ago (expires after {after} s)", last)
    return Expiry(Verdict.EXPIRES, f"the customer wrote nothing for {quiet:.0f} s (PENDING_EXPIRE_AFTER {after})", last)


def _blocked(c: Conversation, known: Known) -> Expiry | None:
    """A job of the bot's own that the expiry would undo or repeat."""
    if any(job.rule == RULE for job in known.jobs):
        return Expiry(Verdict.QUEUED, "its expiry is queued already")
    if known.state.handed_off or any(job.opens_later for job in known.jobs):
        return Expiry(Verdict.HANDOFF, "the bot handed it off in this pending period")
    if known.state.timer_due is not None:
        return Expiry(Verdict.HANDOFF, "a handoff waits for its time (a deferred handoff or HANDOFF_AFTER_SECONDS)")
    return None


def _by_a_person(m: Message) -> bool:
    """A message or activity that says someone acted: an agent's reply or note, an assignment, a label, a status
    (activities name no sender; the bot makes none in a pending conversation)."""
    return m.kind == "activity" or (m.kind in ("outgoing", "template") and m.sender.kind == "user")


def _who(m: Message) -> str:
    if m.kind == "activity":
        return f"activity {(m.content or '')[:60]!r}"
    what = "a private note" if m.private else "a reply"
    return f"{what} by {m.sender.name or 'an agent'}"


def label_job(c: Conversation, found: Expiry, now: float, rules: Rules, period: int) -> Job:
    """The job that expires `c` by labelling it (PENDING_EXPIRE_LABEL added, the others kept)."""
    return _job(c, found, [AddLabel(rules.pending_expire_label)], now, period)


def resolve_job(c: Conversation, found: Expiry, now: float, rules: Rules, period: int) -> Job:
    """The job that expires `c` by resolving it: the optional public message, then `toggle_status resolved` (bot
    token). Made only while the conversation is still pending (the steps are guarded; `verify`: the listing may
    be minutes old)."""
    steps: list[Step] = []
    if rules.pending_expire_message:
        steps.append(PublicMessage(render(rules.pending_expire_message, c, found.reason)))
    steps.append(SetStatus("resolved"))
    return _job(c, found, steps, now, period)


def _job(c: Conversation, found: Expiry, steps: list[Step], now: float, period: int) -> Job:
    """Made only while the conversation is pending and nobody wrote since (guard: the rule EXPIRE); `verify`:
    the listing may be minutes old."""
    assert found.last_incoming is not None
    reason, trigger = f"Expired: {found.reason}", found.last_incoming.id
    return Job(
        c.account_id,
        c.display_id,
        reason,
        steps,
        created_at=now,
        rule=RULE,
        trigger=trigger,
        decided_at=now,
        verify=True,
        period=period,
    )


def render(template: str, c: Conversation, reason: str) -> str:
    return template.format(name=c.contact.name, reason=reason, conversation_id=c.display_id)


def dedup_key(c: Conversation, found: Expiry) -> str:
    """One expiry per customer message: a restart in the middle, or a second sweep, commits nothing again."""
    assert found.last_incoming is not None
    return f"x:{c.key}:{found.last_incoming.id}"
