"""Typed views of Chatwoot deliveries: only the fields the bot uses, decoded straight from the body.

msgspec decodes the body into the wire structs below in one pass, validating the JSON and skipping
every field they don't name; the rest of the bot sees the Delivery built from them.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timezone
from typing import Any

import msgspec
from msgspec import Raw, Struct

MESSAGE_EVENTS = {"message_created", "message_updated"}
CONVERSATION_EVENTS = {
    "conversation_opened",
    "conversation_resolved",
    "conversation_status_changed",
    "conversation_updated",
}
KNOWN_EVENTS = MESSAGE_EVENTS | CONVERSATION_EVENTS | {"webwidget_triggered"}
EVOLUTION_SYSTEM_PHONE = "+123456"
EMPTY = Raw(b"null")


def event_label(event: object) -> str:
    """The event name for metrics; anything unknown is "other" so labels stay few."""
    return event if isinstance(event, str) and event in KNOWN_EVENTS else "other"


class BadBody(ValueError):
    """The body is not a JSON object: answered 400."""


class PayloadError(ValueError):
    """The delivery lacks a field a decision needs, or has one of the wrong type: acknowledged, not acted on."""

    def __init__(self, message: str, event: str | None = None):
        super().__init__(message)
        self.event = event


# What Chatwoot sends (only the fields the bot reads). Every field is optional here; `_conversation`
# and `parse` say which ones a decision needs.
class _Person(Struct):
    id: int | None = None
    type: str | None = None
    name: str | None = None
    availability_status: str | None = None
    identifier: str | None = None
    phone_number: str | None = None
    custom_attributes: Raw = EMPTY
    additional_attributes: Raw = EMPTY


class _Meta(Struct):
    sender: _Person | None = None
    assignee: _Person | None = None
    assignee_type: str | None = None


class _Ref(Struct):
    id: int | None = None
    account_id: int | None = None
    contact_id: int | None = None


class _Conversation(Struct):
    id: int | None = None
    status: str | None = None
    inbox_id: int | None = None
    meta: _Meta | None = None
    messages: list[_Ref] = []
    contact_inbox: _Ref | None = None
    account: _Ref | None = None
    first_reply_created_at: str | float | None = None
    updated_at: str | float | None = None
    labels: Raw = EMPTY
    custom_attributes: Raw = EMPTY
    additional_attributes: Raw = EMPTY
    changed_attributes: list[dict[str, Raw]] | None = None  # conversation events on Chatwoot 4.13+


class _InboxRef(Struct):
    name: str | None = None


class _Body(_Conversation):
    """A message event is a message with its conversation; a conversation event is the conversation."""

    event: str | None = None
    inbox: _InboxRef | None = None  # message events only: {id, name}
    message_type: str | None = None
    private: bool | None = False
    content: str | None = None
    source_id: str | None = None
    sender: _Person | None = None
    conversation: _Conversation | None = None


_decode = msgspec.json.Decoder(_Body).decode


# What the rest of the bot reads.
class Person(Struct, frozen=True):
    id: int | None
    kind: str | None  # "contact", "user", "agent_bot" or None
    name: str = ""
    availability: str | None = None


class Conversation(Struct, frozen=True):
    account_id: int
    display_id: int
    inbox_id: int | None
    status: str
    contact: Person
    contact_identifier: str | None = None
    contact_phone: str | None = None
    inbox_name: str | None = None  # message deliveries only (Evolution's instance is named like its inbox)
    assignee: Person | None = None
    bot_owned: bool = False  # Chatwoot 4.16+: the agent bot is the conversation's assignee
    first_reply_at: str | None = None  # ISO 8601
    last_message_id: int | None = None  # messages[0]: the latest public message when the payload was built
    updated_at: str = ""  # changes with every save: tells two events of one conversation apart
    status_changed: bool | None = None  # by the save this event reports; None: the payload doesn't say
    waiting_since: float | None = None  # unix time the customer started waiting; filled by the sweep only
    # Decoded only by the rules that read them, so most deliveries never pay for them.
    raw_labels: Raw = EMPTY
    raw_attributes: tuple[Raw, Raw] = (EMPTY, EMPTY)  # the contact's, then the conversation's
    raw_languages: tuple[Raw, Raw, Raw] = (EMPTY, EMPTY, EMPTY)  # where a language may be, in order

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(str(label) for label in _loads(self.raw_labels, list))

    @property
    def attributes(self) -> dict[str, Any]:
        contact, conversation = (_loads(raw, dict) for raw in self.raw_attributes)
        return {**contact, **conversation}

    @property
    def language(self) -> str | None:
        for source in (_loads(raw, dict) for raw in self.raw_languages):
            for key in ("browser_language", "language", "locale"):
                if isinstance(source.get(key), str) and source[key]:
                    return source[key].lower().replace("_", "-")
        return None

    @property
    def key(self) -> str:
        return f"{self.account_id}:{self.display_id}"

    @property
    def updated(self) -> float:
        """`updated_at` as unix seconds (0 when the payload has none or another form)."""
        try:
            return float(self.updated_at)
        except ValueError:
            return 0.0

    @property
    def is_group(self) -> bool:
        return bool(self.contact_identifier and self.contact_identifier.endswith("@g.us"))

    @property
    def is_evolution_system(self) -> bool:
        return self.contact_phone == EVOLUTION_SYSTEM_PHONE


class Message(Struct, frozen=True):
    id: int
    kind: str  # "incoming", "outgoing", "template" (and "activity" in listed messages)
    private: bool
    content: str | None
    sender: Person
    source_id: str | None
    created_at: float = 0.0  # unix time; known for listed messages (the sweep), 0 in deliveries


class Delivery(Struct, frozen=True):
    event: str
    delivery_id: str | None = None
    conversation: Conversation | None = None
    message: Message | None = None

    @property
    def dedup_key(self) -> str:
        c = self.conversation
        if self.message:  # by the message, which the signature covers (X-Chatwoot-Delivery it does not)
            return f"e:{self.event}:{self.message.id}:{c.key if c else ''}"
        if self.delivery_id:
            return f"d:{self.delivery_id}"
        return f"e:{self.event}:{c.key if c else ''}:{c.updated_at if c else ''}"


def _loads(raw: Raw, kind: type) -> Any:
    value = msgspec.json.decode(raw)
    return value if isinstance(value, kind) else kind()


def _iso(when: str | float | None) -> str | None:
    if isinstance(when, (int, float)) and when:
        return datetime.fromtimestamp(when, timezone.utc).isoformat()
    return when if isinstance(when, str) and when else None


def _conversation(conv: _Conversation | None, account_id: int | None) -> Conversation:
    if conv is None:
        raise PayloadError("no conversation object")
    first = conv.messages[0] if conv.messages else None
    if account_id is None:
        account_id = (first.account_id if first else None) or (conv.account.id if conv.account else None)
    if conv.id is None or account_id is None or conv.status is None:
        raise PayloadError("conversation id, account id or status missing")
    meta = conv.meta or _Meta()
    contact = meta.sender or _Person()
    assignee = meta.assignee
    kind = (assignee and assignee.type) or {"AgentBot": "agent_bot"}.get(meta.assignee_type or "", "user")
    return Conversation(
        account_id=account_id,
        display_id=conv.id,
        inbox_id=conv.inbox_id,
        status=conv.status,
        contact=Person(
            contact.id or (conv.contact_inbox.contact_id if conv.contact_inbox else None), "contact", contact.name or ""
        ),
        contact_identifier=contact.identifier,
        contact_phone=contact.phone_number,
        assignee=Person(assignee.id, kind, assignee.name or "", assignee.availability_status)
        if assignee and assignee.id is not None
        else None,
        bot_owned=meta.assignee_type == "AgentBot" or kind == "agent_bot",
        first_reply_at=_iso(conv.first_reply_created_at),
        last_message_id=first.id if first else None,
        updated_at=str(conv.updated_at or ""),
        status_changed=None if conv.changed_attributes is None else any("status" in c for c in conv.changed_attributes),
        raw_labels=conv.labels,
        raw_attributes=(contact.custom_attributes, conv.custom_attributes),
        raw_languages=(conv.additional_attributes, contact.custom_attributes, contact.additional_attributes),
    )


def parse(body: bytes, delivery_id: str | None = None) -> Delivery:
    """Turn a delivery body into a Delivery; BadBody when it is not a JSON object, PayloadError when a
    field a decision needs is missing or of the wrong type."""
    try:
        wire = _decode(body)
    except msgspec.ValidationError as exc:
        return _unexpected(body, delivery_id, exc)
    except msgspec.DecodeError:
        raise BadBody("body is not JSON") from None
    except RecursionError:
        raise BadBody("body is nested too deeply") from None
    try:
        return _delivery(wire, delivery_id)
    except PayloadError as exc:
        exc.event = wire.event
        raise


def _delivery(wire: _Body, delivery_id: str | None) -> Delivery:
    event = wire.event
    if event in MESSAGE_EVENTS:
        account_id = wire.account.id if wire.account else None
        conversation = _conversation(wire.conversation, account_id)
        if wire.inbox is not None and wire.inbox.name:
            conversation = msgspec.structs.replace(conversation, inbox_name=wire.inbox.name)
        if wire.message_type not in ("incoming", "outgoing", "template") or wire.id is None:
            raise PayloadError("message id or message_type missing")
        sender = wire.sender or _Person()
        message = Message(
            id=wire.id,
            kind=wire.message_type,
            private=bool(wire.private),
            content=wire.content,
            sender=Person(
                sender.id, sender.type or ("contact" if wire.message_type == "incoming" else None), sender.name or ""
            ),
            source_id=wire.source_id,
        )
        return Delivery(event, delivery_id, conversation, message)
    if event in CONVERSATION_EVENTS:
        return Delivery(event, delivery_id, _conversation(wire, None))
    if event is None:
        raise PayloadError("no event name")
    return Delivery(event, delivery_id)


def _unexpected(body: bytes, delivery_id: str | None, exc: msgspec.ValidationError) -> Delivery:
    """The body didn't fit the wire structs: not an object (400), an event the bot doesn't read whose
    fields look different (fine), or a field of the wrong type (PayloadError). Rare, so decoded twice."""
    try:
        data = msgspec.json.decode(body)
    except RecursionError:
        raise BadBody("body is nested too deeply") from None
    if not isinstance(data, dict):
        raise BadBody("body is not a JSON object")
    event = data.get("event")
    if isinstance(event, str) and event not in MESSAGE_EVENTS | CONVERSATION_EVENTS:
        return Delivery(event, delivery_id)
    raise PayloadError(str(exc), event if isinstance(event, str) else None)


# Chatwoot's conversation partial (`GET /conversations`, a contact's conversations) and the messages
# index. Unlike a delivery, `messages` holds the last message of any kind (a private note or an
# activity too), message_type is an integer and the times are unix integers, 0 when unset.
MESSAGE_KINDS = {0: "incoming", 1: "outgoing", 2: "activity", 3: "template"}
SENDER_KINDS = {"Contact": "contact", "User": "user", "AgentBot": "agent_bot"}


class _Posted(Struct):
    """Message#push_event_data, as in the partial's `messages` and the messages index."""

    id: int | None = None
    account_id: int | None = None
    message_type: int | str | None = None
    private: bool | None = False
    content: str | None = None
    source_id: str | None = None
    sender_type: str | None = None
    sender: _Person | None = None
    created_at: float | str | None = None


