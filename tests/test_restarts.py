"""A note whose answer was lost with a killed bot is not posted again by the restarted one.

What the restarted bot can read differs by Chatwoot version: from 4.16 the bot token may read the
conversation (its last message), before that only the store's echoes and a user token's message list.
4.12 stands for every version before 4.16 here; the deliveries' shapes are tested on all three elsewhere.
"""

from __future__ import annotations

import signal

import pytest

from tests.conftest import returning, wait_for

pytestmark = pytest.mark.parametrize("fake", ["4.12", "4.16"], indirect=True)


async def note_applied(fake, processes, tmp_path):
    """A returning customer's handoff in a bot process whose note Chatwoot applied, its answer to come after a
    second; returns the customer, the conversation, that bot and how to start it again on the same store."""
    maria, conv = returning(fake)

    def bot():  # the restarted bot looks for the note after twice CHATWOOT_TIMEOUT (not 2 x 2 s)
        return processes(
            STORE_URL=f"sqlite:///{tmp_path}/bot.sqlite3", HANDOFF_MESSAGE="Thanks {name}", CHATWOOT_TIMEOUT="0.5"
        )

    first = await bot()
    fake.fail("messages", applied=True, hang=1)  # the note is in Chatwoot; its answer comes after the kill
    fake.customer_writes(maria, "Again")
    await wait_for(lambda: fake.notes(conv.display_id), 5, "the note, applied")
    return maria, conv, first, bot


async def test_a_note_applied_while_the_bot_was_killed_is_not_posted_again_after_the_restart(fake, processes, tmp_path):
    _, conv, first, bot = await note_applied(fake, processes, tmp_path)
    await first.stop(signal.SIGKILL)
    await wait_for(lambda: fake.in_flight == 0, 10, "the deliveries to the dead bot")
    # The restarted bot finds the note: its echo, or Chatwoot's last message.
    await bot()
    await wait_for(lambda: fake.bot_messages(conv.display_id), 10, "the handoff message")
    await wait_for(lambda: fake.in_flight == 0, 10, "deliveries")
    assert len(fake.notes(conv.display_id)) == 1, fake.notes(conv.display_id)
    assert fake.bot_messages(conv.display_id) == ["Thanks Maria Lopez"]


async def test_a_note_whose_echo_came_before_a_restart_is_not_posted_again_when_someone_wrote_after_it(
    fake, processes, tmp_path
):
    """Chatwoot's GET shows only the last message: after a restart the note's echo must come from the store."""
    maria, conv, first, bot = await note_applied(fake, processes, tmp_path)
    await wait_for(lambda: fake.in_flight == 0, 5, "the note's echo, delivered to the bot")
    fake.customer_writes(maria, "Hello? Anyone?")  # now the last message
    await wait_for(lambda: fake.in_flight == 0, 5, "the customer's message, delivered")
    await first.stop(signal.SIGKILL)
    await bot()
    await wait_for(lambda: fake.bot_messages(conv.display_id), 15, "the handoff message")
    await wait_for(lambda: fake.in_flight == 0, 10, "deliveries")
    assert len(fake.notes(conv.display_id)) == 1, fake.notes(conv.display_id)


@pytest.mark.parametrize("user_token", [None, "user-token-5"])
async def test_a_note_whose_echo_went_with_the_killed_bot_is_not_posted_again_when_someone_wrote_after_it(
    fake, processes, tmp_path, user_token
):
    """Neither the echo nor Chatwoot's last message shows the note: with a user token the bot reads the
    conversation's latest messages; without one, on Chatwoot before 4.16, it does not post the note again."""
    maria, conv = returning(fake)
    env = dict(STORE_URL=f"sqlite:///{tmp_path}/bot.sqlite3", HANDOFF_MESSAGE="Thanks {name}", CHATWOOT_TIMEOUT="0.5")
    if user_token:
        env.update(CHATWOOT_API_TOKEN=user_token, CHATWOOT_ACCOUNT_ID="1")
    first = await processes(**env)
    echo = fake.hold_deliveries(lambda d: d.event == "message_created" and d.payload["private"])
    fake.fail("messages", applied=True, hang=1)  # the note is in Chatwoot; its answer comes after the kill
    fake.customer_writes(maria, "Again")
    await wait_for(lambda: echo.held, 5, "the note's echo")
    await first.stop(signal.SIGKILL)
    echo.release()  # to a dead bot: lost (Chatwoot does not retry a refused connection)
    fake.customer_writes(maria, "Hello? Anyone?")  # now the last message
    await wait_for(lambda: fake.in_flight == 0, 10, "the deliveries to the dead bot")
    await processes(**env)
    await wait_for(lambda: fake.bot_messages(conv.display_id), 15, "the handoff message")
    await wait_for(lambda: fake.in_flight == 0, 10, "deliveries")
    if user_token or not fake.has("bot_reads"):
        assert len(fake.notes(conv.display_id)) == 1, fake.notes(conv.display_id)
    else:  # the window docs/promises.md's "What remains" states
        assert len(fake.notes(conv.display_id)) == 2, fake.notes(conv.display_id)


