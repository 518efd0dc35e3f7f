"""forward.Forwarder against the team's-bot stand-in (tests/teambot.py): what one attempt sends and what its
answer comes to; and `check` and `explain` on forwarding."""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp
import pytest
from pydantic import SecretStr

from agentbot.commands import show
from agentbot.config import load
from agentbot.forward import Delivered, Forwarder, HandoffRequest, Refused, Retry, delivery_id, probe
from agentbot.metrics import Metrics
from tests.conftest import counted, free_port, run_main
from tests.fakechatwoot.model import fixture
from tests.teambot import TeamBot

SECRET = "team-bot-secret-0123456789"
# As Chatwoot's Ruby `to_json` writes it: compact, non-ASCII kept, < > & escaped. Re-encoding would change it.
BODY = '{"event":"message_created","id":4711,"content":"Olá \\u003cb\\u003e \\u0026 😀","private":false}'.encode()


@pytest.fixture
async def teambot():
    bots: list[TeamBot] = []

    async def start(**kwargs) -> TeamBot:
        bot = await TeamBot(**kwargs).start()
        bots.append(bot)
        return bot

    yield start
    for bot in bots:
        await bot.close()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


def forwarder(session, secret: str | None = None, timeout: float = 5.0, metrics: Metrics | None = None) -> Forwarder:
    return Forwarder(session, SecretStr(secret) if secret else None, timeout, metrics)


async def test_the_body_goes_unchanged_signed_with_chatwoots_delivery_id(teambot, session):
    team = await teambot(secret=SECRET)
    result = await forwarder(session, SECRET).send(team.url, BODY, "5d0b6d1e-from-chatwoot")
    assert result == Delivered(200)
    [got] = team.delivered
    assert got.body == BODY
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["X-Chatwoot-Delivery"] == "5d0b6d1e-from-chatwoot"
    assert abs(int(got.headers["X-Chatwoot-Timestamp"]) - time.time()) < 5


async def test_without_a_secret_nothing_is_signed(teambot, session):
    team = await teambot()
    made = delivery_id(None, BODY)
    assert await forwarder(session).send(team.url, BODY, made) == Delivered(200)
    [got] = team.delivered
    assert "X-Chatwoot-Signature" not in got.headers and "X-Chatwoot-Timestamp" not in got.headers
    assert got.headers["X-Chatwoot-Delivery"] == made


async def test_a_wrong_secret_is_refused_with_401_and_not_retried(teambot, session, log_lines):
    team = await teambot(secret=SECRET)
    result = await forwarder(session, "another-secret-of-20-chars").send(team.url, BODY, "d1", "conversation 1:42")
    assert isinstance(result, Refused) and result.status == 401
    assert team.refused == [(401, "signature does not match")] and team.delivered == []
    assert any("conversation 1:42: your bot at 127.0.0.1" in line and "401" in line for line in log_lines)


async def test_each_attempt_is_signed_afresh(teambot, session):
    """Chatwoot signs every attempt with a fresh timestamp; the stand-in refuses one older than 5 minutes."""
    team = await teambot(secret=SECRET)
    clock = [time.time() - 400]
    sender = Forwarder(session, SecretStr(SECRET), 5.0, clock=lambda: clock[0])
    assert isinstance(await sender.send(team.url, BODY, "d1"), Refused)
    clock[0] = time.time()
    assert await sender.send(team.url, BODY, "d1") == Delivered(200)
    assert team.refused == [(401, "X-Chatwoot-Timestamp outside 5 minutes")]


@pytest.mark.parametrize(
    "status, retry_after, expected",
    [
        (503, None, Retry('answered 503 {"error":"unavailable"}')),
        (500, None, Retry('answered 500 {"error":"unavailable"}')),
        (502, None, Retry('answered 502 {"error":"unavailable"}')),
        (429, "7", Retry('answered 429 {"error":"unavailable"}', 7.0)),
        (429, "Wed, 21 Oct 2026 07:28:00 GMT", Retry('answered 429 {"error":"unavailable"}')),
        (404, None, Refused(404, 'answered 404 {"error":"unavailable"}')),
        (400, None, Refused(400, 'answered 400 {"error":"unavailable"}')),
        (410, None, Refused(410, 'answered 410 {"error":"unavailable"}')),
    ],
)
async def test_what_an_error_status_comes_to(teambot, session, status, retry_after, expected):
    team = await teambot()
    team.fail(status, retry_after=retry_after)
    assert await forwarder(session).send(team.url, BODY, "d1") == expected
    assert len(team.received) == 1


