"""What the bot remembers about conversations and contacts (kept in the store as JSON)."""
from __future__ import annotations

from dataclasses import dataclass, replace

import orjson


@dataclass(frozen=True)
class ConversationState:
    resolved_on: str | None = None  # date the bot saw this conversation resolved
    handed_off: bool = False  # a handoff was decided in the current pending period
    greeted: bool = False
    incoming: int = 0  # customer messages in the current pending period
    timer_due: float | None = None
    away_period: str | None = None
    left_pending_after: int | None = None  # last message id when the bot saw the conversation leave pending
    given_back: bool = False  # an agent gave it back to the bot (BOT_COMMAND) since it was last resolved

    def dumps(self) -> str:
        return orjson.dumps(self).decode()

    @classmethod
    def loads(cls, text: str | bytes | None) -> ConversationState:
        return cls(**orjson.loads(text)) if text else cls()

    def new_period(self, **changes) -> ConversationState:
        """The conversation left pending: forget this period's counters and timer."""
        fresh = dict(handed_off=False, incoming=0, timer_due=None, away_period=None, given_back=False)
        return replace(self, **{**fresh, **changes})

    @property
    def in_period(self) -> bool:
        return self.handed_off or bool(self.incoming) or self.timer_due is not None


@dataclass(frozen=True)
class Resolved:
    """A contact's resolved conversation, as seen by the bot or found in Chatwoot."""

    display_id: int
    on: str  # YYYY-MM-DD
    assignee_id: int | None = None
    source: str = "seen"  # "seen" (conversation_resolved event) or "chatwoot" (look-up)

    def dumps(self) -> str:
        return orjson.dumps(self).decode()

    @classmethod
    def loads(cls, text: str | bytes | None) -> Resolved | None:
        return cls(**orjson.loads(text)) if text else None


@dataclass(frozen=True)
class Facts:
    state: ConversationState = ConversationState()
    previous: Resolved | None = None  # the contact's last resolved conversation