async def test_a_job_cut_off_by_shutdown_before_its_call_is_not_marked_as_a_call_that_may_have_landed(
    fake, start_bot, tmp_path, monkeypatch
):
    """A handoff's message is cut off by shutdown while the guard reads the conversation, before its call: given back
    as it was, not as a call that may have landed. Marked so, the next run would look for the message in the
    conversation's messages, which a bot token may not list, and drop it as "may have been posted already and cannot
    be checked": the customer would never get it."""
    monkeypatch.setattr("agentbot.app.SHUTDOWN_GRACE", 0.3)
    store = f"sqlite:///{tmp_path}/s.sqlite3"
    env = {"STORE_URL": store, "HANDOFF_MESSAGE": "A person will answer."}
    maria, conv = returning(fake)
    first = await start_bot(**env)
    reading = fake.hold("show")  # the guard's read of the conversation before the message
    fake.customer_writes(maria, "Hello again")
    await wait_for(lambda: reading.waiting, 5, "the guard's read before the message")
    assert fake.opened_by(conv.display_id) and not fake.bot_messages(conv.display_id)
    await first.stop()  # the grace ends while the read hangs: the job is cut off and given back
    fake.faults.remove(reading)
    reading.release.set()
    second = await start_bot(**env)
    await wait_for(lambda: fake.bot_messages(conv.display_id), 5, "the handoff's message")
    await second.idle()
    assert fake.bot_messages(conv.display_id) == ["A person will answer."]


@pytest.mark.parametrize(
    ("timeout", "rate", "bound"),
    [("1", None, 5), ("0.5", "0.5", 10)],
    ids=["sent at once", "sent after waiting its turn"],
)
async def test_a_job_cut_off_by_shutdown_during_its_call_waits_for_it_to_settle_before_checking(
    fake, start_bot, tmp_path, monkeypatch, timeout, rate, bound
):
    """The other side: cut off while its call is under way, the message may land, and may land late: Chatwoot goes on
    with a request whose sender has gone. The next run waits until the call can no longer be under way (twice
    CHATWOOT_TIMEOUT after it went out), then checks, and where it cannot tell (4.12: a bot token may not list the
    messages) it does not post again: better lost than sent twice. Here the cut-off call lands only after the
    restarted bot has looked. In the second case the call waits its turn under CHATWOOT_RATE (2 s) longer than it
    can stay under way (1 s): timed from the step's start instead of from when it went out, the restarted bot would
    check at once and post the message a second time (4.16)."""
    monkeypatch.setattr("agentbot.app.SHUTDOWN_GRACE", 0.3)
    env = {
        "STORE_URL": f"sqlite:///{tmp_path}/s.sqlite3",
        "HANDOFF_NOTE": "false",
        "HANDOFF_MESSAGE": "A person will answer.",
        "CHATWOOT_TIMEOUT": timeout,
    }
    maria, conv = returning(fake)
    first = await start_bot(**env, **({"CHATWOOT_RATE": rate} if rate else {}))
    posting = fake.hold("messages")
    fake.customer_writes(maria, "Hello again")
    await wait_for(lambda: posting.waiting, bound, "the message's call")
    await first.stop()  # the grace ends while the call is under way
    fake.faults.remove(posting)  # later calls go through; the cut-off one is still being carried out
    second = await start_bot(**env)

    async def looked() -> bool:  # the restarted bot posted the message, dropped it, or waits before checking
        if fake.bot_messages(conv.display_id):
            return True
        jobs = await second.bot.store.jobs(f"{conv.account_id}:{conv.display_id}")
        return not jobs or jobs[0].next_at > second.bot.outbox.now()

    await wait_for(looked, 5, "the restarted bot to look at the message")
    posting.release.set()  # the cut-off call lands now
    await second.idle()
    assert fake.bot_messages(conv.display_id) == ["A person will answer."]


