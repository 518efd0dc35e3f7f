"""What the bot does to a conversation: jobs of ordered steps, kept in the outbox until done."""
from __future__ import annotations

from typing import Any

import msgspec

# Step ops and their Chatwoot calls (see chatwoot.py):
#   team {team_id}            POST assignments {"team_id"}
#   assign {assignee_id, fallback_team_id?, fallback?}  POST assignments {"assignee_id"}
#   priority {priority}       POST toggle_priority
#   status {status}           POST toggle_status
#   note {content}            POST messages (private)
#   message {content}         POST messages (public)
Step = dict[str, Any]


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
        return next((s["status"] for s in self.steps if s["op"] == "status"), None)

    @property
    def opens_later(self) -> bool:
        """Whether a step still to run sets the conversation open."""
        return any(s["op"] == "status" and s["status"] == "open" for s in self.steps[self.step:])

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
        ops = ", ".join(_step_words(s) for s in self.steps)
        return f"conversation {self.conversation_key}: {ops}"


def _step_words(step: Step) -> str:
    op = step["op"]
    if op == "status":
        return f"set {step['status']}"
    if op in ("note", "message"):
        return f"{'private note' if op == 'note' else 'message'} {step['content']!r}"
    if op == "assign":
        return f"assign agent {step['assignee_id']}"
    if op == "team":
        return f"assign team {step['team_id']}"
    return f"priority {step['priority']}"
