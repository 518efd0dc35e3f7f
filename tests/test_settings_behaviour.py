"""Each documented setting and failure answer does what the README says, end to end against the fake."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import Clock, counted, returning, wait_for


async def dead_letters(bot) -> list:
    return await bot.bot.store.dead_letters()


async def test_a_call_slower_than_chatwoot_timeout_is_given_up_and_retried(fake, start_bot):
    maria, conv = returning(fake)
    bot = await start_bot(CHATWOOT_TIMEOUT="0.3")
    slow = fake.hold("toggle_status")
    fake.customer_writes(maria, "Again")
    await wait_for(lambda: slow.waiting == 1, 10, "the first call, held by a slow Chatwoot")
    slow.times = 0  # the next calls are answered at once; the first stays held
    try:  # with the default 10 s the bot would still be waiting; with 0.3 s it gives up and the retry opens it
        await wait_for(lambda: conv.status == "open", 1.5, "the retried handoff, while the first call is held")
    finally:
        slow.release.set()  # Chatwoot gets to the slow call at last; its answer goes nowhere
    await bot.idle()
    calls = counted((await bot.get("/metrics"))[1], "agentbot_chatwoot_calls_total")
    assert calls[("toggle_status", "timeout")] == 1 and calls[("toggle_status", "200")] == 1
    assert fake.opened_by(conv.display_id) == ["bot:7"] and len(fake.notes(conv.display_id)) == 1


async def test_a_call_failing_longer_than_action_max_age_becomes_a_dead_letter(fake, start_bot, log_lines):
    t0 = datetime(2026, 11, 25, 10, 0, tzinfo=timezone.utc)
    clock = Clock(t0)
    maria, conv = returning(fake)
    bot = await start_bot(clock, ACTION_MAX_AGE="60")
    fake.fail("toggle_status", status=500, times=10**6)
    fake.customer_writes(maria, "Again")
    await wait_for(lambda: len(fake.calls_to("toggle_status")) == 1, 10, "the first attempt")
    clock.at = t0 + timedelta(seconds=30)  # the retry is due: still young enough to try again
    await wait_for(lambda: any("retry 2 in" in line for line in log_lines), 10, "the second attempt's retry")
    assert len(fake.calls_to("toggle_status")) == 2
    assert await dead_letters(bot) == [] and await bot.bot.store.depth() == 1
    clock.at = t0 + timedelta(seconds=61)  # past ACTION_MAX_AGE: this failure is the last
    await wait_for(lambda: dead_letters(bot), 10, "the dead letter")
    await bot.idle()
    [dead] = await dead_letters(bot)
    assert dead.display_id == conv.display_id and dead.attempts == 3 and "500" in dead.error
    assert len(fake.calls_to("toggle_status")) == 3  # given up: no further attempts
    assert counted((await bot.get("/metrics"))[1], "agentbot_dead_letters_total") == {(): 1.0}
    assert conv.status == "pending" and fake.notes(conv.display_id) == []


@pytest.mark.parametrize("status", [404, 422])
async def test_404_and_422_from_chatwoot_are_final_at_once(fake, start_bot, status):
    maria, conv = returning(fake)
    bot = await start_bot()
    fake.fail("toggle_status", status=status)  # only once: a retry would succeed, and must not happen
    fake.customer_writes(maria, "Again")
    await wait_for(lambda: dead_letters(bot), 10, "the dead letter")
    await bot.idle()
    [dead] = await dead_letters(bot)
    assert dead.attempts == 1 and str(status) in dead.error
    assert [c.status for c in fake.calls_to("toggle_status")] == [status]  # no retry storm
    assert conv.status == "pending" and fake.notes(conv.display_id) == [] and fake.fallbacks == []


async def test_a_custom_bot_command_gives_back_and_the_default_does_not(fake, start_bot):
    bot = await start_bot(HANDOFF_KEYWORDS="human", BOT_COMMAND="!robot")
    maria = fake.contact()
    conv = fake.customer_writes(maria, "human").conversation
    await wait_for(lambda: conv.status == "open", 10, "the handoff")
    await bot.idle()
    fake.agent_writes(conv.display_id, "#bot", private=True)  # not this bot's command
    await bot.idle()
    assert conv.status == "open" and len(fake.calls_to("toggle_status")) == 1
    fake.agent_writes(conv.display_id, "!robot", private=True)
    await wait_for(lambda: conv.status == "pending", 10, "the give-back")
    await bot.idle()
    assert [s for d, _, s, by in fake.status_log if d == conv.display_id and by == "bot:7"] == ["open", "pending"]


async def test_returning_customers_stay_pending_when_handoff_returning_is_off(fake, start_bot):
    maria, conv = returning(fake)
    bot = await start_bot(HANDOFF_RETURNING="false", HANDOFF_KEYWORDS="human")
    fake.customer_writes(maria, "Again")
    await bot.idle()
    assert conv.status == "pending" and fake.calls_to("toggle_status") == []
    fake.customer_writes(maria, "a human, please")  # the other rules still apply
    await wait_for(lambda: conv.status == "open", 10, "the keyword handoff")
    await bot.idle()
    assert fake.notes(conv.display_id) == ['Customer asked for a person ("human")']


async def test_returning_message_falls_back_to_the_handoff_message(fake, start_bot):
    maria, conv = returning(fake)
    bot = await start_bot(HANDOFF_MESSAGE="Thanks {name}, a person will answer here.")
    fake.customer_writes(maria, "Again")
    await wait_for(lambda: conv.status == "open", 10, "the handoff")
    await bot.idle()
    assert fake.bot_messages(conv.display_id) == ["Thanks Maria Lopez, a person will answer here."]
