"""Only Chatwoot can drive the bot: the webhook token, signatures, answers that tell an outsider
nothing, and look-ups a flood of forged deliveries cannot turn against Chatwoot."""

from __future__ import annotations

import asyncio
import json
import random
import sys
from datetime import timedelta

import aiohttp
import pytest

from tests.conftest import Clock, returning, wait_for
from tests.fakechatwoot.model import fixture
from tests.test_webhook import signed

TOKEN = "wh-3fK9pQ2mZx7LrT5vB8nC1dY6"


async def raw_post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers or {}) as r:
        return r.status, await r.text()


def forged(display_id: int, contact_id: int = 58, kind: str = "reopened", **conversation) -> bytes:
    """What an outsider who knows the URL would post: a customer message in a pending conversation
    (`reopened`: one a human handled before; `pending`: a new customer's)."""
    body = fixture(f"message_created_incoming_{kind}")
    body["conversation"].update({"id": display_id, **conversation})
    body["conversation"]["meta"]["sender"]["id"] = contact_id
    body["sender"]["id"] = contact_id
    return json.dumps(body).encode()


async def nothing_changed(fake, bot) -> None:
    await bot.idle()
    assert [c for c in fake.calls if c.caller == "bot"] == []
    assert await bot.bot.store.depth() == 0


async def test_with_a_token_only_the_token_url_is_accepted(fake, start_bot, log_lines):
    maria, conv = returning(fake)
    fake.bots[7].secret = None  # Chatwoot before 4.13: nothing is signed
    bot = await start_bot(WEBHOOK_TOKEN=TOKEN)
    body = forged(conv.display_id, maria.id)
    wrong = {
        "plain /webhook": (bot.url + "/webhook", {}),
        "wrong token": (bot.url + "/webhook/" + TOKEN[:-1] + "x", {}),
        "token plus a tail": (bot.url + f"/webhook/{TOKEN}x", {}),
        "token in the query string": (bot.url + f"/webhook?token={TOKEN}", {}),
        "token in a header": (bot.url + "/webhook", {"X-Webhook-Token": TOKEN, "Authorization": f"Bearer {TOKEN}"}),
        "token as a deeper path": (bot.url + f"/webhook/x/{TOKEN}", {}),
    }
    for name, (url, headers) in wrong.items():
        status, text = await raw_post(url, body, headers)
        assert status == 404, name
        assert TOKEN not in text and "webhook" not in text, name
    async with aiohttp.ClientSession() as s:
        async with s.get(bot.url + "/webhook/" + TOKEN[:-1] + "x") as r:
            assert r.status == 404  # not 405: a wrong token tells nothing about the route
        async with s.get(bot.url + f"/webhook/{TOKEN}") as r:
            assert r.status == 405
    await nothing_changed(fake, bot)
    assert conv.status == "resolved"

    fake.customer_writes(maria, "me again")  # Chatwoot delivers to /webhook/<token>
    await wait_for(lambda: conv.status == "open", 10, "the handoff")
    assert fake.opened_by(conv.display_id) == ["bot:7"]
    _, metrics = await bot.get("/metrics")
    assert TOKEN not in metrics and TOKEN not in "\n".join(log_lines)


async def test_a_verified_delivery_gets_the_decision_an_unverified_one_only_ok(fake, start_bot):
    maria, conv = returning(fake)
    fake.bots[7].secret = None
    bot = await start_bot()
    status, answer = await bot.post(forged(conv.display_id, maria.id))
    assert (status, answer) == (200, {"ok": True})
    status, answer = await bot.post(b'{"event": "message_created", "conversation": {"id": "x"}}')
    assert (status, answer) == (200, {"ok": True})

    await bot.stop()
    fake.calls.clear()
    bot = await start_bot(WEBHOOK_TOKEN=TOKEN)
    status, answer = await bot.post(forged(conv.display_id, maria.id, status="open"))
    assert status == 200 and set(answer) == {"outcome", "reason"}