class _Listed(_Conversation):
    account_id: int | None = None
    messages: list[_Posted] = []  # type: ignore[assignment]  # a listing's messages carry more than a delivery's
    last_non_activity_message: _Posted | None = None
    waiting_since: float | None = None
    last_activity_at: float | None = None
    timestamp: float | None = None  # the same as last_activity_at on current versions


class _Counts(Struct, frozen=True):
    all_count: int = 0


class _PageData(Struct):
    meta: _Counts = _Counts()
    payload: list[_Listed] = []


class _Page(Struct):
    data: _PageData


class _MessagesPage(Struct):
    payload: list[_Posted] = []


class _ContactConversations(Struct):
    payload: list[_Listed] = []


_decode_page = msgspec.json.Decoder(_Page).decode
_decode_messages = msgspec.json.Decoder(_MessagesPage).decode
_decode_partial = msgspec.json.Decoder(_Listed).decode
_decode_contact_conversations = msgspec.json.Decoder(_ContactConversations).decode


class Listed(Struct, frozen=True):
    """One conversation of a list page, with the messages the page shows (at most two, oldest first)."""

    conversation: Conversation
    messages: tuple[Message, ...]
    last_activity_at: float  # unix time

    @property
    def last_message(self) -> Message | None:
        """The latest message that is not an activity (Chatwoot's `last_non_activity_message`)."""
        return next((m for m in reversed(self.messages) if m.kind != "activity"), None)


