"""End to end: agentbot in front of the team's own bot (issue 23). The real app between the fake Chatwoot and the
stand-in team bot (tests/teambot.py): what is forwarded, in which order, how often, and what the team bot's
answers and silences lead to; on both stores, and across a SIGKILL."""

from __future__ import annotations

import json
import re
import signal
from datetime import datetime, timedelta, timezone

import pytest

from agentbot.page import panels
from tests.conftest import Clock, counted, wait_for
from tests.teambot import Received, TeamBot

SECRET = "team-bot-secret-0123456789"


@pytest.fixture
async def team():
    bot = await TeamBot(secret=SECRET).start()
    yield bot
    await bot.close()


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path) -> str:
    return request.getfixturevalue("redis") if request.param == "redis" else f"sqlite:///{tmp_path}/s.sqlite3"


def env(team: TeamBot, store_url: str = "memory://", **more: str) -> dict[str, str]:
    return {"FORWARD_URL": team.url, "FORWARD_SECRET": SECRET, "STORE_URL": store_url, **more}


def messages(received: list[Received], display_id: int) -> list[str]:
    """The customer messages of one conversation the team's bot took, in the order it took them."""
    return [
        r.payload["content"]
        for r in received
        if r.payload["event"] == "message_created"
        and r.payload["message_type"] == "incoming"
        and r.payload["conversation"]["id"] == display_id
    ]


def sent_by_chatwoot(fake) -> dict[str, bytes]:
    """Each delivery's body as the fake Chatwoot sent it, by its X-Chatwoot-Delivery."""
    return {d.id: json.dumps(d.payload, separators=(",", ":")).encode() for d in fake.deliveries}


async def test_only_the_bots_conversations_go_to_your_bot_in_order_signed_and_once(fake, start_bot, team, store_url):
    fake.reorder(0.3, seed=7)  # Sidekiq: two messages of a burst may arrive the other way round
    bot = await start_bot(**env(team, store_url), HANDOFF_KEYWORDS="human")
    maria, joao = fake.contact("Maria Lopez"), fake.contact("João Silva")
    burst = ["Hi", "I ordered a lamp", "it arrived broken", "can I get a new one?"]
    for text in burst:
        conv = fake.customer_writes(maria, text).conversation
    fake.customer_writes(joao, "Hello")
    await wait_for(lambda: messages(team.delivered, conv.display_id) == burst, 10, "Maria's burst at the team bot")
    other = fake.customer_writes(joao, "a human please").conversation  # hands off: with humans from here
    await wait_for(lambda: other.status == "open", 5, "João's handoff")
    fake.customer_writes(joao, "are you there?")
    fake.agent_writes(other.display_id, "Yes, Sam here")
    await bot.idle()
    assert messages(team.delivered, conv.display_id) == burst  # each acknowledged message once, in order
    assert messages(team.delivered, other.display_id) == ["Hello"]
    assert "conversation_opened" in {r.payload["event"] for r in team.delivered}  # events go, to reset its state
    assert not [r for r in team.delivered if r.payload["event"] == "message_created" and "Sam" in r.body.decode()]
    chatwoot = sent_by_chatwoot(fake)
    assert all(r.body == chatwoot[r.delivery] for r in team.received)  # byte for byte, Chatwoot's delivery id
    assert team.refused == [] and team.repeats() == {}  # every signature checked out; nothing sent twice


async def test_a_slow_team_bot_costs_no_chatwoot_fallback_and_no_repeat(fake, start_bot, team):
    fake.webhook_timeout = 1.0  # Chatwoot's 5 s, scaled down with the team bot's 8 s
    team.slow(2.0)
    await start_bot(**env(team))
    conv = fake.customer_writes(fake.contact(), "Which lamp fits my desk?").conversation
    await wait_for(lambda: team.delivered, 5, "the slow answer")
    assert [d.answers for d in fake.deliveries if d.event == "message_created"] == [[200]]
    assert fake.fallbacks == [] and conv.status == "pending"
    assert messages(team.received, conv.display_id) == ["Which lamp fits my desk?"] and team.repeats() == {}