async def test_a_redirect_is_refused_not_followed(teambot, session):
    """aiohttp would follow a 302 with a GET, which no bot reads: the operator must set the real URL."""
    team = await teambot()
    team.answer(b"", status=302, Location=team.url.replace("chatwoot-7f3a", "moved"))
    result = await forwarder(session).send(team.url, BODY, "d1")
    assert isinstance(result, Refused) and result.status == 302 and "redirect" in result.why
    assert len(team.received) == 1


async def test_forwards_at_once_are_limited_and_waiting_for_a_turn_is_not_the_timeout(teambot, session, monkeypatch):
    """A slow bot must not take every connection of the app's one session (Chatwoot's calls share it)."""
    monkeypatch.setattr("agentbot.forward.IN_FLIGHT", 1)
    team = await teambot()
    team.slow(0.6, times=2)
    sender = forwarder(session, timeout=1.0)  # the second waits 0.6 s for its turn, then takes 0.6 s
    results = await asyncio.gather(sender.send(team.url, BODY, "d1"), sender.send(team.url, BODY, "d2"))
    assert results == [Delivered(200), Delivered(200)]
    assert team.most_at_once == 1


async def test_a_slow_answer_is_waited_for_not_sent_twice(teambot, session):
    team = await teambot()
    team.slow(1.0)
    assert await forwarder(session, timeout=5).send(team.url, BODY, "d1") == Delivered(200)
    assert len(team.received) == 1 and team.repeats() == {}


async def test_no_answer_within_the_timeout_is_a_retry(teambot, session):
    team = await teambot()
    team.slow(2.0)
    result = await forwarder(session, timeout=0.3).send(team.url, BODY, "d1")
    assert result == Retry("no answer within FORWARD_TIMEOUT (0.3 s)")
    assert len(team.received) == 1  # it had the body: the retry carries the same X-Chatwoot-Delivery


async def test_a_reset_connection_is_a_retry(teambot, session):
    team = await teambot()
    team.reset()
    result = await forwarder(session).send(team.url, BODY, "d1")
    assert isinstance(result, Retry), result
    assert team.resets == 1 and team.received == []
    assert await forwarder(session).send(team.url, BODY, "d1") == Delivered(200)


async def test_an_answer_lost_after_the_body_arrived_is_retried_with_the_same_delivery_id(teambot, session):
    team = await teambot(dedup=True)
    team.lose_answer()
    sender = forwarder(session)
    assert isinstance(await sender.send(team.url, BODY, "d1"), Retry)
    assert await sender.send(team.url, BODY, "d1") == Delivered(200)
    assert team.repeats() == {"d1": 2}  # the team's bot saw it twice and can tell
    assert [r.answer for r in team.received] == ["lost", 200]


async def test_a_bot_that_deduplicates_drops_a_repeat(teambot, session):
    team = await teambot(dedup=True)
    sender = forwarder(session)
    assert await sender.send(team.url, BODY, "d1") == Delivered(200)
    assert await sender.send(team.url, BODY, "d1") == Delivered(200)
    assert [r.answer for r in team.received] == [200, "duplicate"] and len(team.delivered) == 1


async def test_nobody_listening_is_a_retry(session):
    url = f"http://127.0.0.1:{free_port()}/hooks/x"
    result = await forwarder(session).send(url, BODY, "d1")
    assert isinstance(result, Retry) and "ClientConnectorError" in result.why


async def test_the_team_bot_asks_for_a_handoff(teambot, session):
    team = await teambot()
    team.ask_handoff("customer wants a refund")
    team.ask_handoff()
    team.answer(b'{"handoff": true}', status=503)  # not a 2xx: no request, a retry
    team.answer(b'{"handoff": "yes"}')
    sender = forwarder(session)
    assert await sender.send(team.url, BODY, "d1") == Delivered(200, HandoffRequest("customer wants a refund"))
    assert await sender.send(team.url, BODY, "d2") == Delivered(200, HandoffRequest(None))
    assert isinstance(await sender.send(team.url, BODY, "d3"), Retry)
    assert await sender.send(team.url, BODY, "d4") == Delivered(200)


async def test_the_secret_and_the_urls_path_are_never_logged(teambot, session, log_lines):
    team = await teambot(secret=SECRET)
    sender = forwarder(session, SECRET)
    team.fail(503)
    team.answer(b"nope", status=404)
    team.ask_handoff("x")
    for _ in range(3):
        await sender.send(team.url, BODY, "d1", "conversation 1:42")
    await sender.send(f"http://127.0.0.1:{free_port()}/hooks/chatwoot-7f3a", BODY, "d1", "conversation 1:42")
    text = "\n".join(log_lines)
    assert text.count("conversation 1:42") == 4
    assert SECRET not in text and "chatwoot-7f3a" not in text


