"""What the bot does to a conversation: jobs of ordered steps, kept in the outbox until done."""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec


class _Step(msgspec.Struct, tag_field="op", omit_defaults=True, frozen=True):
    """One Chatwoot call of a job. Stored as JSON tagged by "op" (e.g. {"op": "status", "status": "open"});
    the Chatwoot call each makes is in `outbox.Outbox._do`."""

    optional: ClassVar[bool] = False  # an extra: an older Chatwoot refusing it to bots must not stop the handoff
    guarded: ClassVar[bool] = False  # acts on where the conversation is: made only while it is still there

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
    guarded: ClassVar[bool] = True

    def words(self) -> str:
        return f"set {self.status}"


class PrivateNote(_Step, tag="note", frozen=True):
    """POST messages (private); the job's context may add a remark (the agent fallback's)."""

    content: str

    def words(self) -> str:
        return f"private note {self.content!r}"


class PublicMessage(_Step, tag="message", frozen=True):
    """POST messages (public): the customer sees it."""

    content: str
    guarded: ClassVar[bool] = True

    def words(self) -> str:
        return f"message {self.content!r}"


Step = AssignTeam | AssignAgent | SetPriority | SetStatus | PrivateNote | PublicMessage


class Job(msgspec.Struct):
    """One decision's calls for one conversation, carried out in order; `step` is the progress.

    `unsure` says that the call of the current step may already have reached Chatwoot (a run was cut
    short after sending it: a timeout, a dropped connection, a crash). The store sets it before a step
    runs; the outbox then checks Chatwoot before sending that call again."""

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
    unsure: bool = False
    sent_at: float = 0.0  # when an unsure call went out, if it may still be under way in Chatwoot (else 0)
    claim: str = ""  # the claiming worker's token (Redis); not meaningful once released
    verify: bool = False  # decided from facts that may be old (the sweep's listing): check Chatwoot before acting

    @property
    def status_target(self) -> str | None:
        """The status the job sets, if it sets one."""
        return next((s.status for s in self.steps if isinstance(s, SetStatus)), None)

    @property
    def opens_later(self) -> bool:
        """Whether a step still to run sets the conversation open."""
        return any(isinstance(s, SetStatus) and s.status == "open" for s in self.steps[self.step :])

    @property
    def expected_status(self) -> str:
        """The status the decision saw: a handoff and a greeting act on pending, a give-back on open."""
        return "open" if self.status_target == "pending" else "pending"

    @property
    def conversation_key(self) -> str:
        return f"{self.account_id}:{self.display_id}"

    def dumps(self) -> str:
        return msgspec.json.encode(self).decode()

    @classmethod
    def loads(cls, text: str | bytes) -> Job:
        return msgspec.json.decode(text, type=cls)

    def describe(self) -> str:
        ops = ", ".join(s.words() for s in self.steps)
        return f"conversation {self.conversation_key}: {ops}"
