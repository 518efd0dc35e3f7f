"""End to end: the defects the lifecycle model (period.py, guard.py) closed, each as the story that showed it:
a retried handoff undoing an agent's routing, a clock stepped back stalling retries, an unreadable answer
taken for a crash, and the operator's "Hand off now" ignoring the inbox filters or a deferred handoff."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from agentbot.events import CONVERSATION_EVENTS
from tests.conftest import Clock, returning, wait_for
from tests.sqlite_locks import hold_write_lock
from tests.test_page_http import client, sign_in

WRITES = {"toggle_status", "messages", "assignments", "toggle_priority"}
ROUTING = {"HANDOFF_TEAM_ID": "2", "HANDOFF_ASSIGNEE_ID": "6", "HANDOFF_PRIORITY": "urgent"}


@pytest.mark.parametrize("fake", ["4.12", "4.16"], indirect=True)
async def test_a_retried_handoff_does_not_undo_an_agents_routing(fake, start_bot):
    maria, conv = returning(fake)
    bot = await start_bot(**ROUTING, HANDOFF_MESSAGE="A person will answer.")
    first = fake.fail("assignments", status=503, hang=0.5)  # the first routing call, answered late and refused
    fake.customer_writes(maria, "Hello again")
    await wait_for(lambda: first.times == 0, 5, "the first routing call")
    # Meanwhile an agent takes the conversation: assigns it to themselves, moves it to another team, opens it.
    agent_acted = len(fake.calls)
    fake.agent_routes(conv.display_id, assignee=5, team=3, priority="low")
    fake.set_status(conv.display_id, "open")
    await bot.idle()
    assert (conv.assignee.id, conv.team_id, conv.priority, conv.status) == (5, 3, "low", "open")
    routed = [c.endpoint for c in fake.calls[agent_acted:] if c.caller == "bot" and c.status < 300]
    assert not WRITES & set(routed), routed


async def test_a_clock_stepped_back_does_not_stall_a_retry(fake, start_bot):
    clock = Clock()
    maria, conv = returning(fake)
    bot = await start_bot(clock)
    refused = fake.fail("toggle_status", status=503)
    fake.customer_writes(maria, "Hello again")
    await wait_for(lambda: refused.times == 0 and fake.calls_to("toggle_status"), 5, "the refused open")
    clock.at = datetime.now(timezone.utc) - timedelta(minutes=10)  # NTP steps the clock back
    await wait_for(lambda: conv.status == "open", 5, "the retry, as soon as it was due")
    await bot.idle()
    assert fake.opened_by(conv.display_id) == ["bot:7"]


@pytest.mark.parametrize("fake", ["4.12"], indirect=True)
async def test_an_unreadable_answer_is_a_failed_read_not_a_crash(fake, start_bot, log_lines):
    maria, conv = returning(fake)
    bot = await start_bot(
        HANDOFF_MESSAGE="A person will answer.", HANDOFF_NOTE="false", CHATWOOT_API_TOKEN="user-token-5"
    )
    echoes = fake.hold_deliveries(lambda d: d.event == "message_created" and "A person" in str(d.payload))
    fake.fail("messages", applied=True, drop=True)  # the message is posted; its answer is lost
    fake.fail("messages_index", garbled=True, applied=True, times=100)  # a proxy's page instead of the messages
    fake.customer_writes(maria, "Hello again")
    await wait_for(lambda: conv.status == "open", 5, "the open")
    await wait_for(lambda: fake.calls_to("messages_index", caller="user"), 5, "the look for the message")
    await wait_for(lambda: _outbox_empty(bot), 5, "the job to end instead of retrying until ACTION_MAX_AGE")
    echoes.release()
    await bot.idle()
    assert fake.bot_messages(conv.display_id) == ["A person will answer."]
    assert not any("failed unexpectedly" in line for line in log_lines)


async def _outbox_empty(bot) -> bool:
    return await bot.bot.store.depth() == 0


async def _hand_off_now(bot, display_id: int) -> str:
    async with client() as s:
        await sign_in(s, bot.url)
        async with s.get(bot.url + "/") as r:
            csrf = re.search(r'name="csrf" value="([^"]+)"', await r.text())[1]
        form = {"csrf": csrf, "account": "1", "conversation": str(display_id)}
        async with s.post(bot.url + "/actions/handoff", data=form) as r:
            return await r.text()


async def test_hand_off_now_respects_the_inbox_filters(fake, start_bot):
    bot = await start_bot(IGNORE_INBOX_IDS="4", HANDOFF_MESSAGE="A person will answer.")
    ignored = fake.customer_writes(fake.contact("Joao Silva"), "Hello", inbox=4).conversation
    await bot.idle()
    before = len(fake.calls)
    await _hand_off_now(bot, ignored.display_id)
    await bot.idle()
    assert ignored.status == "pending"
    assert [c.endpoint for c in fake.calls[before:] if c.caller == "bot" and c.endpoint in WRITES] == []


async def test_hand_off_now_brings_a_deferred_handoff_forward(fake, start_bot):
    saturday_evening = Clock(datetime(2026, 11, 28, 20, 0, tzinfo=timezone.utc))
    bot = await start_bot(
        saturday_evening, BUSINESS_HOURS="mon-fri 09:00-18:00", HANDOFF_KEYWORDS="human", HANDOFF_NOTE="true"
    )
    conv = fake.customer_writes(fake.contact("Joao Silva"), "human please").conversation
    await bot.idle()
    assert conv.status == "pending"  # deferred to Monday 09:00
    await _hand_off_now(bot, conv.display_id)
    await wait_for(lambda: conv.status == "open", 5, "the handoff brought forward")
    await bot.idle()
    assert fake.opened_by(conv.display_id) == ["bot:7"]
    assert len(fake.notes(conv.display_id)) == 1


async def test_a_refused_read_of_a_pending_again_conversation_is_tried_again_before_the_answer(fake, start_bot):
    """Chaos seeds 95 (Redis) and 60 (SQLite): the customer writes into a new period whose resolve has not reached
    the bot, and the read that would tell is refused once (429): the message was taken for one of the handed-off
    period, the resolve's late events then made it a late delivery, and the new period stayed pending."""
    maria, conv = returning(fake)
    bot = await start_bot()
    late = fake.hold_deliveries(lambda d: d.event in CONVERSATION_EVENTS)
    fake.customer_writes(maria, "Again")
    await wait_for(lambda: fake.notes(conv.display_id), 5, "the handoff's note")
    await wait_for(lambda: _outbox_empty(bot), 5, "the handoff, finished")
    fake.resolve(conv.display_id)
    fake.fail("show", status=429)  # Rack::Attack, once
    fake.customer_writes(maria, "Still broken")  # pending again: a new period
    await wait_for(lambda: all(d.done for d in fake.deliveries if d not in late.held), 5, "the message")
    late.release()
    await bot.idle()
    assert conv.status == "open"
    assert [by for by in fake.opened_by(conv.display_id) if by.startswith("bot")] == ["bot:7", "bot:7"]