async def test_attempts_are_counted_by_what_they_came_to(teambot, session):
    team = await teambot()
    metrics = Metrics()
    team.fail(503)
    team.answer(b"", status=400)
    sender = forwarder(session, metrics=metrics)
    for _ in range(3):
        await sender.send(team.url, BODY, "d1")
    metrics.forwarded("delivered", 0.7)
    text = metrics.render().decode()
    assert counted(text, "agentbot_forward_attempts_total") == {
        ("retry",): 1.0,
        ("refused",): 1.0,
        ("delivered",): 1.0,
    }
    assert counted(text, "agentbot_forwards_total") == {("delivered",): 1.0}
    assert "agentbot_forward_age_seconds_bucket" in text


# ---- check and explain ----
async def test_probe_says_whether_the_team_bot_answers(teambot, session):
    team = await teambot()
    ok, line = await probe(session, team.url, 2)
    assert ok and "answers (a GET got 405" in line  # its webhook takes POST only: it is there all the same
    assert team.received == []  # a GET: no bot acts on it
    ok, line = await probe(session, f"http://127.0.0.1:{free_port()}/hooks/chatwoot-7f3a", 2)
    assert not ok and "cannot reach 127.0.0.1" in line and "chatwoot-7f3a" not in line


async def test_check_says_whether_each_forward_url_is_reachable(fake, teambot, tmp_path):
    team = await teambot()
    dead = f"http://127.0.0.1:{free_port()}/gone"
    status, out, _ = await run_main(
        tmp_path,
        "check",
        CHATWOOT_URL=fake.url,
        CHATWOOT_BOT_TOKEN="bot-token-7",
        CHATWOOT_ACCOUNT_ID="1",
        WEBHOOK_TOKEN="w" * 20,
        STORE_URL="memory://",
        FORWARD_URL=team.url,
        INBOX_4_FORWARD_URL=dead,
    )
    lines = out.splitlines()
    assert f"OK   FORWARD_URL: 127.0.0.1:{team.port} answers (a GET got 405" in out
    assert any(line.startswith("FAIL INBOX_4_FORWARD_URL: cannot reach 127.0.0.1") for line in lines), out
    assert any(line.startswith("INFO forwarded deliveries are not signed") for line in lines), out
    assert status == 1


async def test_check_is_quiet_about_forwarding_when_it_is_off(fake, tmp_path):
    status, out, _ = await run_main(
        tmp_path,
        "check",
        CHATWOOT_URL=fake.url,
        CHATWOOT_BOT_TOKEN="bot-token-7",
        CHATWOOT_ACCOUNT_ID="1",
        WEBHOOK_TOKEN="w" * 20,
        STORE_URL="memory://",
    )
    assert status == 0 and "FORWARD" not in out and "forward" not in out


EXPLAINED = {  # payload → explain's forwarding line (FORWARD_URL set, HANDOFF_KEYWORDS=address, a fresh store)
    "message_created_incoming_pending": "forward: no: this message hands the conversation to humans",
    "message_created_outgoing": "forward: yes: the conversation is the bot's (pending, not handed off)",
    "message_created_private_note": "forward: no: the conversation is open: with humans",
    "conversation_resolved": "forward: yes: conversation_resolved: conversation events always go to your bot, "
    "so it can reset its state",
    "webwidget_triggered": "forward: yes: webwidget_triggered: conversation events always go to your bot, "
    "so it can reset its state",
}


@pytest.mark.parametrize("name", EXPLAINED)
async def test_explain_says_whether_a_delivery_would_be_forwarded(tmp_path, capsys, name):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(fixture(name)))
    env = {"STORE_URL": "memory://", "FORWARD_URL": "https://n8n.example.com/webhook/x", "HANDOFF_KEYWORDS": "address"}
    assert await show.explain(load(env, None), argparse.Namespace(payload=str(path), at=None)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == EXPLAINED[name]


async def test_explain_says_nothing_of_forwarding_when_it_is_off(tmp_path, capsys):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(fixture("message_created_incoming_pending")))
    assert (
        await show.explain(load({"STORE_URL": "memory://"}, None), argparse.Namespace(payload=str(path), at=None)) == 0
    )
    assert "forward" not in capsys.readouterr().out
