"""review2: the seams between the lifecycle model and issues 21-25, as end-to-end stories against the fakes.
Each xfail names the defect; the fix belongs where its reason says."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from aiohttp import web

from agentbot.forward import IN_FLIGHT
from tests.conftest import wait_for
from tests.fakeevolution import GLOBAL_KEY
from tests.sqlite_locks import hold_write_lock
from tests.teambot import TeamBot
from tests.test_security import raw_post
from tests.test_webhook import signed

JID = "5511912345678@s.whatsapp.net"
WHATSAPP = 4  # the fake Chatwoot's API inbox "WhatsApp"; the fake Evolution's instance has that name
SECRET = "team-bot-secret-0123456789"


@pytest.fixture
async def team():
    bot = await TeamBot(secret=SECRET).start()
    yield bot
    await bot.close()


@pytest.fixture(autouse=True)
def quick_second_pause(monkeypatch):
    monkeypatch.setattr("agentbot.evolution.SECOND_PAUSE", 0.3)


def paused(evo) -> list[str]:
    return [c.body["remoteJid"] for c in evo.calls_to("changeStatus") if c.body["status"] == "paused"]


async def test_a_handoff_the_team_bot_asks_for_pauses_evolutions_bot(fake, start_bot, team, evo):
    team.ask_handoff("wants a refund")
    bot = await start_bot(
        FORWARD_URL=team.url,
        FORWARD_SECRET=SECRET,
        EVOLUTION_URL=evo.url,
        EVOLUTION_API_KEY=GLOBAL_KEY,
        SWEEP_INTERVAL="0",
    )
    contact = fake.contact("Maria Lopez", phone_number="+55 11 91234-5678")
    conv = fake.customer_writes(contact, "My lamp is broken", inbox=WHATSAPP).conversation
    await wait_for(lambda: fake.conversation(conv.display_id).status == "open", 5, "the team bot's handoff")
    await bot.idle()
    assert fake.notes(conv.display_id) == ["Your bot asked for a person: wants a refund"]
    assert paused(evo) == [JID, JID]  # as at a rule's handoff: now, and again a moment later


# A store's outbox workers, and how many of them the other lanes (forward, evolution) may hold at once: half.
# SQLite runs 64; Redis with 8 connections half as many as connections, 4. On SQLite 16 forwards are posted at once
# (forward.IN_FLIGHT), the other 16 of the budget wait for a slot.
STORES = {"sqlite": (64, 32), "redis": (4, 2)}


@pytest.mark.parametrize("backend", STORES)
async def test_a_hanging_team_bot_does_not_hold_up_another_conversations_handoff(
    fake, start_bot, team, backend, request, tmp_path
):
    workers, budget = STORES[backend]
    team.slow(6.0, times=workers + 10)
    redis = {"STORE_URL": request.getfixturevalue("redis"), "REDIS_MAX_CONNECTIONS": "8"}
    await start_bot(
        **(redis if backend == "redis" else {"STORE_URL": f"sqlite:///{tmp_path}/bot.sqlite3"}),
        FORWARD_URL=team.url,
        FORWARD_SECRET=SECRET,
        FORWARD_TIMEOUT="10",
        HANDOFF_KEYWORDS="human",
        SWEEP_INTERVAL="0",
    )
    for n in range(workers + 6):  # more hanging forwards than workers
        fake.customer_writes(fake.contact(f"Customer {n}"), "Which lamp fits my desk?")
    await wait_for(lambda: team.in_flight >= min(budget, IN_FLIGHT), 5, "the forwards under way")
    conv = fake.customer_writes(fake.contact("Maria"), "a human please").conversation
    await wait_for(lambda: fake.conversation(conv.display_id).status == "open", 3, "the handoff's open")
    assert team.most_at_once <= min(budget, IN_FLIGHT)  # no answer yet: the forwards are still hanging


async def test_a_hanging_evolution_api_does_not_hold_up_another_conversations_handoff(fake, start_bot, evo, redis):
    bot = await start_bot(
        EVOLUTION_URL=evo.url,
        EVOLUTION_API_KEY=GLOBAL_KEY,
        EVOLUTION_INSTANCE="WhatsApp",  # conversation events carry no inbox name
        STORE_URL=redis,
        REDIS_MAX_CONNECTIONS="8",  # four outbox workers, two of them Chatwoot's own
        HANDOFF_KEYWORDS="human",
        SWEEP_INTERVAL="0",
    )
    convs = [
        fake.customer_writes(fake.contact(f"C{n}", phone_number=f"+55 11 9000-000{n}"), "oi", inbox=WHATSAPP)
        for n in range(6)
    ]
    await bot.idle()
    hang = evo.fail(hang=6.0, times=40)  # below the client's 10 s per call: none ends before the test does
    for message in convs:  # each resolve closes the contact's session in Evolution: six calls that hang
        fake.resolve(message.conversation.display_id)
    await wait_for(lambda: 40 - hang.times >= 2, 5, "the closes under way")
    conv = fake.customer_writes(fake.contact("Ana"), "a human please").conversation
    await wait_for(lambda: fake.conversation(conv.display_id).status == "open", 3, "the handoff's open")
    assert 40 - hang.times - hang.slept <= 2  # hanging at once: the others wait for the two workers lanes may hold


class ChunkedTeamBot:
    """A team bot whose answer comes in two chunks (a streamed or proxied answer: Transfer-Encoding: chunked)."""

    def __init__(self) -> None:
        self.received = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> ChunkedTeamBot:
        app = web.Application()
        app.router.add_post("/hook", self._receive)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def close(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def _receive(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.received += 1
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b'{"handoff": ')
        await asyncio.sleep(0.05)  # the rest of the answer is still on its way
        await resp.write(b'true, "reason": "wants a refund"}')
        await resp.write_eof()
        return resp


async def test_a_handoff_asked_for_in_a_chunked_answer_is_not_lost(fake, start_bot):
    team = await ChunkedTeamBot().start()
    try:
        bot = await start_bot(FORWARD_URL=team.url, SWEEP_INTERVAL="0")
        conv = fake.customer_writes(fake.contact(), "My lamp is broken").conversation
        await wait_for(lambda: team.received, 5, "the forward")
        await bot.idle()
        assert fake.conversation(conv.display_id).status == "open"
        assert fake.notes(conv.display_id) == ["Your bot asked for a person: wants a refund"]
    finally:
        await team.close()


@pytest.mark.parametrize("fake", ["4.12"], indirect=True)
async def test_an_expiry_retried_after_the_customer_wrote_is_dropped_before_416(fake, start_bot):
    user = {"CHATWOOT_API_TOKEN": "user-token-5", "CHATWOOT_ACCOUNT_ID": "1", "SWEEP_RATE": "0"}
    bot = await start_bot(**user, PENDING_EXPIRE_AFTER=str(7 * 86400), SWEEP_INTERVAL="0")
    conv = fake.customer_writes(fake.contact("Silent"), "oi").conversation
    await bot.idle()
    fake.age(conv.display_id, 8 * 86400)
    fake.fail("toggle_status", status=429, retry_after=2)  # the expiry's resolve is refused once
    assert (await bot.bot.sweeps.once()).counts()["expired"] == {"resolve": 1}
    await wait_for(lambda: fake.calls_to("toggle_status"), 5, "the refused resolve")
    fake.customer_writes(conv.contact, "still there? I need help")  # heard by the bot live, same pending period
    await bot.idle()
    assert fake.conversation(conv.display_id).status == "pending"


class GatedTeamBot(TeamBot):
    """A team bot that de-duplicates by X-Chatwoot-Delivery and answers only once `gate` is set."""

    def __init__(self) -> None:
        super().__init__(dedup=True)
        self.gate = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await self.gate.wait()
        return await super()._handle(request)


async def test_a_handoff_the_team_bot_asked_for_survives_a_store_that_fails_as_it_is_committed(
    fake, start_bot, tmp_path, monkeypatch
):
    """review2: the team's bot answered `{"handoff": true}` and the store failed as the handoff was committed (SQLite
    locked by another connection past its patience): the outbox took it for a failed forward and sent the delivery
    again, which a team bot that de-duplicates answers without a handoff. The customer stayed pending."""
    monkeypatch.setattr("agentbot.store.sqlite.PATIENCE", 0.3)
    path = str(tmp_path / "bot.sqlite3")
    team = await GatedTeamBot().start()
    try:
        team.ask_handoff("wants a refund")
        bot = await start_bot(STORE_URL=f"sqlite:///{path}", FORWARD_URL=team.url, SWEEP_INTERVAL="0")
        conv = fake.customer_writes(fake.contact("Maria"), "My lamp is broken").conversation
        await wait_for(lambda: team.in_flight == 1, 5, "the forward, at the team's bot")
        taken, release = threading.Event(), threading.Event()
        holder = asyncio.ensure_future(asyncio.to_thread(hold_write_lock, path, taken, release))
        try:
            await wait_for(taken.is_set, 5, "the other connection's write lock")
            team.gate.set()  # the answer asks for a person; its commit finds SQLite locked
            await wait_for(lambda: team.in_flight == 0, 5, "the answer")
            await wait_for(lambda: time.monotonic() > team.received[0].at + 1.0, 5, "the store failing a while")
        finally:
            release.set()
            await holder
        await wait_for(lambda: conv.status == "open", 10, "the handoff the team's bot asked for")
        await bot.idle()
        assert fake.notes(conv.display_id) == ["Your bot asked for a person: wants a refund"]
        assert team.repeats() == {}  # the message was not sent again (the later ones are the open's events)
    finally:
        await team.close()


async def test_a_signed_conversation_event_replayed_with_a_new_delivery_id_is_not_forwarded_again(
    fake, start_bot, team
):
    """review2: X-Chatwoot-Delivery is not signed, and a conversation event was de-duplicated by it: whoever saw a
    signed delivery could post its body again within the 5 minute window under a new id, and the team's bot got
    it again. Chatwoot's own retry sends the same body, so the body is what tells two deliveries apart."""
    running = await start_bot(FORWARD_URL=team.url, FORWARD_SECRET=SECRET, SWEEP_INTERVAL="0")
    conv = fake.customer_writes(fake.contact("Maria"), "Which lamp fits my desk?").conversation
    fake.set_status(conv.display_id, "snoozed")
    forwarded = lambda: [r.payload["event"] for r in team.delivered].count("conversation_status_changed")  # noqa: E731
    await wait_for(forwarded, 5, "the status change, at the team's bot")
    sent = next(d for d in fake.deliveries if d.event == "conversation_status_changed")
    body = json.dumps(sent.payload, separators=(",", ":")).encode()
    bot = fake.bots[7]
    status, _ = await raw_post(bot.outgoing_url, body, {**signed(body, bot.secret), "X-Chatwoot-Delivery": "x-1"})
    assert status == 200
    await running.idle()  # a forward queued for the replay would have gone by now
    assert forwarded() == 1