async def test_a_late_message_of_the_handed_off_period_does_not_begin_the_next(fake, start_bot):
    """Chaos seed 46 (Redis): the customer wrote twice before the handoff's open landed, and the second message was
    delivered only after an agent had replied and resolved and the customer had written again (a new pending
    period, whose events had not reached the bot either). Chatwoot showed the conversation pending, so the late
    message was taken for the first of the new period: a handoff decided on it, the resolve's late events then ended
    that period, and the new period's own first message was handed off again: a second note. Chatwoot showing a
    later customer message says the late one is not the new period's first: that one's own delivery begins it."""
    maria, conv = returning(fake)
    bot = await start_bot()
    opening = fake.hold("toggle_status")
    fake.customer_writes(maria, "Hello?")
    await wait_for(lambda: opening.waiting == 1, 5, "the handoff's open")
    second = fake.hold_deliveries(lambda d: d.event == "message_created" and d.payload["content"] == "Hello again?")
    fake.customer_writes(maria, "Hello again?")  # written before the open landed: the handed-off period's
    late = fake.hold_deliveries(lambda d: d.event in CONVERSATION_EVENTS)  # from the open on (Sidekiq lag)
    fake.faults.remove(opening)
    opening.release.set()
    await wait_for(lambda: conv.status == "open" and fake.notes(conv.display_id), 5, "the handoff")
    await wait_for(lambda: _outbox_empty(bot), 5, "the handoff, finished")
    first = fake.hold_deliveries(lambda d: d.event == "message_created" and d.payload["content"] == "Still broken")
    fake.agent_writes(conv.display_id, "On it.")
    fake.resolve(conv.display_id)
    fake.customer_writes(maria, "Still broken")  # pending again: the next period
    second.release()
    await wait_for(lambda: all(d.done for d in second.held), 5, "the late message")
    await wait_for(lambda: _outbox_empty(bot), 5, "whatever it asked for")
    late.release()
    await wait_for(lambda: all(d.done for d in late.held), 5, "the resolve's late events")
    first.release()
    await bot.idle()
    assert conv.status == "open"
    assert [by for by in fake.opened_by(conv.display_id) if by.startswith("bot")] == ["bot:7", "bot:7"]
    assert len(fake.notes(conv.display_id)) == 2, fake.notes(conv.display_id)  # one per period


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_message_landing_late_in_the_next_period_is_not_posted_again_there(
    fake, start_bot, log_lines, request, tmp_path, backend
):
    """Chaos seed 276 (Redis): a handoff's message call was slow (it hung past CHATWOOT_TIMEOUT there), and Chatwoot
    carried it out only after an agent had resolved the conversation and the customer had written again (a new
    pending period). The next period's handoff posted the same message again: the customer read it twice in a row.
    A handoff's note and message are posted once per period: not when the bot's own messages delivered back show the
    same text since the period's first customer message, even before the job's trigger."""
    url = request.getfixturevalue("redis") if backend == "redis" else f"sqlite:///{tmp_path}/bot.sqlite3"
    bot = await start_bot(
        STORE_URL=url,
        HANDOFF_RETURNING="false",
        HANDOFF_KEYWORDS="human",
        HANDOFF_NOTE="false",
        HANDOFF_MESSAGE="A person will answer.",
        CHATWOOT_TIMEOUT="0.5",
    )
    maria = fake.contact("Maria")
    posting = fake.hold("messages")
    conv = fake.customer_writes(maria, "I need a human").conversation
    await wait_for(lambda: posting.waiting == 1 and conv.status == "open", 5, "the handoff's message, hanging")
    fake.faults.remove(posting)  # calls from now on are answered; the hanging one lands when released
    fake.agent_writes(conv.display_id, "On it.")
    fake.resolve(conv.display_id)
    fake.customer_writes(maria, "Still broken")  # the next period: no rule fires on it
    await wait_for(lambda: fake.in_flight == 0, 5, "its delivery")
    posting.release.set()
    await wait_for(lambda: fake.bot_messages(conv.display_id), 5, "the hanging message, landing late")
    await wait_for(lambda: fake.in_flight == 0, 5, "its echo's delivery")
    fake.customer_writes(maria, "A human, please")  # this period's handoff
    await wait_for(lambda: conv.status == "open", 5, "the second handoff's open")
    await bot.idle()
    assert [by for by in fake.opened_by(conv.display_id) if by.startswith("bot")] == ["bot:7", "bot:7"]
    assert fake.bot_messages(conv.display_id) == ["A person will answer."]  # once, though it landed late
    assert any("the message was posted already" in line for line in log_lines)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_message_heard_while_the_handoff_was_queued_is_decided_once_it_ended(
    fake, start_bot, log_lines, request, tmp_path, backend
):
    """Chaos seed 272 (Redis): the handoff's open landed but the bot had not written that down yet (the store failed
    for a moment; here, the answer is slow) when an agent resolved and the customer wrote again, with those events
    still on their way. The bot took the message for one the queued handoff would catch ("handoff already
    decided"), and once the handoff ended nobody decided the new period: pending until the sweep or the customer's
    next message. Such a message is decided again once the handoff ended, and Chatwoot, read then, shows whether it
    began a new period."""
    url = request.getfixturevalue("redis") if backend == "redis" else f"sqlite:///{tmp_path}/bot.sqlite3"
    maria, conv = returning(fake)
    bot = await start_bot(STORE_URL=url, HANDOFF_NOTE="false", CHATWOOT_TIMEOUT="3")
    late = fake.hold_deliveries(lambda d: d.event in CONVERSATION_EVENTS)  # the open's and the resolve's (Sidekiq lag)
    slow = fake.fail("toggle_status", applied=True, hang=1.0)  # the open lands; its answer takes a second
    fake.customer_writes(maria, "Hello?")
    await wait_for(lambda: conv.status == "open", 5, "the handoff's open")
    fake.agent_writes(conv.display_id, "On it.")
    fake.resolve(conv.display_id)
    fake.customer_writes(maria, "Still broken")  # pending again: the next period, while the open's answer is slow
    heard = [d for d in fake.deliveries if d.event == "message_created" and d.payload["content"] == "Still broken"]
    await wait_for(lambda: heard[0].done, 5, "the message's delivery")
    await wait_for(lambda: _outbox_empty(bot), 5, "the handoff to end (its open's answer came), and what it left")
    late.release()
    await bot.idle()
    assert slow.times == 0 and conv.status == "open"
    assert [by for by in fake.opened_by(conv.display_id) if by.startswith("bot")] == ["bot:7", "bot:7"]
    assert any("handoff already decided" in line for line in log_lines)  # left to the queued handoff first
    assert any("decided again: handoff" in line for line in log_lines)


