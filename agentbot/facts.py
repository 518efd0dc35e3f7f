"""What the bot remembers about conversations and contacts (kept in the store as JSON)."""

from __future__ import annotations

import zlib
from typing import Any

import msgspec
from msgspec.structs import replace


class ConversationState(msgspec.Struct, frozen=True):
    resolved_on: str | None = None  # date the bot saw this conversation resolved
    handed_off: bool = False  # a handoff was decided in the current pending period
    greeted: bool = False
    incoming: int = 0  # customer messages in the current pending period
    timer_due: float | None = None
    away_period: str | None = None
    left_pending_after: int | None = None  # last message id when the bot saw the conversation leave pending
    closed_after: int | None = None  # last message id when the bot saw it resolved or snoozed: older jobs are moot
    given_back: bool = False  # an agent gave it back to the bot (BOT_COMMAND) since it was last resolved
    # What the newest delivery the bot acted on said; conversation events older than this are stale.
    status: str | None = None
    updated: float = 0.0  # the conversation's updated_at (Chatwoot bumps it at every save)
    latest_message: int | None = None  # the newest public message id seen
    human_owned: bool = False  # the newest delivery showed the conversation not owned by the bot (Chatwoot 4.16+)

    def saw(
        self, status: str, updated: float, message_id: int | None, bot_owned: bool | None = None
    ) -> ConversationState:
        """Remember the newest state of the conversation a delivery showed: its status (and whether the bot
        owned it) only when the delivery is not older than what the bot has (a late message, the sweep's listing)."""
        newest = max(filter(None, (self.latest_message, message_id)), default=None)
        current = updated >= self.updated
        shown = status if current else self.status
        human = (not bot_owned) if current and bot_owned is not None else self.human_owned
        return replace(self, status=shown, updated=max(self.updated, updated), latest_message=newest, human_owned=human)

    def is_older(self, updated: float, message_id: int | None) -> bool:
        """Whether a conversation event describes the conversation before what the bot already acted on."""
        if updated and updated < self.updated:
            return True
        return message_id is not None and self.latest_message is not None and message_id < self.latest_message

    def dumps(self) -> str:
        return msgspec.json.encode(self).decode()

    @classmethod
    def loads(cls, text: str | bytes | None) -> ConversationState:
        return msgspec.json.decode(text, type=cls) if text else NEW

    def new_period(self, **changes: Any) -> ConversationState:
        """The conversation left pending: forget this period's counters and timer."""
        fresh = dict(handed_off=False, incoming=0, timer_due=None, away_period=None, given_back=False)
        return replace(self, **{**fresh, **changes})

    def handoff_undone(self, latest: int | None) -> ConversationState:
        """A new period after a handed-off one the bot did not see end (its open undone, or never landed): the
        jobs of messages up to `latest` are moot (outbox.closed_since, left_since)."""
        return self.new_period(left_pending_after=latest, closed_after=latest)

    @property
    def in_period(self) -> bool:
        return self.handed_off or bool(self.incoming) or self.timer_due is not None


NEW = ConversationState()  # a conversation the bot knows nothing about


class Resolved(msgspec.Struct, frozen=True):
    """A contact's resolved conversation, as seen by the bot or found in Chatwoot."""

    display_id: int
    on: str  # YYYY-MM-DD
    assignee_id: int | None = None
    source: str = "seen"  # "seen" (conversation_resolved event) or "chatwoot" (look-up)

    def dumps(self) -> str:
        return msgspec.json.encode(self).decode()

    @classmethod
    def loads(cls, text: str | bytes | None) -> Resolved | None:
        return msgspec.json.decode(text, type=cls) if text else None


class Facts(msgspec.Struct, frozen=True):
    state: ConversationState = NEW
    previous: Resolved | None = None  # the contact's last resolved conversation


def fingerprint(content: str | None) -> int:
    """What the store keeps of one of the bot's own messages to recognise it again (its text's CRC-32)."""
    return zlib.crc32((content or "").encode())