def _posted(p: _Posted | None) -> Message | None:
    if p is None or p.id is None:
        return None
    kind = MESSAGE_KINDS.get(p.message_type, p.message_type) if isinstance(p.message_type, int) else p.message_type
    if kind not in ("incoming", "outgoing", "template", "activity"):
        return None
    sender = p.sender or _Person()
    who = sender.type or SENDER_KINDS.get(p.sender_type or "") or ("contact" if kind == "incoming" else None)
    when = p.created_at if isinstance(p.created_at, (int, float)) else 0.0
    return Message(
        p.id, kind, bool(p.private), p.content, Person(sender.id, who, sender.name or ""), p.source_id, float(when)
    )


def parse_page(body: bytes) -> tuple[int, list[Listed], int]:
    """A page of `GET /conversations`: (all_count, the conversations, how many items could not be read)."""
    try:
        page = _decode_page(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise PayloadError(f"conversation list: {exc}") from None
    listed, bad = [], 0
    for item in page.data.payload:
        try:
            listed.append(_listed(item))
        except PayloadError:
            bad += 1
    return page.data.meta.all_count, listed, bad


def _listed(item: _Listed) -> Listed:
    """One conversation partial, wherever Chatwoot sends it; PayloadError without id, account or status."""
    conversation = _conversation(item, item.account_id)
    shown = {m.id: m for m in map(_posted, (item.last_non_activity_message, *item.messages)) if m is not None}
    since = float(item.waiting_since or 0) or None
    messages = tuple(sorted(shown.values(), key=lambda m: m.id))
    return Listed(
        msgspec.structs.replace(conversation, waiting_since=since),
        messages,
        float(item.last_activity_at or item.timestamp or 0),
    )


def parse_conversation(body: bytes) -> Listed:
    """`GET /conversations/{id}`: the conversation partial."""
    try:
        return _listed(_decode_partial(body))
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise PayloadError(f"conversation: {exc}") from None


def parse_contact_conversations(body: bytes) -> list[Listed]:
    """A contact's conversations (`{"payload": [partial, …]}`), leaving out those that cannot be read."""
    try:
        items = _decode_contact_conversations(body).payload
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise PayloadError(f"contact conversations: {exc}") from None
    listed = []
    for item in items:
        with contextlib.suppress(PayloadError):
            listed.append(_listed(item))
    return listed


def parse_messages(body: bytes) -> list[Message]:
    """The messages index (`{"meta": …, "payload": [message, …]}`), oldest first."""
    try:
        page = _decode_messages(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise PayloadError(f"conversation messages: {exc}") from None
    return sorted((m for m in map(_posted, page.payload) if m is not None), key=lambda m: m.id)