async def test_503s_are_retried_and_the_order_kept(fake, start_bot, team, store_url):
    team.fail(503, times=3)
    bot = await start_bot(**env(team, store_url))
    texts, maria = ["one", "two", "three"], fake.contact()
    for text in texts:
        conv = fake.customer_writes(maria, text).conversation
    await wait_for(lambda: messages(team.delivered, conv.display_id) == texts, 10, "the three, after the 503s")
    await bot.idle()
    assert messages(team.delivered, conv.display_id) == texts
    assert [r.answer for r in team.received if r.payload["event"] == "message_created"][:3] == [503] * 3
    metrics = (await bot.get("/metrics"))[1]
    assert counted(metrics, "agentbot_forward_attempts_total")[("retry",)] == 3
    health = panels.team_bot(bot.bot)  # the operator page's line
    assert health is not None and health.level == "warn"
    assert health.detail.startswith("last success 0 s ago, 3 failed attempts in the last hour"), health.detail


async def test_the_team_bot_asks_for_a_person_and_the_note_says_why(fake, start_bot, team):
    team.ask_handoff("wants a refund")
    bot = await start_bot(**env(team), HANDOFF_TEAM_ID="2")
    conv = fake.customer_writes(fake.contact(), "My lamp is broken").conversation
    await wait_for(lambda: conv.status == "open", 5, "the handoff the team bot asked for")
    await bot.idle()
    assert fake.notes(conv.display_id) == ["Your bot asked for a person: wants a refund"]
    assert conv.team_id == 2  # the inbox's routing
    fake.customer_writes(conv.contact, "Hello?")  # with humans now: not the team bot's
    await bot.idle()
    assert messages(team.received, conv.display_id) == ["My lamp is broken"]


async def test_a_forward_is_not_retried_past_forward_max_age(fake, start_bot, team, log_lines):
    """A retry the backoff (or the team bot's Retry-After) puts past FORWARD_MAX_AGE comes at FORWARD_MAX_AGE, where
    the forward ends: after the attempt 4.2 s in the backoff's next was 5.1 s later, so a forward with
    FORWARD_MAX_AGE=5 ended after about 9 s (CI, 2026-12-07: the test below waited 10 s for a forward of the
    fallback's own open and timed out), and a Retry-After of a minute held it a minute."""
    team.fail(429, times=1000, retry_after="60")
    await start_bot(**env(team), FORWARD_MAX_AGE="5", FORWARD_TIMEOUT="1", FORWARD_FALLBACK="keep")
    fake.customer_writes(fake.contact(), "Anyone there?")
    given_up = "did not take the message_created within FORWARD_MAX_AGE"
    await wait_for(lambda: any(given_up in line for line in log_lines), 10, "the message's forward given up")
    [attempt] = [r for r in team.received if r.payload["event"] == "message_created"]  # then it waited for the end
    retries = [float(m.group(1)) for line in log_lines if (m := re.search(r"; retry 1 in ([\d.]+) s", line))]
    assert retries and all(delay <= 5.0 for delay in retries), retries  # was 60 s
    assert attempt.answer == 429


@pytest.mark.parametrize("fallback", ["open", "keep"])
async def test_a_dead_team_bot_ends_in_a_handoff_after_forward_max_age(fake, start_bot, team, fallback, log_lines):
    clock = Clock()
    team.fail(503, times=1000)
    bot = await start_bot(clock, **env(team), FORWARD_MAX_AGE="5", FORWARD_TIMEOUT="1", FORWARD_FALLBACK=fallback)
    conv = fake.customer_writes(fake.contact(), "Anyone there?").conversation
    await wait_for(lambda: len(team.received) >= 2, 5, "two failed attempts")
    health = panels.team_bot(bot.bot)
    assert health is not None and "no success yet" in health.detail and "oldest forward waiting" in health.detail
    clock.at = datetime.now(timezone.utc) + timedelta(seconds=6)  # FORWARD_MAX_AGE has passed
    await wait_for(lambda: "expired" in str(counted(bot.bot.metrics.render().decode(), "agentbot_forwards_total")))
    await bot.idle()
    if fallback == "open":
        assert conv.status == "open"
        [note] = fake.notes(conv.display_id)
        assert (
            note.startswith(f"Your bot at 127.0.0.1:{team.port} did not answer since ") and "chatwoot-7f3a" not in note
        )
    else:
        assert conv.status == "pending" and fake.notes(conv.display_id) == []
        assert any("did not take the message_created within FORWARD_MAX_AGE" in line for line in log_lines)
    assert await bot.bot.store.dead_letters() == []


