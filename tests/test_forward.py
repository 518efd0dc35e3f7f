"""forward.py's pure parts: which deliveries go to the team's bot (one named row per case), the signature,
the delivery id, the handoff request in an answer, and the forwarding settings."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from agentbot.config import ConfigError, load
from agentbot.events import parse
from agentbot.forward import (
    MAX_REASON,
    Delivered,
    HandoffRequest,
    Next,
    Refused,
    Retry,
    Standing,
    after,
    delivery_id,
    fallback_note,
    handoff_note,
    handoff_request,
    inbox_of,
    sign,
    verdict,
)
from tests.fakechatwoot.model import fixture

URL = "https://n8n.example.com/webhook/9f2c-secret-path"
OTHER = "https://dify.example.com/hook"
SECRET = "team-bot-secret-0123456789"


@dataclass
class Row:
    payload: str
    forward: bool
    reason: str  # a part of the verdict's reason
    status: str | None = None  # the payload's conversation status, when changed
    standing: Standing = field(default_factory=Standing)
    env: dict[str, str] = field(default_factory=lambda: {"FORWARD_URL": URL})
    url: str | None = URL  # where a forwarded delivery goes


BOTS = "the conversation is the bot's"
RESET = "conversation events always go to your bot"
ROWS = {
    "customer message, pending": Row("message_created_incoming_pending", True, BOTS),
    "the bot's own reply echoed, pending": Row("message_created_outgoing", True, BOTS),
    "receipt or form answer, pending": Row("message_updated", True, BOTS),
    "private note, pending": Row("message_created_private_note", True, BOTS, status="pending"),
    "returning customer reopened to pending, kept by the rules": Row("message_created_incoming_reopened", True, BOTS),
    "the message that hands off": Row(
        "message_created_incoming_pending", False, "this message hands", standing=Standing(handoff_now=True)
    ),
    "the returning customer's message that hands off": Row(
        "message_created_incoming_reopened", False, "this message hands", standing=Standing(handoff_now=True)
    ),
    "handed off, the open queued or deferred to business hours (still pending in Chatwoot)": Row(
        "message_created_incoming_pending", False, "bot handed", standing=Standing(handed_off=True)
    ),
    "message_updated after the handoff": Row(
        "message_updated", False, "bot handed", standing=Standing(handed_off=True)
    ),
    "customer message, open": Row("message_created_incoming_pending", False, "is open: with humans", status="open"),
    "customer message, snoozed": Row("message_created_incoming_pending", False, "is snoozed", status="snoozed"),
    "customer message, resolved (blocked contact)": Row(
        "message_created_incoming_pending", False, "is resolved", status="resolved"
    ),
    "agent's private note, open": Row("message_created_private_note", False, "is open: with humans"),
    "the #bot note that gives it back (still open)": Row("message_created_private_note", False, "is open"),
    "late message written while pending, the bot saw it opened since": Row(
        "message_created_incoming_pending", False, "is open", standing=Standing(status="open")
    ),
    "after a give-back: pending again, not handed off": Row(
        "message_created_incoming_pending", True, BOTS, standing=Standing(status="pending")
    ),
    "new pending period after a resolve": Row(
        "message_created_incoming_reopened", True, BOTS, standing=Standing(status="pending")
    ),
    "conversation_opened by the bot's own handoff": Row("conversation_opened", True, RESET),
    "conversation_opened while handed off": Row("conversation_opened", True, RESET, standing=Standing(handed_off=True)),
    "conversation_resolved": Row("conversation_resolved", True, RESET),
    "conversation_status_changed": Row("conversation_status_changed", True, RESET),
    "conversation_updated": Row("conversation_updated", True, RESET),
    "webwidget_triggered": Row("webwidget_triggered", True, RESET),
    "no FORWARD_URL": Row("message_created_incoming_pending", False, "no FORWARD_URL", env={}, url=None),
    "off in this inbox (blank INBOX_3_FORWARD_URL)": Row(
        "message_created_incoming_pending",
        False,
        "off in inbox 3",
        env={"FORWARD_URL": URL, "INBOX_3_FORWARD_URL": ""},
        url=None,
    ),
    "widget event, off in its inbox": Row(
        "webwidget_triggered", False, "off in inbox 3", env={"FORWARD_URL": URL, "INBOX_3_FORWARD_URL": ""}, url=None
    ),
    "only this inbox forwards": Row(
        "message_created_incoming_pending", True, BOTS, env={"INBOX_3_FORWARD_URL": OTHER}, url=OTHER
    ),
    "another inbox forwards, not this one": Row(
        "conversation_resolved", False, "no FORWARD_URL", env={"INBOX_4_FORWARD_URL": OTHER}, url=None
    ),
    "this inbox forwards elsewhere": Row(
        "conversation_resolved", True, RESET, env={"FORWARD_URL": URL, "INBOX_3_FORWARD_URL": OTHER}, url=OTHER
    ),
}


def body_of(row: Row) -> bytes:
    payload: dict[str, Any] = fixture(row.payload)
    if row.status:
        target = payload.get("conversation", payload)
        target["status"] = row.status
    return json.dumps(payload).encode()


@pytest.mark.parametrize("name", ROWS)
def test_verdict(name):
    row = ROWS[name]
    body = body_of(row)
    delivery = parse(body)
    got = verdict(delivery, row.standing, load(row.env, None), inbox_of(delivery, body))
    assert (got.forward, got.url) == (row.forward, row.url if row.forward else None), got.reason
    assert row.reason in got.reason


def test_inbox_of_a_body_without_a_conversation_or_without_an_inbox():
    assert inbox_of(parse(b'{"event":"webwidget_triggered","inbox":{"id":9}}'), b'{"inbox":{"id":9}}') == 9
    body = b'{"event":"contact_updated","inbox":"three"}'
    assert inbox_of(parse(body), body) is None


def test_signature_is_chatwoots():
    """As Chatwoot's Webhooks::Trigger makes it (#13892): sha256=hex(HMAC-SHA256(secret, "<ts>.<raw body>"))."""
    body = '{"event":"message_created","content":"Olá \\u003cb\\u003e"}'.encode()
    headers = sign(SECRET, body, 1_790_000_000.9)
    assert headers["X-Chatwoot-Timestamp"] == "1790000000"
    expected = hmac.new(SECRET.encode(), b"1790000000." + body, hashlib.sha256).hexdigest()
    assert headers["X-Chatwoot-Signature"] == f"sha256={expected}"
    assert set(headers) == {"X-Chatwoot-Timestamp", "X-Chatwoot-Signature"}


