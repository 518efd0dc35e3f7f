"""The fake Chatwoot's data: accounts, inboxes, contacts, conversations, messages, and payload shapes."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

PAYLOADS = Path(__file__).resolve().parents[1] / "payloads"  # real-shaped deliveries (docs/chatwoot.md, Events)
MESSAGE_TYPES = {"incoming": 0, "outgoing": 1, "activity": 2, "template": 3}


def fixture(name: str) -> dict:
    return json.loads((PAYLOADS / f"{name}.json").read_text())


_MESSAGE = json.dumps(fixture("message_created_incoming_pending"))
_CONVERSATION = json.dumps(fixture("conversation_opened"))  # parsed afresh for every payload (a deep copy)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class User:
    id: int
    name: str
    token: str
    role: str = "agent"  # or "administrator"
    availability: str = "online"
    roles: dict[int, str] | None = None  # account id → role; None: only the fake's account, with `role`

    def push(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "available_name": self.name,
            "avatar_url": "",
            "type": "user",
            "availability_status": self.availability,
            "thumbnail": "",
        }


@dataclass
class Bot:
    id: int
    name: str
    token: str
    account_id: int | None = 1
    outgoing_url: str = ""
    secret: str | None = None
    description: str = ""

    def push(self) -> dict:
        return {"id": self.id, "name": self.name, "avatar_url": "", "type": "agent_bot"}

    def json(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "thumbnail": "",
            "outgoing_url": self.outgoing_url,
            "bot_type": "webhook",
            "bot_config": {},
            "account_id": self.account_id,
            "access_token": {"id": self.id * 10, "owner_type": "AgentBot", "owner_id": self.id, "token": self.token},
            "secret": self.secret,
            "system_bot": self.account_id is None,
        }


@dataclass
class Inbox:
    id: int
    name: str
    channel: str = "Channel::WebWidget"
    bot_id: int | None = None
    single_conversation: bool = True  # lock_to_single_conversation / widget continuity
    auto_assign: bool = True  # enable_auto_assignment: round robin among online agents when a conversation opens


@dataclass
class Contact:
    id: int
    name: str
    email: str | None = None
    phone_number: str | None = None
    identifier: str | None = None
    blocked: bool = False
    custom_attributes: dict = field(default_factory=dict)
    additional_attributes: dict = field(default_factory=dict)

    def push(self) -> dict:
        return {
            "additional_attributes": self.additional_attributes,
            "custom_attributes": self.custom_attributes,
            "email": self.email,
            "id": self.id,
            "identifier": self.identifier,
            "name": self.name,
            "phone_number": self.phone_number,
            "thumbnail": "",
            "blocked": self.blocked,
            "type": "contact",
        }

    def webhook(self, account: dict) -> dict:
        data = self.push()
        data.pop("type")
        return {"account": account, **data, "avatar": ""}


@dataclass
class Message:
    id: int
    conversation: Conversation
    content: str | None
    message_type: str
    private: bool
    sender: dict | None
    sender_type: str | None
    source_id: str | None = None
    created_at: float = field(default_factory=time.time)


@dataclass
class Conversation:
    account_id: int
    display_id: int
    inbox: Inbox
    contact: Contact
    status: str
    assignee: User | None = None
    bot_owner: Bot | None = None
    team_id: int | None = None
    priority: str | None = None
    labels: list[str] = field(default_factory=list)
    custom_attributes: dict = field(default_factory=dict)
    first_reply_at: float | None = None
    waiting_since: float | None = None
    messages: list[Message] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    browser_language: str | None = "en"
    updated_at: float = field(default_factory=time.time)  # bumped at every save, as Rails does
    bot_owned_shape: bool = True  # Chatwoot 4.16+: meta.assignee may be the bot, with meta.assignee_type

    def latest(self) -> Message | None:
        for m in reversed(self.messages):
            if not m.private and m.message_type != "activity":
                return m
        return None

    def push(self, teams: dict[int, dict]) -> dict:
        """Conversation#webhook_data, shaped like the fixtures (docs/chatwoot.md, Events)."""
        data = json.loads(_CONVERSATION)
        data.pop("event")
        owner = self.assignee.push() if self.assignee else (self.bot_owner.push() if self.bot_owner else None)
        latest = self.latest()
        data.update(
            {
                "id": self.display_id,
                "inbox_id": self.inbox.id,
                "status": self.status,
                "channel": self.inbox.channel,
                "labels": list(self.labels),
                "custom_attributes": dict(self.custom_attributes),
                "priority": self.priority,
                "first_reply_created_at": iso(self.first_reply_at) if self.first_reply_at else None,
                "waiting_since": int(self.waiting_since or 0),
                "created_at": int(self.created_at),
                "updated_at": self.updated_at,
                "messages": [self._message_push(latest)] if latest else [],
            }
        )
        data["additional_attributes"]["browser_language"] = self.browser_language
        data["contact_inbox"].update({"contact_id": self.contact.id, "inbox_id": self.inbox.id})
        data["meta"] = {
            "sender": self.contact.push(),
            "assignee": owner,
            "assignee_type": "User" if self.assignee else ("AgentBot" if self.bot_owner else None),
            "team": teams.get(self.team_id) if self.team_id else None,
            "hmac_verified": False,
        }
        if not self.bot_owned_shape:  # before 4.16: only a human assignee, no assignee_type
            data["meta"].pop("assignee_type")
            data["meta"]["assignee"] = self.assignee.push() if self.assignee else None
        return data

    def last_activity_at(self) -> float:
        return self.messages[-1].created_at if self.messages else self.created_at

    def partial(self, teams: dict[int, dict]) -> dict:
        """The API's conversation JSON (`api/v1/conversations/partials/_conversation.json.jbuilder`): what
        GET /conversations/{id} and the conversation lists answer. Times are unix ints, 0 when unset;
        `messages` holds the very last message (any kind), `last_non_activity_message` the last one that
        is not an activity (private notes included)."""
        last = self.messages[-1] if self.messages else None
        last_chat = next((m for m in reversed(self.messages) if m.message_type != "activity"), None)
        assignee = None
        if self.assignee:
            assignee = {
                "id": self.assignee.id,
                "account_id": self.account_id,
                "availability_status": self.assignee.availability,
                "auto_offline": True,
                "confirmed": True,
                "email": f"user{self.assignee.id}@acme.example",
                "available_name": self.assignee.name,
                "name": self.assignee.name,
                "role": self.assignee.role,
                "thumbnail": "",
            }
        meta = {
            "sender": {k: v for k, v in self.contact.push().items() if k != "type"},
            "channel": self.inbox.channel,
            "hmac_verified": False,
        }
        if assignee:
            meta["assignee"] = assignee
        if self.team_id and self.team_id in teams:
            meta["team"] = teams[self.team_id]
        activity = int(self.last_activity_at())
        return {
            "meta": meta,
            "id": self.display_id,
            "messages": [self._message_push(last)] if last else [],
            "account_id": self.account_id,
            "uuid": f"00000000-0000-4000-8000-{self.display_id:012d}",
            "additional_attributes": {"browser_language": self.browser_language},
            "agent_last_seen_at": 0,
            "assignee_last_seen_at": 0,
            "can_reply": True,
            "contact_last_seen_at": 0,
            "custom_attributes": dict(self.custom_attributes),
            "inbox_id": self.inbox.id,
            "labels": list(self.labels),
            "muted": self.contact.blocked,
            "snoozed_until": None,
            "status": self.status,
            "created_at": int(self.created_at),
            "updated_at": self.updated_at,  # unix float (the partial's `updated_at.to_f`)
            "timestamp": activity,
            "first_reply_created_at": int(self.first_reply_at or 0),
            "unread_count": 0,
            "last_non_activity_message": self._message_push(last_chat) if last_chat else None,
            "last_activity_at": activity,
            "priority": self.priority,
            "waiting_since": int(self.waiting_since or 0),
            "sla_policy_id": None,
        }

    def _message_push(self, m: Message) -> dict:
        return {
            "id": m.id,
            "content": m.content,
            "account_id": self.account_id,
            "inbox_id": self.inbox.id,
            "conversation_id": self.display_id,
            "message_type": MESSAGE_TYPES[m.message_type],
            "created_at": int(m.created_at),
            "updated_at": iso(m.created_at),
            "private": m.private,
            "status": "sent",
            "source_id": m.source_id,
            "content_type": "text",
            "content_attributes": {},
            "sender_type": m.sender_type,
            "sender_id": (m.sender or {}).get("id"),
            "sender": m.sender,
        }


def message_payload(m: Message, account: dict, teams: dict[int, dict], event: str) -> dict:
    """Message#webhook_data + event, shaped like the fixtures (docs/chatwoot.md, Events)."""
    data = json.loads(_MESSAGE)
    c = m.conversation
    data.update(
        {
            "account": account,
            "content": m.content,
            "conversation": c.push(teams),
            "created_at": iso(m.created_at),
            "id": m.id,
            "inbox": {"id": c.inbox.id, "name": c.inbox.name},
            "message_type": m.message_type,
            "private": m.private,
            "sender": m.sender,
            "source_id": m.source_id,
            "event": event,
        }
    )
    return data
