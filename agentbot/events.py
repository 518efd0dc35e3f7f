"""Typed views of Chatwoot deliveries: only the fields the bot uses, tolerant of everything else."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MESSAGE_EVENTS = {"message_created", "message_updated"}
CONVERSATION_EVENTS = {"conversation_opened", "conversation_resolved", "conversation_status_changed", "conversation_updated"}
KNOWN_EVENTS = MESSAGE_EVENTS | CONVERSATION_EVENTS | {"webwidget_triggered"}


def event_label(event: object) -> str:
    """The event name for metrics; anything unknown is "other" so labels stay few."""
    return event if isinstance(event, str) and event in KNOWN_EVENTS else "other"
EVOLUTION_SYSTEM_PHONE = "+123456"


class PayloadError(ValueError):
    """The delivery lacks a field a decision needs."""


@dataclass(frozen=True, slots=True)
class Person:
    id: int | None
    kind: str | None  # "contact", "user", "agent_bot" or None
    name: str = ""
    availability: str | None = None


@dataclass(frozen=True, slots=True)
class Conversation:
    account_id: int
    display_id: int
    inbox_id: int | None
    status: str
    contact: Person
    contact_identifier: str | None = None
    contact_phone: str | None = None
    assignee: Person | None = None
    first_reply_at: str | None = None
    last_message_id: int | None = None  # messages[0]: the latest public message when the payload was built
    updated_at: str = ""  # changes with every save: tells two events of one conversation apart
    raw: dict = field(default_factory=dict, compare=False, repr=False)  # for the fields few rules read

    # Read only by the rules that need them, so most deliveries never pay for them.
    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(str(label) for label in self.raw.get("labels") or ())

    @property
    def attributes(self) -> dict[str, Any]:
        return {**(_contact(self.raw).get("custom_attributes") or {}), **(self.raw.get("custom_attributes") or {})}

    @property
    def language(self) -> str | None:
        return _language(self.raw, _contact(self.raw))

    @property
    def key(self) -> str:
        return f"{self.account_id}:{self.display_id}"

    @property
    def is_group(self) -> bool:
        return bool(self.contact_identifier and self.contact_identifier.endswith("@g.us"))

    @property
    def is_evolution_system(self) -> bool:
        return self.contact_phone == EVOLUTION_SYSTEM_PHONE


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    kind: str  # "incoming", "outgoing", "template"
    private: bool
    content: str | None
    sender: Person
    source_id: str | None


@dataclass(frozen=True, slots=True)
class Delivery:
    event: str
    delivery_id: str | None = None
    conversation: Conversation | None = None
    message: Message | None = None

    @property
    def dedup_key(self) -> str:
        if self.delivery_id:
            return f"d:{self.delivery_id}"
        c = self.conversation
        if self.message:
            return f"e:{self.event}:{self.message.id}:{c.key if c else ''}"
        return f"e:{self.event}:{c.key if c else ''}:{c.updated_at if c else ''}"


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _person(data: Any, default_kind: str | None = None) -> Person:
    if not isinstance(data, dict):
        return Person(None, None)
    return Person(_int(data.get("id")), data.get("type") or default_kind, str(data.get("name") or ""), data.get("availability_status"))


def _contact(conv: dict) -> dict:
    meta = conv.get("meta")
    sender = meta.get("sender") if isinstance(meta, dict) else None
    return sender if isinstance(sender, dict) else {}


def _language(conv: dict, contact: dict) -> str | None:
    extra = conv.get("additional_attributes") or {}
    for source in (extra, contact.get("custom_attributes") or {}, contact.get("additional_attributes") or {}):
        for key in ("browser_language", "language", "locale"):
            if isinstance(source, dict) and isinstance(source.get(key), str) and source[key]:
                return source[key].lower().replace("_", "-")
    return None


def parse_conversation(conv: Any, account_id: int | None) -> Conversation:
    if not isinstance(conv, dict):
        raise PayloadError("no conversation object")
    display_id, status = _int(conv.get("id")), conv.get("status")
    messages = conv.get("messages") or []
    if account_id is None and messages and isinstance(messages[0], dict):
        account_id = _int(messages[0].get("account_id"))
    if isinstance(conv.get("account"), dict) and account_id is None:
        account_id = _int(conv["account"].get("id"))
    if display_id is None or account_id is None or not isinstance(status, str):
        raise PayloadError("conversation id, account id or status missing")
    meta = conv.get("meta") if isinstance(conv.get("meta"), dict) else {}
    contact = _contact(conv)
    contact_id = _int(contact.get("id")) or _int((conv.get("contact_inbox") or {}).get("contact_id"))
    assignee = meta.get("assignee")
    assignee_kind = {"User": "user", "AgentBot": "agent_bot"}.get(meta.get("assignee_type") or "", None)
    return Conversation(
        account_id=account_id,
        display_id=display_id,
        inbox_id=_int(conv.get("inbox_id")),
        status=status,
        contact=Person(contact_id, "contact", str(contact.get("name") or "")),
        contact_identifier=contact.get("identifier"),
        contact_phone=contact.get("phone_number"),
        assignee=_person(assignee, assignee_kind or "user") if isinstance(assignee, dict) and assignee else None,
        first_reply_at=conv.get("first_reply_created_at") or None,
        last_message_id=_int(messages[0].get("id")) if messages and isinstance(messages[0], dict) else None,
        updated_at=str(conv.get("updated_at") or ""),
        raw=conv,
    )


def parse(body: dict, delivery_id: str | None = None) -> Delivery:
    """Turn a delivery body into a Delivery; PayloadError when a needed field is missing."""
    event = body.get("event")
    if not isinstance(event, str):
        raise PayloadError("no event name")
    if event in MESSAGE_EVENTS:
        account = body.get("account") if isinstance(body.get("account"), dict) else {}
        conversation = parse_conversation(body.get("conversation"), _int(account.get("id")))
        kind, message_id = body.get("message_type"), _int(body.get("id"))
        if kind not in ("incoming", "outgoing", "template") or message_id is None:
            raise PayloadError("message id or message_type missing")
        sender_kind = "contact" if kind == "incoming" else None
        message = Message(
            id=message_id,
            kind=kind,
            private=bool(body.get("private")),
            content=body.get("content") if isinstance(body.get("content"), str) else None,
            sender=_person(body.get("sender"), sender_kind),
            source_id=body.get("source_id") if isinstance(body.get("source_id"), str) else None,
        )
        return Delivery(event, delivery_id, conversation, message)
    if event in CONVERSATION_EVENTS:
        return Delivery(event, delivery_id, parse_conversation(body, None))
    return Delivery(event, delivery_id)