async def test_a_give_back_resumes_forwarding(fake, start_bot, team):
    bot = await start_bot(**env(team), HANDOFF_KEYWORDS="human")
    conv = fake.customer_writes(fake.contact(), "a human please").conversation
    await wait_for(lambda: conv.status == "open", 5, "the handoff")
    fake.customer_writes(conv.contact, "still there?")
    fake.agent_writes(conv.display_id, "#bot", private=True)  # the agent gives it back
    await wait_for(lambda: conv.status == "pending", 5, "the give-back")
    fake.customer_writes(conv.contact, "thanks, one more question")
    await wait_for(lambda: messages(team.delivered, conv.display_id), 5, "the next message at the team bot")
    await bot.idle()
    assert messages(team.delivered, conv.display_id) == ["thanks, one more question"]


async def test_a_sigkill_while_forwards_are_queued_loses_none(fake, processes, team, store_url):
    team.fail(503, times=1000)  # the team bot is down: forwards wait in the store
    env_ = env(team, store_url)
    first = await processes(**env_)
    maria, joao = fake.contact("Maria Lopez"), fake.contact("João Silva")
    sent = {"Maria Lopez": ["one", "two"], "João Silva": ["olá", "tudo bem?"]}
    for contact in (maria, joao):
        for text in sent[contact.name]:
            conv = fake.customer_writes(contact, text).conversation
    await wait_for(lambda: all(d.done and d.answers == [200] for d in fake.deliveries), 5, "the acknowledgements")
    await wait_for(lambda: team.received, 5, "a failed attempt")
    if store_url.startswith("redis"):  # killed mid-attempt, a forward would wait out its claim's 60 s lease
        await wait_for(lambda: _unclaimed(store_url), 5, "the failed attempt's retry, scheduled")
    await first.stop(signal.SIGKILL)
    team.faults.clear()  # back up
    await processes(connect=False, **env_)
    by_name = {c.contact.name: c.display_id for c in fake.conversations.values()}
    for name, texts in sent.items():
        await wait_for(lambda t=texts, n=name: messages(team.delivered, by_name[n]) == t, 15, f"{name}'s forwards")
    assert conv is not None


async def _unclaimed(store_url: str) -> bool:
    from redis.asyncio import Redis

    async with Redis.from_url(store_url) as r:
        return not await r.keys("agentbot:owner:*")


async def test_a_refused_forward_is_not_retried_and_is_logged_with_its_status(fake, start_bot, team, log_lines):
    team.fail(404)  # a wrong path
    bot = await start_bot(**env(team))
    conv = fake.customer_writes(fake.contact(), "Hello").conversation
    await wait_for(lambda: team.received, 5, "the attempt")
    await bot.idle()
    assert [r.answer for r in team.received if r.payload["event"] == "message_created"] == [404]
    assert counted(bot.bot.metrics.render().decode(), "agentbot_forwards_total")[("refused",)] == 1
    assert any(f"conversation {conv.account_id}:{conv.display_id}" in line and "404" in line for line in log_lines)
    assert conv.status == "pending"  # a refusal is not the team bot asking for a person


async def test_a_delivery_chatwoot_sends_again_is_forwarded_once(fake, start_bot, team):
    bot = await start_bot(**env(team))
    conv = fake.customer_writes(fake.contact(), "Hello").conversation
    await wait_for(lambda: messages(team.delivered, conv.display_id), 5, "the forward")
    [message] = [d for d in fake.deliveries if d.event == "message_created"]
    fake.redeliver(message)  # Chatwoot's retry after an answer it did not get
    await wait_for(lambda: len(message.answers) == 2, 5, "the second delivery")
    await bot.idle()
    assert messages(team.received, conv.display_id) == ["Hello"] and team.repeats() == {}
