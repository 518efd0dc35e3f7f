"""What the bot remembers about conversations and contacts (kept in the store as JSON)."""

from __future__ import annotations

import zlib

import msgspec
from msgspec.structs import replace

from .events import Listed
from .period import HANDED_OFF, Phase


class ConversationState(msgspec.Struct, frozen=True, omit_defaults=True):
    """What the bot remembers of one conversation: where it is in its life (period.py's machine moves
    `period`, `phase` and `since`), this period's counters, and the newest state a delivery showed."""

    period: int = 0  # the pending periods the bot has seen begin (jobs carry the one they were decided in)
    phase: Phase = Phase.BOT
    since: int | None = None  # messages up to this id were written in earlier periods
    first_message: int | None = None  # the earliest customer message the bot heard in this period
    resolved_on: str | None = None  # date the bot saw this conversation resolved
    greeted: bool = False
    incoming: int = 0  # customer messages in the current pending period
    timer_due: float | None = None
    away_period: str | None = None
    given_back: bool = False  # an agent gave it back to the bot (BOT_COMMAND) since it was last resolved
    contact_known: bool = False  # this period's decisions knew whether the customer is returning (no failed look-up)
    # What the newest delivery the bot acted on said; conversation events older than this are stale.
    status: str | None = None
    updated: float = 0.0  # the conversation's updated_at (Chatwoot bumps it at every save)
    latest_message: int | None = None  # the newest public message id seen
    human_owned: bool = False  # the newest delivery showed the conversation not owned by the bot (Chatwoot 4.16+)
    # Written by the bot before the period model; read once by `loads`, never written again.
    old_handed_off: bool | None = msgspec.field(default=None, name="handed_off")
    old_left_pending_after: int | None = msgspec.field(default=None, name="left_pending_after")
    old_closed_after: int | None = msgspec.field(default=None, name="closed_after")

    @property
    def handed_off(self) -> bool:
        """A handoff is decided in the current pending period (queued, or waiting for the opening time)."""
        return self.phase in HANDED_OFF

    def opening(self, now: float) -> bool:
        """The period's handoff is opening the conversation: queued, or deferred with its timer fired."""
        due = self.timer_due
        return self.phase is Phase.HANDOFF or (self.phase is Phase.DEFERRED and due is not None and due <= now)

    @property
    def in_period(self) -> bool:
        return self.handed_off or bool(self.incoming) or self.timer_due is not None

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
        if not text:
            return NEW
        state = _decode_state(text)
        return _from_before_periods(state) if state.old_handed_off is not None else state


_decode_state = msgspec.json.Decoder(ConversationState).decode


def _from_before_periods(old: ConversationState) -> ConversationState:
    """A state written before the period model: its flags and watermarks as a phase (period 0)."""
    left = old.old_left_pending_after
    phase = (
        (Phase.DEFERRED if old.timer_due is not None else Phase.HANDOFF)
        if old.old_handed_off
        else Phase.CLOSED
        if old.status in ("resolved", "snoozed") and left is not None
        else Phase.HUMANS
        if old.status == "open" and left is not None
        else Phase.BOT
    )
    return replace(
        old, phase=phase, since=left, old_handed_off=None, old_left_pending_after=None, old_closed_after=None
    )


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
    """What a decision is taken on: the bot's memory, and what it observed when decide.Need asked (None: not
    observed)."""

    state: ConversationState = NEW
    previous: Resolved | None = None  # the contact's last resolved conversation
    looked_up: bool = False  # Chatwoot was asked for the contact's conversations (or could not be)
    lookup_failed: bool = False  # it was asked and did not answer (failed, or its budget was spent): unknown
    queued: bool | None = None  # a job still queued opens the conversation
    dead_letter: bool | None = None  # the conversation has a dead letter
    pending_now: bool | None = None  # Chatwoot shows the conversation pending now
    newest_customer_message: int | None = None  # with pending_now: the latest customer message Chatwoot shows
    again: bool = False  # the message is decided again: the handoff queued when it came has ended (DecideAgain)

    def read(self, view: Listed | None) -> Facts:
        """These facts with what a read of the conversation showed (None: it could not be read)."""
        shown = view.last_message if view else None
        return replace(
            self,
            pending_now=view is not None and view.conversation.status == "pending",
            newest_customer_message=shown.id if shown and shown.kind == "incoming" else None,
        )


def fingerprint(content: str | None) -> int:
    """What the store keeps of one of the bot's own messages to recognise it again (its text's CRC-32)."""
    return zlib.crc32((content or "").encode())
