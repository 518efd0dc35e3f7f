"""Bad input gets a clear answer and changes nothing; signatures are checked in a time window."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time

import pytest

from tests.conftest import returning, wait_for
from tests.fakechatwoot.model import fixture
from tests.fakechatwoot.server import BOT_SECRET


def signed(body: bytes, secret: str = BOT_SECRET, ts: int | None = None) -> dict:
    ts = int(time.time()) if ts is None else ts
    sig = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return {
        "X-Chatwoot-Timestamp": str(ts),
        "X-Chatwoot-Signature": f"sha256={sig}",
        "Content-Type": "application/json",
    }


def reopened_body() -> bytes:
    return json.dumps(fixture("message_created_incoming_reopened")).encode()


async def assert_nothing_changed(fake, bot):
    await bot.idle()
    assert fake.calls == []
    assert await bot.bot.store.depth() == 0


async def test_a_valid_signed_delivery_acts(fake, start_bot):
    maria = fake.contact()
    fake.customer_writes(maria, "seed")  # conversation 40 exists; the fixture speaks of 42
    bot = await start_bot()
    body = fixture("message_created_incoming_reopened")
    body["conversation"]["id"] = 40
    raw = json.dumps(body).encode()
    status, answer = await bot.post(raw, signed(raw))
    assert status == 200 and answer["outcome"] == "handoff"
    await wait_for(lambda: fake.conversation(40).status == "open", 10, "the handoff")


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"{not json", "body is not JSON"),
        (b'[{"event": "message_created"}]', "body is not a JSON object"),
        (b'"message_created"', "body is not a JSON object"),
    ],
)
async def test_body_that_is_not_a_json_object_gets_400(fake, start_bot, raw, message):
    bot = await start_bot()
    status, answer = await bot.post(raw, signed(raw))
    assert status == 400 and answer == {"error": message}
    await assert_nothing_changed(fake, bot)


async def test_body_over_one_mebibyte_gets_413(fake, start_bot):
    bot = await start_bot()
    raw = json.dumps({"event": "message_created", "content": "x" * (1024 * 1024)}).encode()
    status, answer = await bot.post(raw, signed(raw))
    assert status == 413 and "larger than" in answer["error"]
    await assert_nothing_changed(fake, bot)


async def test_wrong_missing_or_stale_signature_gets_401(fake, start_bot):
    bot = await start_bot()
    raw = reopened_body()
    cases = {
        "wrong secret": signed(raw, secret="not-the-secret"),
        "missing": {"Content-Type": "application/json"},
        "stale": signed(raw, ts=int(time.time()) - 301),
        "garbled time": {**signed(raw), "X-Chatwoot-Timestamp": "yesterday"},
        "other body": signed(raw + b" "),
    }
    for name, headers in cases.items():
        status, answer = await bot.post(raw, headers)
        assert status == 401, name
        assert "error" in answer, name
    await assert_nothing_changed(fake, bot)


@pytest.mark.parametrize("fake", ["4.12"], indirect=True)  # before 4.13 Chatwoot signs nothing
async def test_unsigned_deliveries_are_accepted_without_a_secret(fake, start_bot):
    assert not fake.has("signed")
    maria, conv = returning(fake)
    bot = await start_bot()
    assert bot.settings.chatwoot_bot_secret is None
    fake.customer_writes(maria, "Again")
    await wait_for(lambda: conv.status == "open", 10, "the handoff of an unsigned delivery")
    await bot.idle()
    assert fake.opened_by(conv.display_id) == ["bot:7"]
    assert all(d.answers == [200] for d in fake.deliveries)
    raw = reopened_body()  # a signature nobody asked for is not checked either
    status, answer = await bot.post(raw, signed(raw, secret="whatever"))
    assert status == 200 and answer == {"ok": True}  # unverified: the answer tells an outsider nothing
    await wait_for(lambda: fake.calls_to("toggle_status", 42), 10, "the handoff of conversation 42")


async def test_payload_missing_fields_is_acknowledged_without_acting(fake, start_bot, log_lines):
    bot = await start_bot()
    broken = fixture("message_created_incoming_reopened")
    del broken["conversation"]["id"]
    for body in (broken, {"event": "message_created"}, {"no": "event"}):
        raw = json.dumps(body).encode()
        status, answer = await bot.post(raw, signed(raw))
        assert status == 200 and answer["outcome"] == "ignore"
    await assert_nothing_changed(fake, bot)
    warnings = [line for line in log_lines if line.startswith("WARNING") and "acknowledged without acting" in line]
    assert len(warnings) == 3


async def test_field_of_the_wrong_type_is_acknowledged_without_acting_and_named(fake, start_bot, log_lines):
    bot = await start_bot()
    body = fixture("message_created_incoming_reopened")
    body["conversation"]["inbox_id"] = "3"
    raw = json.dumps(body).encode()
    status, answer = await bot.post(raw, signed(raw))
    assert status == 200 and answer["outcome"] == "ignore"
    assert answer["reason"] == "Expected `int | null`, got `str` - at `$.conversation.inbox_id`"
    await assert_nothing_changed(fake, bot)
    assert any("acknowledged without acting" in line and "$.conversation.inbox_id" in line for line in log_lines)


async def test_unknown_events_are_acknowledged(fake, start_bot):
    bot = await start_bot()
    # Events the bot doesn't read may use its field names with other types: still a plain ignore.
    for body in (
        {"event": "contact_created", "id": 1},
        {"event": "contact_updated", "id": "c-1", "status": 3},
        fixture("webwidget_triggered"),
    ):
        raw = json.dumps(body).encode()
        status, answer = await bot.post(raw, signed(raw))
        assert status == 200 and answer["outcome"] == "ignore"
    await assert_nothing_changed(fake, bot)


async def test_secrets_never_reach_the_log(fake, start_bot, log_lines):
    bot = await start_bot(CHATWOOT_API_TOKEN="user-token-5")
    raw = reopened_body()
    headers = signed(raw, secret="not-the-secret")
    await bot.post(raw, headers)
    fake.bots[7].token = "revoked"
    fake.customer_writes(fake.contact(), "hi")
    fake.agent_writes(40, "hello")
    await bot.idle()
    err = "\n".join(log_lines)
    assert "CHATWOOT_BOT_TOKEN" in err  # the 401 is named, the token is not
    for secret in ("bot-token-7", "bot-secret-7", "user-token-5", headers["X-Chatwoot-Signature"]):
        assert secret not in err


async def test_deeply_nested_json_gets_400(fake, start_bot):
    bot = await start_bot()
    raw = b'{"event": "message_created", "conversation": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, answer = await bot.post(raw, signed(raw))
    assert status == 400 and answer == {"error": "body is nested too deeply"}
    assert fake.calls == []


# ---- within: the delivery's time limit, started only once the decision has to wait ------------------------------
async def test_within_returns_what_a_decision_that_never_waits_returns():
    from agentbot.eager import within

    async def decided() -> str:
        return "ignore"

    assert await within(decided(), 0.01) == "ignore"


async def test_within_waits_with_the_coroutine_and_passes_its_errors_on():
    from agentbot.eager import within

    async def slow(value: str) -> str:
        await asyncio.sleep(0.02)
        await asyncio.sleep(0)
        return value

    async def failing() -> None:
        await asyncio.sleep(0)
        raise KeyError("store")

    assert await within(slow("handoff"), 1) == "handoff"
    with pytest.raises(KeyError):
        await within(failing(), 1)


async def test_within_cuts_a_stalled_decision_short_and_lets_it_clean_up():
    from agentbot.eager import within

    cleaned = []

    async def stalled() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.append(True)

    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await within(stalled(), 0.05)
    assert cleaned == [True] and asyncio.get_running_loop().time() - started < 5