async def test_a_commit_cut_short_while_sqlite_is_locked_keeps_the_conversation_until_it_lands(
    fake, start_bot, tmp_path, monkeypatch
):
    """Chaos seeds 75 and 92 (SQLite): a handoff's commit waited for SQLite's write lock (another connection: a
    backup, `outbox --retry`); the webhook's budget cut the delivery short (500) with the commit still on its way,
    and the conversation's lock was released. The customer's next message, and Chatwoot's retry, decided on the
    state before that commit: three handoffs. The lock now waits for the commit, so they see the handoff. (The
    outbox's guard would drop the later handoffs' steps since, as the conversation is open by then; the decision
    log, the operator page's, shows what was decided.)"""
    monkeypatch.setattr("agentbot.store.sqlite.PATIENCE", 8.0)  # 3 s: a window of a few tenths, widened here
    path = str(tmp_path / "bot.sqlite3")
    bot = await start_bot(STORE_URL=f"sqlite:///{path}", HANDOFF_KEYWORDS="human")
    maria = fake.contact("Maria")
    taken, release = threading.Event(), threading.Event()
    holder = asyncio.ensure_future(asyncio.to_thread(hold_write_lock, path, taken, release))
    try:
        await wait_for(taken.is_set, 5, "the other connection's write lock")
        message = fake.customer_writes(maria, "a human please")  # decided at once; its commit waits for SQLite
        conv = message.conversation
        delivery = next(d for d in fake.deliveries if d.event == "message_created" and d.payload["id"] == message.id)
        await wait_for(lambda: delivery.answers, 6, "the delivery, cut short by its budget")
        assert delivery.answers[0] == 500
        fake.customer_writes(maria, "human please!")  # with Chatwoot's retry, while the commit is on its way
        await wait_for(lambda: bot.bot.handoffs.live == 2, 5, "the next message and the retry, in the bot")
    finally:
        release.set()
        await holder
    await wait_for(lambda: conv.status == "open", 10, "the handoff")
    await bot.idle()
    assert fake.opened_by(conv.display_id) == ["bot:7"]
    assert len(fake.notes(conv.display_id)) == 1, fake.notes(conv.display_id)
    assert fake.fallbacks == []
    handoffs = [e.reason for e in await bot.bot.store.decisions(time.time()) if e.outcome == "handoff"]
    assert len(handoffs) == 1, handoffs
