"""What the bot does to a conversation: jobs of ordered steps, kept in the outbox until done."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar

import msgspec


class Guard(StrEnum):
    """When a step still applies (guard.verdict carries it out): each step kind names its rule."""

    WHERE_LEFT = "where the decision left it"  # Chatwoot's calls: while the conversation's status and period are
    PERIOD = "while its period lasts"  # e.g. a message's forward: not once the period ended (resolved, a later one)
    AFTER_OPEN = "after the open, while its period lasts"  # pausing another bot: once the handoff's open is seen
    NO_LATER = "unless a later period began"  # e.g. a resolve's or a give-back's follow-up
    ALWAYS = "always"  # e.g. passing a conversation event on


class _Step(msgspec.Struct, tag_field="op", omit_defaults=True, frozen=True):
    """One Chatwoot call of a job. Stored as JSON tagged by "op" (e.g. {"op": "status", "status": "open"});
    the Chatwoot call each makes is in `outbox.Outbox._do`, whether it still applies in `guard.verdict`."""

    optional: ClassVar[bool] = False  # an extra: an older Chatwoot refusing it to bots must not stop the handoff
    guard: ClassVar[Guard] = Guard.WHERE_LEFT

    @property
    def op(self) -> str:
        return str(self.__struct_config__.tag)

    def words(self) -> str:
        raise NotImplementedError


class AssignTeam(_Step, tag="team", frozen=True):
    """POST assignments {"team_id"}."""

    team_id: int
    optional: ClassVar[bool] = True

    def words(self) -> str:
        return f"assign team {self.team_id}"


class AssignAgent(_Step, tag="assign", frozen=True):
    """POST assignments {"assignee_id"} (None: unassign). With `fallback`, a returning customer's previous
    agent: when Chatwoot says they are offline or gone, the conversation goes to the fallback instead."""

    assignee_id: int | None
    fallback: str | None = None
    optional: ClassVar[bool] = True

    def words(self) -> str:
        return f"assign agent {self.assignee_id}"


class SetPriority(_Step, tag="priority", frozen=True):
    """POST toggle_priority."""

    priority: str
    optional: ClassVar[bool] = True

    def words(self) -> str:
        return f"priority {self.priority}"


class SetStatus(_Step, tag="status", frozen=True):
    """POST toggle_status."""

    status: str

    def words(self) -> str:
        return f"set {self.status}"


class PrivateNote(_Step, tag="note", frozen=True):
    """POST messages (private); the job's context may add a remark (the agent fallback's)."""

    content: str

    def words(self) -> str:
        return f"private note {self.content!r}"


class AddLabel(_Step, tag="label", frozen=True):
    """GET labels, then POST labels with this one added (Chatwoot replaces the whole list): the bot token on
    4.16+, the user token before. An expiry's (PENDING_EXPIRE_ACTION=label)."""

    label: str

    def words(self) -> str:
        return f"label {self.label!r}"


class PublicMessage(_Step, tag="message", frozen=True):
    """POST messages (public): the customer sees it."""

    content: str

    def words(self) -> str:
        return f"message {self.content!r}"


# Evolution API (issue 24): its own bots' sessions of the contact, switched in lane "evolution" (evolution_jobs.py
# queues them, evolution_switch.py carries them out).
class EvolutionSwitch(_Step, tag="evolution", frozen=True):
    """POST /{integration}/changeStatus/{instance} {remoteJid, status} in Evolution API: `opened` at a give-back,
    `closed` at a resolve; dropped only once a later period began. The instance is the inbox's, found when the
    call is made (the inbox's name is in message deliveries only)."""

    integration: str
    status: str
    remote_jid: str
    inbox_id: int | None = None
    inbox_name: str | None = None
    guard = Guard.NO_LATER

    def words(self) -> str:
        return f"Evolution {self.integration} {self.status} {self.remote_jid}"


