"""chatwoot.py's answers as structs: what each decoder makes of Chatwoot's shapes, and of answers that are not."""

from __future__ import annotations

import json

import aiohttp
import msgspec
import pytest

from agentbot.chatwoot import (
    Agent,
    AgentBot,
    Chatwoot,
    _agent,
    _decode_bots,
    _decode_inbox_bot,
    _version,
    client_session,
    one_line,
)
from agentbot.events import PayloadError, parse_contact_conversations
from agentbot.events import parse_conversation as _partial


def partial(**changes: object) -> dict[str, object]:
    """api/v1/conversations/partials/_conversation.json.jbuilder, trimmed to what the bot reads: `messages` holds
    the very last message (an activity here), `last_non_activity_message` the last other one (a private note)."""
    note = {
        "id": 11,
        "content": "Handled",
        "message_type": 1,
        "private": True,
        "sender_type": "User",
        "sender": {"id": 5, "name": "Sam", "type": "user"},
        "created_at": 1790000010,
    }
    activity = {
        "id": 12,
        "content": "Conversation was marked resolved",
        "message_type": 2,
        "private": False,
        "created_at": 1790000020,
    }
    data: dict[str, object] = {
        "id": 42,
        "account_id": 1,
        "inbox_id": 3,
        "status": "pending",
        "messages": [activity],
        "last_non_activity_message": note,
        "meta": {"sender": {"id": 58, "name": "Maria Lopez"}},
        "timestamp": 1790000020,
        "last_activity_at": 1790000020,
        "waiting_since": 1790000000,
        "first_reply_created_at": 0,
        "labels": [],
    }
    data.update(changes)
    return data


def test_the_conversation_partial() -> None:
    listed = _partial(json.dumps(partial()).encode())
    c = listed.conversation
    assert (c.key, c.status, c.inbox_id, c.contact.name, c.first_reply_at, c.waiting_since) == (
        "1:42",
        "pending",
        3,
        "Maria Lopez",
        None,
        1790000000.0,
    )
    assert [m.id for m in listed.messages] == [11, 12] and listed.last_activity_at == 1790000020.0
    last = listed.last_message
    assert last is not None and (last.id, last.kind, last.private, last.sender.kind) == (11, "outgoing", True, "user")


def test_a_partial_without_what_the_bot_reads_is_an_unexpected_answer() -> None:
    # chatwoot._call turns either into an Unreadable error (test_lifecycle shows the outbox treating it as one)
    with pytest.raises(PayloadError, match="conversation id, account id or status missing"):
        _partial(json.dumps(partial(status=None)).encode())
    with pytest.raises((PayloadError, msgspec.DecodeError), match="Expected `str | null`, got `int`"):
        _partial(json.dumps(partial(status=3)).encode())


def test_a_contacts_conversations_leave_out_the_unreadable() -> None:
    body = {"payload": [partial(id=40, status="resolved"), partial(id=None), partial(id=41, status="open")]}
    found = parse_contact_conversations(json.dumps(body).encode())
    assert [(x.conversation.display_id, x.conversation.status) for x in found] == [(40, "resolved"), (41, "open")]


@pytest.mark.parametrize(
    "raw, agent",
    [
        pytest.param(
            b'{"id": 6, "name": "Ann", "available_name": "Ann B.", "availability_status": "busy", "role": "agent"}',
            Agent(6, "Ann", "Ann B.", "busy"),
            id="agent",
        ),
        pytest.param(b"null", None, id="no-such-user"),
        pytest.param(b"", None, id="nothing"),
    ],
)
def test_an_assignment_answers_the_agent(raw: bytes, agent: Agent | None) -> None:
    assert _agent(raw) == agent


def test_agent_bots_and_their_tokens() -> None:
    bot = {
        "id": 7,
        "name": "Triage Bot",
        "account_id": 1,
        "outgoing_url": "https://bot/x",
        "access_token": {"id": 70, "token": "bot-token-7"},
        "secret": "s",
    }
    assert _decode_bots(json.dumps([bot]).encode())[0].token == "bot-token-7"
    inbox_bot = _decode_inbox_bot(json.dumps({"agent_bot": {}}).encode())
    assert inbox_bot is not None and inbox_bot.agent_bot == AgentBot() and AgentBot().token is None


@pytest.mark.parametrize(
    "raw, version",
    [
        pytest.param(b'{"version": "4.16.2", "timestamp": "x"}', "4.16.2", id="chatwoot"),
        pytest.param(b"<html>not Chatwoot</html>", None, id="not-json"),
        pytest.param(b'{"version": 4}', None, id="not-a-string"),
    ],
)
def test_the_version(raw: bytes, version: str | None) -> None:
    assert _version(raw) == version


@pytest.mark.parametrize(
    "body, line",
    [
        ('{"error":"Invalid Access Token"}', '{"error":"Invalid Access Token"}'),  # Chatwoot's JSON: as it is
        ("Retry later\n", "Retry later"),
        (
            "<!DOCTYPE html>\n<html><head><style>\nbody { color: red }\n</style><script>var a = 1 < 2;</script>"
            "<title>Not Found &amp; gone</title></head>\n<body>\n  <h1>404</h1>\n<!-- a comment -->\n</body></html>",
            "Not Found & gone 404",
        ),
    ],
)
def test_an_error_body_is_one_line_of_its_words(body: str, line: str) -> None:
    assert one_line(body) == line
    assert len(one_line("<p>" + "word " * 100 + "</p>")) == 200


async def test_the_client_refuses_a_session_that_cannot_tell_which_calls_went_out() -> None:
    """Without chatwoot.TRACE every call that failed would look as if it never reached Chatwoot."""
    async with aiohttp.ClientSession() as bare, client_session() as traced:
        with pytest.raises(ValueError, match="client_session"):
            Chatwoot(bare, "http://127.0.0.1:1", "token")
        Chatwoot(traced, "http://127.0.0.1:1", "token")