async def test_forged_deliveries_without_the_token_change_nothing(fake, start_bot):
    maria, conv = returning(fake)
    fresh = fake.customer_writes(fake.contact("Ana"), "hi").conversation  # pending, before the bot runs
    bot = await start_bot(WEBHOOK_TOKEN=TOKEN, GREETING_MESSAGE="Hi {name}", HANDOFF_MESSAGE="Thanks {name}")
    for display_id, contact_id in ((conv.display_id, maria.id), (fresh.display_id, fresh.contact.id)):
        body = forged(display_id, contact_id)
        status, _ = await raw_post(bot.url + "/webhook", body, signed(body))  # even correctly signed
        assert status == 404
    note = json.loads(forged(fresh.display_id, fresh.contact.id))
    note.update(
        {
            "private": True,
            "message_type": "outgoing",
            "content": "#bot",
            "sender": {"id": 5, "name": "Sam", "type": "user"},
        }
    )
    note["conversation"]["status"] = "open"
    status, _ = await raw_post(bot.url + "/webhook", json.dumps(note).encode())
    assert status == 404
    await nothing_changed(fake, bot)
    assert conv.status == "resolved" and fresh.status == "pending" and fake.bot_messages(fresh.display_id) == []


async def test_a_replayed_signed_delivery_outside_the_window_changes_nothing(fake, start_bot):
    maria, conv = returning(fake)
    clock = Clock()
    bot = await start_bot(clock)
    captured = {}

    async def capture(request):
        captured["body"], captured["headers"] = await request.read(), dict(request.headers)
        return aiohttp.web.json_response({})

    from aiohttp import web

    app = web.Application()
    app.router.add_post("/", capture)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.connect_bot(f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/")
    fake.customer_writes(maria, "me again")
    await wait_for(lambda: "body" in captured, 10, "the signed delivery")
    await runner.cleanup()
    fake.set_status(conv.display_id, "resolved")
    fake.calls.clear()
    clock.at = fake_now = clock() + timedelta(minutes=6)
    fake.now = lambda: fake_now.timestamp()
    headers = {k: v for k, v in captured["headers"].items() if k.startswith(("X-Chatwoot", "Content-Type"))}
    status, answer = await bot.post(captured["body"], headers)
    assert status == 401 and "5 minute window" in answer["error"]
    await nothing_changed(fake, bot)
    assert conv.status == "resolved"


async def test_a_blank_secret_is_no_secret(fake, start_bot):
    maria, conv = returning(fake)
    fake.bots[7].secret = None  # Chatwoot before 4.13
    bot = await start_bot(CHATWOOT_BOT_SECRET="", WEBHOOK_TOKEN=TOKEN)
    assert bot.settings.chatwoot_bot_secret is None
    fake.customer_writes(maria, "me again")
    await wait_for(lambda: conv.status == "open", 10, "the handoff")
    await bot.idle()
    assert fake.opened_by(conv.display_id) == ["bot:7"] and fake.fallbacks == []


async def test_a_signature_made_with_an_empty_key_verifies_nothing(fake, start_bot):
    maria, conv = returning(fake)
    bot = await start_bot(CHATWOOT_BOT_SECRET="")
    body = forged(conv.display_id, maria.id)
    status, answer = await bot.post(body, signed(body, secret=""))
    assert (status, answer) == (200, {"ok": True})


async def test_without_secret_or_token_start_up_warns_what_anyone_can_do(fake, start_bot, log_lines):
    fake.bots[7].secret = None
    await start_bot()
    warning = [line for line in log_lines if line.startswith("WARNING") and "WEBHOOK_TOKEN" in line]
    assert len(warning) == 1 and "anyone" in warning[0] and "CHATWOOT_BOT_SECRET" in warning[0]
    log_lines.clear()
    await start_bot(WEBHOOK_TOKEN=TOKEN)
    assert not [line for line in log_lines if line.startswith("WARNING")]


@pytest.mark.parametrize("lookup_seconds", [0.0, 0.05])  # fast: the per-minute cap; slow: also the 4 at a time
async def test_a_flood_of_forged_deliveries_cannot_spend_chatwoots_rate_limit(fake, start_bot, lookup_seconds):
    fake.bots[7].secret = None
    fake.rate_limit = 800  # harsher than Chatwoot's 3000 a minute, so a flood that outnumbers it stays cheap to send
    maria, conv = returning(fake)
    bot = await start_bot(CHATWOOT_API_TOKEN="user-token-5")
    rng = random.Random(11)
    flood = [
        forged(10_000 + i, rng.randrange(10**6, 10**9), "pending") for i in range(fake.rate_limit)
    ]  # one minute's worth
    statuses: list[int] = []
    fake.fail("contact_conversations", hang=lookup_seconds, times=len(flood))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as s:

        async def send(body: bytes) -> None:
            async with s.post(bot.url + "/webhook", data=body) as r:
                statuses.append(r.status)
                assert await r.json() == {"ok": True}

        await asyncio.gather(*(send(b) for b in flood))
    assert statuses == [200] * len(flood)
    assert 1 <= fake.max_lookups_in_flight <= 4
    fake.customer_writes(maria, "me again")  # a real returning customer, right after the flood
    await wait_for(lambda: conv.status == "open", 5, "the real handoff")
    await bot.idle()
    assert fake.opened_by(conv.display_id) == ["bot:7"]
    assert [c for c in fake.calls if c.status == 429] == []


async def test_a_burst_while_chatwoot_is_slow_is_answered_within_chatwoots_deadline(fake, start_bot, monkeypatch):
    fake.bots[7].secret = None
    bot = await start_bot(CHATWOOT_API_TOKEN="user-token-5", WEBHOOK_TOKEN=TOKEN)
    # Scaled down: the bot gives up on a look-up after 0.5 s (2 s) and Chatwoot waits 1.25 s (5 s).
    lookups = sys.modules[type(bot.bot.handoffs.lookups).__module__]
    assert lookups.LOOKUP_TIMEOUT < fake.webhook_timeout == 5.0  # the real look-up timeout beats Chatwoot's deadline
    monkeypatch.setattr(lookups, "LOOKUP_TIMEOUT", 0.5)
    fake.webhook_timeout = 1.25
    slow = fake.hold("contact_conversations")  # Chatwoot does not answer the look-ups
    ana = fake.contact("Ana")
    conv = fake.customer_writes(ana, "hello").conversation
    fake.customer_writes(ana, "anyone?")
    fake.customer_writes(ana, "hello??")
    await wait_for(lambda: len(fake.deliveries) >= 3 and all(d.done for d in fake.deliveries), 15, "the deliveries")
    assert [d.answers for d in fake.deliveries if d.event == "message_created"] == [[200]] * 3
    assert fake.fallbacks == [] and conv.status == "pending"
    assert fake.max_lookups_in_flight == 1  # the failed look-up is remembered for the contact
    slow.release.set()


async def test_a_delivery_whose_conversation_stays_locked_gets_500_in_time_and_the_retry_acts(
    fake, start_bot, monkeypatch
):
    fake.bots[7].secret = None
    maria, conv = returning(fake)
    bot = await start_bot(WEBHOOK_TOKEN=TOKEN)
    # Scaled down: the bot gives up on the lock after 0.5 s (4 s) and Chatwoot waits 1 s (5 s).
    handoffs = sys.modules[type(bot.bot.handoffs).__module__]
    assert handoffs.DELIVERY_BUDGET < fake.webhook_timeout == 5.0  # the real budget beats Chatwoot's deadline
    monkeypatch.setattr(handoffs, "DELIVERY_BUDGET", 0.5)
    fake.webhook_timeout = 1.0
    release = asyncio.Event()

    async def another_instance_holds_the_conversation():
        async with bot.bot.store.lock(f"1:{conv.display_id}"):
            await release.wait()

    holder = asyncio.create_task(another_instance_holds_the_conversation())
    fake.customer_writes(maria, "me again")
    delivery = next(d for d in reversed(fake.deliveries) if d.event == "message_created")
    await wait_for(lambda: delivery.answers, 6, "the first answer")
    assert delivery.answers == [500] and delivery.seconds[0] < 1.0  # within Chatwoot's deadline: no fallback
    release.set()
    await holder
    await wait_for(lambda: conv.status == "open", 6, "the retried delivery's handoff")
    assert delivery.answers == [500, 200] and fake.opened_by(conv.display_id) == ["bot:7"]