class EvolutionPause(EvolutionSwitch, tag="evolution-pause", frozen=True):
    """`paused` at a handoff: once the bot saw the conversation open (OPEN_WAIT at most), and only while the
    handoff's period lasts (not once it was resolved or given back)."""

    guard = Guard.AFTER_OPEN


# ---- forwarding to the team's own bot (issue 23; relay.py builds and runs these) ----
class Forward(_Step, tag="forward", frozen=True):
    """POST a customer's delivery, as Chatwoot sent it, to the team's bot (lane "forward"). A message's forward
    acts while its period lasts; `ForwardEvent` is a conversation event's, which always goes."""

    inbox_id: int | None  # its URL is read at run time (INBOX_<id>_FORWARD_URL, FORWARD_URL): it may hold a secret
    event: str
    body: str  # the delivery's body, byte for byte
    delivery: str  # its X-Chatwoot-Delivery (or one made from the body): the team's bot drops a repeat by it
    accepted_at: float  # when the webhook accepted it (the steady clock): FORWARD_MAX_AGE counts from here
    guard: ClassVar[Guard] = Guard.PERIOD

    def words(self) -> str:
        return f"forward {self.event} to your bot"


class ForwardEvent(Forward, tag="forward_event", frozen=True):
    guard: ClassVar[Guard] = Guard.ALWAYS


class DecideAgain(_Step, tag="decide_again", frozen=True):
    """Decide a customer's message again, once the handoff that was queued when it came has ended (queued behind it
    in the conversation's queue): it may have begun a new period, and Chatwoot shows whether it did (chaos seed
    272). Carried out by Handoffs.decide_again: the decision reads the conversation's state."""

    body: str  # the delivery's body, as Chatwoot sent it
    delivery: str | None  # its X-Chatwoot-Delivery
    guard: ClassVar[Guard] = Guard.NO_LATER  # not once a later period began (a give-back, the message's own)

    def words(self) -> str:
        return "decide the customer's message again"


Step = (
    AssignTeam
    | AddLabel
    | AssignAgent
    | SetPriority
    | SetStatus
    | PrivateNote
    | PublicMessage
    | EvolutionSwitch
    | EvolutionPause
    | Forward
    | ForwardEvent
    | DecideAgain
)


class Attempt(msgspec.Struct, frozen=True, omit_defaults=True):
    """What is known of the last call made for a job's step: the one type the outbox records (on a failed
    call) and guard.py reads. No attempt means the step's call was never sent, or was answered without
    effect; `maybe` that it may have landed (no answer, a 5xx, an unreadable answer, or a run cut short by a
    crash); `sent_at` that it may still be under way in Chatwoot (it timed out), sent at that time."""

    step: int
    maybe: bool = False
    sent_at: float = 0.0

    @classmethod
    def after(cls, previous: Attempt | None, step: int, maybe_applied: bool, still_running: bool, at: float) -> Attempt:
        """The step's attempt once its call (sent at `at`) failed: it may have landed if this call or an earlier
        unanswered one may have; an earlier call still under way stays so."""
        earlier = previous if previous is not None and previous.step == step and previous.maybe else None
        sent_at = at if still_running else (earlier.sent_at if earlier else 0.0)
        return cls(step, maybe_applied or earlier is not None, sent_at)


RECOVERED = Attempt(-1, maybe=True)  # a run cut short by a crash or a lost lease: any step may have landed


