"""events.parse as a function: every payload fixture, fields of the wrong type, fields missing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agentbot.events import BadBody, Conversation, Message, PayloadError, Person, parse
from tests.fakechatwoot.model import fixture

SAM = Person(5, "user", "Sam Rivera", "online")
BOT = Person(7, "agent_bot", "Triage Bot")
MARIA = Person(58, "contact", "Maria Lopez")


def body(name: str, **changes: Any) -> bytes:
    data = fixture(name)
    data.update(changes)
    return json.dumps(data).encode()


def conversation(c: Conversation | None) -> tuple[Any, ...]:
    assert c is not None
    return (
        c.key,
        c.inbox_id,
        c.status,
        c.contact,
        c.assignee,
        c.bot_owned,
        c.first_reply_at,
        c.last_message_id,
        c.status_changed,
    )


def message(m: Message | None) -> tuple[Any, ...]:
    assert m is not None
    return m.id, m.kind, m.private, m.sender, m.content[:12] if m.content else m.content


@pytest.mark.parametrize(
    "name, want_conversation, want_message",
    [
        pytest.param(
            "message_created_incoming_pending",
            ("1:42", 3, "pending", MARIA, BOT, True, None, 4711, None),
            (4711, "incoming", False, MARIA, "Hi, I need t"),
            id="incoming-pending",
        ),
        pytest.param(
            "message_created_incoming_reopened",
            ("1:42", 3, "pending", MARIA, SAM, False, "2026-09-30T10:20:03.482Z", 4803, None),
            (4803, "incoming", False, MARIA, "Hi again, th"),
            id="incoming-reopened",
        ),
        pytest.param(
            "message_created_outgoing",
            ("1:42", 3, "pending", MARIA, BOT, True, None, 4712, None),
            (4712, "outgoing", False, BOT, "Sure! What i"),
            id="outgoing",
        ),
        pytest.param(
            "message_created_private_note",
            ("1:42", 3, "open", MARIA, SAM, False, None, 4714, None),
            (4715, "outgoing", True, Person(5, "user", "Sam Rivera"), "Customer is "),
            id="private-note",
        ),
        pytest.param(
            "message_updated",
            ("1:42", 3, "pending", MARIA, BOT, True, None, 4713, None),
            (4713, "outgoing", False, BOT, "How can I he"),
            id="message-updated",
        ),
        pytest.param(
            "conversation_opened", ("1:42", 3, "open", MARIA, None, False, None, 4714, None), None, id="opened"
        ),
        pytest.param(
            "conversation_resolved",
            ("1:42", 3, "resolved", MARIA, SAM, False, "2026-09-30T10:20:03.482Z", 4720, None),
            None,
            id="resolved",
        ),
        pytest.param(
            "conversation_status_changed",
            ("1:42", 3, "open", MARIA, None, False, None, 4714, True),
            None,
            id="status-changed",
        ),
        pytest.param(
            "conversation_updated", ("1:42", 3, "open", MARIA, None, False, None, 4714, True), None, id="updated"
        ),
    ],
)
def test_each_payload_fixture(
    name: str, want_conversation: tuple[Any, ...], want_message: tuple[Any, ...] | None
) -> None:
    d = parse(body(name), "delivery-1")
    assert (d.event, d.delivery_id) == (fixture(name)["event"], "delivery-1")
    assert conversation(d.conversation) == want_conversation
    assert (message(d.message) if d.message else None) == want_message


def test_an_event_the_bot_does_not_read_is_kept_without_a_conversation() -> None:
    d = parse(body("webwidget_triggered"))
    assert (d.event, d.conversation, d.message) == ("webwidget_triggered", None, None)


def test_rules_read_labels_attributes_and_language_on_demand() -> None:
    data = fixture("message_created_incoming_pending")
    data["conversation"].update(labels=["VIP", 3], custom_attributes={"plan": "gold"})
    data["conversation"]["meta"]["sender"].update(custom_attributes={"plan": "free", "tier": 2})
    c = parse(json.dumps(data).encode()).conversation
    assert c is not None
    assert (c.labels, c.attributes, c.language) == (("VIP", "3"), {"plan": "gold", "tier": 2}, "en")


@pytest.mark.parametrize(
    "raw, problem",
    [
        pytest.param(b"", "not JSON", id="empty"),
        pytest.param(b"{", "not JSON", id="truncated"),
        pytest.param(b"[1, 2]", "not a JSON object", id="array"),
        pytest.param(b'"message_created"', "not a JSON object", id="string"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "nested too deeply", id="deep"),
    ],
)
def test_a_body_that_is_not_an_object_is_bad(raw: bytes, problem: str) -> None:
    with pytest.raises(BadBody, match=problem):
        parse(raw)


def _without(path: str) -> bytes:
    data = fixture("message_created_incoming_pending")
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[key]
    del node[last]
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    "raw, problem",
    [
        pytest.param(_without("event"), "no event name", id="no-event"),
        pytest.param(_without("id"), "message id or message_type missing", id="no-message-id"),
        pytest.param(_without("message_type"), "message id or message_type missing", id="no-message-type"),
        pytest.param(
            body("message_created_incoming_pending", message_type="activity"),
            "message_type missing",
            id="activity-message",
        ),
        pytest.param(_without("conversation"), "no conversation object", id="no-conversation"),
        pytest.param(
            _without("conversation.id"), "conversation id, account id or status missing", id="no-conversation-id"
        ),
        pytest.param(_without("conversation.status"), "status missing", id="no-status"),
        pytest.param(body("conversation_opened", id=None), "conversation id", id="event-without-id"),
        pytest.param(
            body("message_created_incoming_pending", id="4711"),
            "Expected `int | null`, got `str`",
            id="message-id-a-string",
        ),
        pytest.param(
            body("message_created_incoming_pending", private="yes"), "Expected `bool | null`", id="private-a-string"
        ),
        pytest.param(body("conversation_opened", status=1), "Expected `str | null`, got `int`", id="status-a-number"),
        pytest.param(
            body("message_created_incoming_pending", conversation=[]),
            "Expected `object | null`, got `array`",
            id="conversation-a-list",
        ),
    ],
)
def test_a_missing_or_mistyped_field_names_the_problem(raw: bytes, problem: str) -> None:
    with pytest.raises(PayloadError, match=problem) as caught:
        parse(raw)
    assert caught.value.event == json.loads(raw).get("event")


def test_account_comes_from_the_message_when_the_delivery_has_no_account() -> None:
    data = fixture("message_created_incoming_pending")
    del data["account"]
    c = parse(json.dumps(data).encode()).conversation
    assert c is not None and c.account_id == 1  # from conversation.messages[0].account_id


def test_an_unknown_event_of_another_shape_is_not_an_error() -> None:
    d = parse(json.dumps({"event": "contact_updated", "id": "abc", "status": ["x"]}).encode())
    assert (d.event, d.conversation) == ("contact_updated", None)


def test_dedup_keys_tell_deliveries_apart() -> None:
    message_key = parse(body("message_created_incoming_pending"), "d1").dedup_key
    assert (
        message_key == parse(body("message_created_incoming_pending"), "d2").dedup_key == "e:message_created:4711:1:42"
    )
    assert parse(body("conversation_opened"), "d1").dedup_key == "d:d1"
    assert parse(body("conversation_opened")).dedup_key.startswith("e:conversation_opened:1:42:")