async def test_a_job_cut_off_by_shutdown_while_its_call_waits_for_chatwoots_budget_is_not_marked(
    fake, start_bot, tmp_path, monkeypatch
):
    """Cut off while its call still waits for its turn under CHATWOOT_RATE: nothing went out, so it is given back as
    it was. Marked as a call that may have landed, the note would be dropped on 4.12 as "cannot be checked"."""
    monkeypatch.setattr("agentbot.app.SHUTDOWN_GRACE", 0.3)
    env = {"STORE_URL": f"sqlite:///{tmp_path}/s.sqlite3"}
    maria, conv = returning(fake)
    first = await start_bot(**env, CHATWOOT_RATE="0.5")  # a call every 2 s
    fake.customer_writes(maria, "Hello again")
    await wait_for(lambda: fake.opened_by(conv.display_id) and first.bot.ratelimit._waiters, 10, "the note's turn")
    await first.stop()  # the grace ends while the note's call waits for its turn
    assert not fake.notes(conv.display_id)
    second = await start_bot(**env)
    await wait_for(lambda: fake.notes(conv.display_id), 5, "the handoff's note")
    await second.idle()
    assert len(fake.notes(conv.display_id)) == 1


def waiting_for_a_connection(bot, port: int) -> int:
    """The app's requests to `port` waiting for a free connection of its one session (aiohttp's own queue)."""
    return sum(len(w) for key, w in bot.bot.session.connector._waiters.items() if key.port == port)


async def a_note_waiting_for_a_connection(fake, start_bot, team, monkeypatch, **env):
    """A returning customer's handoff whose note waits for a connection of the app's session, every one of them taken
    by a forward your bot answers only after 4 s (the lookups, forwards and Evolution's calls share the pool with the
    outbox's; here it has one connection). Returns the conversation and the bot."""
    monkeypatch.setattr("agentbot.app.CONNECTIONS", 1)
    fake.keep_alive = False  # else a call reuses an idle connection to Chatwoot at once, whatever the limit
    maria, conv = returning(fake)
    bot = await start_bot(FORWARD_URL=team.url, **env)
    opening = fake.hold("toggle_status")  # the open holds the one connection meanwhile
    fake.customer_writes(maria, "Hello again")
    await wait_for(lambda: opening.waiting, 5, "the handoff's open")
    team.slow(4)
    fake.customer_writes(fake.contact("João Silva"), "Hi")  # the bot's conversation: forwarded after half a second
    await wait_for(lambda: waiting_for_a_connection(bot, team.port), 5, "the forward, waiting for the connection")
    fake.faults.remove(opening)
    opening.release.set()  # the connection goes to the forward; the note waits behind it
    fake_port = int(fake.url.rsplit(":", 1)[1])
    await wait_for(lambda: waiting_for_a_connection(bot, fake_port), 5, "the note, waiting for the connection")
    await wait_for(lambda: team.in_flight == 1, 5, "the forward, at your bot")
    assert waiting_for_a_connection(bot, fake_port) and not fake.notes(conv.display_id)
    return conv, bot


async def test_a_call_that_timed_out_waiting_for_a_connection_did_not_reach_chatwoot(
    fake, start_bot, team, monkeypatch, tmp_path
):
    """CHATWOOT_TIMEOUT counts the wait for a connection too. A call that timed out before it got one never went out:
    tried again as a call that cannot have landed. Taken as one that may have landed, the note was dropped on 4.12
    (a bot token may not list the messages to check) and the customer's agents never saw it."""
    env = {"STORE_URL": f"sqlite:///{tmp_path}/s.sqlite3", "CHATWOOT_TIMEOUT": "2"}  # the forward holds it for 4 s
    conv, bot = await a_note_waiting_for_a_connection(fake, start_bot, team, monkeypatch, **env)
    await wait_for(lambda: fake.notes(conv.display_id), 15, "the handoff's note")
    await bot.idle()
    assert len(fake.notes(conv.display_id)) == 1


async def test_a_job_cut_off_by_shutdown_while_its_call_waits_for_a_connection_is_not_marked(
    fake, start_bot, team, monkeypatch, tmp_path
):
    """Cut off while its call waits for a connection: nothing went out, so the next run posts the note at once. Marked
    as a call that may have landed (and still be under way), it would wait twice CHATWOOT_TIMEOUT, then drop the note
    on 4.12 as "cannot be checked"."""
    monkeypatch.setattr("agentbot.app.SHUTDOWN_GRACE", 0.3)
    env = {"STORE_URL": f"sqlite:///{tmp_path}/s.sqlite3", "CHATWOOT_TIMEOUT": "5"}
    conv, first = await a_note_waiting_for_a_connection(fake, start_bot, team, monkeypatch, **env)
    await first.stop()  # the grace ends while the note waits for the connection
    second = await start_bot(FORWARD_URL=team.url, **env)
    await wait_for(lambda: fake.notes(conv.display_id), 5, "the handoff's note")
    await second.idle()
    assert len(fake.notes(conv.display_id)) == 1