class Job(msgspec.Struct, omit_defaults=True):
    """One decision's calls for one conversation, carried out in order; `step` is the progress.

    `period` is the conversation's pending period the decision was taken in (period.py): a job of a period
    that ended is moot. `attempt` is what is known of the current step's last call (guard.py reads it).
    A run cut short (a crash, a lost Redis lease) comes back with an attempt that may have landed at its current
    step (progress is committed before the next step starts). `recovered` says more: a power cut may have lost
    progress written without a sync, so every step from the current one may have landed: each is checked (one
    that cannot be told is not sent again)."""

    account_id: int
    display_id: int
    reason: str
    steps: list[Step]
    step: int = 0
    context: dict[str, Any] = msgspec.field(default_factory=dict)
    attempts: int = 0
    created_at: float = 0.0
    next_at: float = 0.0
    error: str | None = None
    rule: str = ""
    trigger: int | None = None  # id of the message that led to the job
    id: str = ""
    decided_at: float = 0.0  # when the decision was taken (created_at restarts when a timer fires or on --retry)
    claim: str = ""  # the claiming worker's token (Redis); not meaningful once released
    verify: bool = False  # decided from facts that may be old (the sweep's listing): check Chatwoot before acting
    period: int | None = None  # None: stored before the period model (period.period_of tells)
    attempt: Attempt | None = None
    dead_at: float = 0.0  # when it became a dead letter
    lane: str = ""  # "" (Chatwoot's calls) or another queue of the conversation's ("evolution", "forward")
    not_before: float = 0.0  # it runs no sooner (a second pause some seconds after the first; a short hold)
    order: float | None = None  # its place in its lane: lower first, then as queued (a forward: its message id)
    recovered: bool = False
    # Written before the period model; read once by `loads`.
    old_unsure: bool = msgspec.field(default=False, name="unsure")
    old_sent_at: float = msgspec.field(default=0.0, name="sent_at")

    @property
    def status_target(self) -> str | None:
        """The status the job sets, if it sets one."""
        return next((s.status for s in self.steps if isinstance(s, SetStatus)), None)

    @property
    def opens_later(self) -> bool:
        """Whether a step still to run sets the conversation open."""
        return any(isinstance(s, SetStatus) and s.status == "open" for s in self.steps[self.step :])

    @property
    def status_done(self) -> bool:
        """Whether the job has set the conversation's status already (a step before the current one)."""
        return any(isinstance(s, SetStatus) for s in self.steps[: self.step])

    @property
    def expected_status(self) -> str:
        """The status the decision saw: a handoff and a greeting act on pending, a give-back on open."""
        return "open" if self.status_target == "pending" else "pending"

    @property
    def conversation_key(self) -> str:
        return f"{self.account_id}:{self.display_id}"

    @property
    def queue_key(self) -> str:
        """Jobs run one at a time, in order, per queue: a conversation's lanes do not wait for each other (a
        failing Evolution API never delays Chatwoot's open, note or message)."""
        return f"{self.conversation_key}/{self.lane}" if self.lane else self.conversation_key

    def dumps(self) -> str:
        return _encode_job(self).decode()

    @classmethod
    def loads(cls, text: str | bytes) -> Job:
        job = _decode_job(text)
        if job.old_unsure or job.old_sent_at:
            job.attempt = Attempt(job.step, maybe=job.old_unsure, sent_at=job.old_sent_at)
            job.old_unsure, job.old_sent_at = False, 0.0
        return job

    def next_step(self) -> None:
        """The current step is done (a `recovered` job's next one may have landed too: checked as well)."""
        self.step, self.attempt = self.step + 1, None

    def describe(self) -> str:
        ops = ", ".join(s.words() for s in self.steps)
        if self.not_before > self.decided_at > 0:  # both from the decision's clock (decide.py)
            ops += f", {round(self.not_before - self.decided_at, 1):g} s after the decision"
        return f"conversation {self.conversation_key}: {ops}"


_decode_job = msgspec.json.Decoder(Job).decode
_encode_job = msgspec.json.Encoder().encode


def posted_text(job: Job, step: Step) -> str:
    """What a note or message step posts (a note with the agent fallback's remark)."""
    match step:
        case PrivateNote(content):
            return content + str(job.context.get("remark", ""))
        case PublicMessage(content):
            return content
    raise TypeError(f"{step.op} posts no message")


def echo_text(private: bool, content: str) -> str:
    """The bot's own post as its echo (delivered back) is remembered and looked for: a note apart from a message of
    the same text (HANDOFF_MESSAGE="{reason}" words the message as the note)."""
    return "[note] " + content if private else content