def test_delivery_id_is_chatwoots_or_stable_per_body():
    assert delivery_id("5d0b6d1e-chatwoot", b"{}") == "5d0b6d1e-chatwoot"
    made = delivery_id(None, b'{"id":1}')
    assert made == delivery_id(None, b'{"id":1}') != delivery_id(None, b'{"id":2}')
    assert len(made) == 36  # a UUID, as Chatwoot's


ANSWERS = {
    "asks, with a reason": (b'{"handoff": true, "reason": "wants a refund"}', HandoffRequest("wants a refund")),
    "asks, no reason": (b'{"handoff": true}', HandoffRequest(None)),
    "asks, blank reason": (b'{"handoff": true, "reason": "  "}', HandoffRequest(None)),
    "asks, reason not text": (b'{"handoff": true, "reason": 42}', HandoffRequest(None)),
    "asks, with other keys": (b'{"ok": 1, "handoff": true, "reason": "x"}', HandoffRequest("x")),
    "handoff false": (b'{"handoff": false, "reason": "x"}', None),
    "handoff as a string": (b'{"handoff": "true"}', None),
    "handoff as 1": (b'{"handoff": 1}', None),
    "an array": (b"[true]", None),
    "plain text": (b"OK", None),
    "empty": (b"", None),
    "n8n's default answer": (b'{"message":"Workflow was started"}', None),
    "deeply nested": (b'{"x":' + b"[" * 10_000 + b"]" * 10_000 + b"}", None),
}


@pytest.mark.parametrize("name", ANSWERS)
def test_handoff_request_in_an_answer(name):
    body, expected = ANSWERS[name]
    assert handoff_request(body) == expected


def test_a_long_reason_is_cut_for_the_note():
    got = handoff_request(json.dumps({"handoff": True, "reason": "x" * 5000}).encode())
    assert got is not None and got.reason == "x" * MAX_REASON


AFTER = {  # attempt's result, seconds since the webhook accepted the delivery (FORWARD_MAX_AGE 120) → next
    "delivered": (Delivered(200), 1, Next.DONE),
    "delivered late, still counted": (Delivered(204), 500, Next.DONE),
    "delivered with a handoff request": (Delivered(200, HandoffRequest("refund")), 1, Next.HANDOFF),
    "5xx, time left": (Retry("answered 503"), 119.9, Next.RETRY),
    "timeout, time up": (Retry("no answer"), 120, Next.EXPIRED),
    "4xx: not retried even with time left": (Refused(404, "answered 404"), 1, Next.REFUSED),
    "4xx after the deadline: still refused, not a fallback": (Refused(401, "answered 401"), 300, Next.REFUSED),
}


@pytest.mark.parametrize("name", AFTER)
def test_what_an_attempt_leads_to(name):
    result, age, expected = AFTER[name]
    assert after(result, 1000.0, 1000.0 + age, 120) is expected


def test_notes_name_the_host_and_the_reason_never_the_path():
    note = fallback_note(URL, 1_790_000_000)
    assert (
        note == "Your bot at n8n.example.com did not answer since 2026-09-21 14:13:20 UTC; handed to a person instead"
    )
    assert handoff_note(HandoffRequest("wants a refund")) == "Your bot asked for a person: wants a refund"
    assert handoff_note(HandoffRequest(None)) == "Your bot asked for a person"


# ---- settings ----
def test_forward_settings_defaults_and_per_inbox_override():
    s = load({"FORWARD_URL": URL, "INBOX_3_FORWARD_URL": "", "INBOX_4_FORWARD_URL": OTHER}, None)
    assert (s.forward_timeout, s.forward_max_age, s.forward_fallback, s.forward_secret) == (30, 120, "open", None)
    assert (s.rules_for(3).forward_url, s.rules_for(4).forward_url, s.rules_for(5).forward_url) == (None, OTHER, URL)
    assert "forwarded to your bot at n8n.example.com" in "\n".join(s.describe())
    assert all("secret-path" not in line for line in s.describe())
    assert load({}, None).forwards is False and s.forwards is True


@pytest.mark.parametrize(
    "env, says",
    [
        ({"FORWARD_URL": "ftp://n8n.example.com/x"}, "FORWARD_URL: not an http(s) URL"),
        ({"FORWARD_URL": "n8n.example.com/webhook"}, "FORWARD_URL: not an http(s) URL"),
        ({"FORWARD_URL": "https://n8n.example.com:99999/x"}, "FORWARD_URL: not an http(s) URL"),
        ({"INBOX_3_FORWARD_URL": "https:///x"}, "INBOX_3_FORWARD_URL: not an http(s) URL"),
        ({"FORWARD_SECRET": "short"}, "FORWARD_SECRET: shorter than 16 characters"),
        ({"FORWARD_TIMEOUT": "0"}, "FORWARD_TIMEOUT: Input should be greater than 0"),
        ({"FORWARD_TIMEOUT": "soon"}, "FORWARD_TIMEOUT: Input should be a valid number"),
        ({"FORWARD_MAX_AGE": "4"}, "FORWARD_MAX_AGE: Input should be greater than or equal to 5"),
        ({"FORWARD_FALLBACK": "close"}, "FORWARD_FALLBACK: Input should be 'open' or 'keep'"),
        ({"FORWARD_URL": URL, "FORWARD_MAX_AGE": "10"}, "FORWARD_TIMEOUT: 30 s is longer than FORWARD_MAX_AGE"),
    ],
)
def test_a_bad_forward_setting_is_one_line_naming_the_variable(env, says):
    with pytest.raises(ConfigError) as exc:
        load(env, None)
    line = str(exc.value)
    assert line.startswith(says) and "\n" not in line
    assert "secret-path" not in line and "short" not in line.split(":", 1)[1].replace("shorter", "")


def test_forward_settings_accept_their_other_spellings():
    s = load({"FORWARD_FALLBACK": " KEEP ", "FORWARD_SECRET": SECRET, "FORWARD_TIMEOUT": "2.5", "FORWARD_MAX_AGE": "5"})
    assert (s.forward_fallback, s.forward_timeout, s.forward_max_age) == ("keep", 2.5, 5)
    assert s.forward_secret is not None and SECRET not in repr(s)
    assert load({"FORWARD_SECRET": ""}, None).forward_secret is None
