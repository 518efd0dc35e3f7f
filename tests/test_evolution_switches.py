"""Evolution API's bot sessions follow the conversation's life, end to end: the real app against the fake Chatwoot
and the fake Evolution on loopback. A handoff pauses (and again a moment later), a give-back opens, a resolve
closes; Evolution down or refusing never holds up Chatwoot's open, note or message."""

from __future__ import annotations

import html
import re
import time

import pytest

from agentbot.evolution import SECOND_PAUSE
from tests.conftest import counted, run_main, wait_for
from tests.fakeevolution import GLOBAL_KEY
from tests.teambot import TeamBot
from tests.test_page_http import client, sign_in

JID = "5511912345678@s.whatsapp.net"
GROUP = "120363041@g.us"
WHATSAPP = 4  # the fake Chatwoot's API inbox "WhatsApp"; the fake Evolution's instance has that name
ASKED = 'Customer asked for a person ("human")'


@pytest.fixture(autouse=True)
def quick_second_pause(monkeypatch):
    """The second pause comes 1.5 s after the handoff instead of SECOND_PAUSE (10 s); the first waits for the bot to
    see the handoff's open (guard.OPEN_WAIT), which takes up to half a second here."""
    assert SECOND_PAUSE == 10.0
    monkeypatch.setattr("agentbot.evolution.SECOND_PAUSE", 1.5)


@pytest.fixture
def start(start_bot, evo):
    async def run(**env: str):
        base = {"EVOLUTION_URL": evo.url, "EVOLUTION_API_KEY": GLOBAL_KEY, "HANDOFF_KEYWORDS": "human"}
        return await start_bot(**{**base, "SWEEP_INTERVAL": "0", **env})

    return run


def maria(fake, **fields):
    return fake.contact("Maria Lopez", **({"phone_number": "+55 11 91234-5678"} | fields))


def switched(evo, instance: str = "WhatsApp") -> list[tuple[str, str, str]]:
    """(status, remoteJid, instance) of every changeStatus Evolution accepted, in order."""
    return [(c.body["status"], c.body["remoteJid"], c.instance) for c in evo.calls_to("changeStatus")]


async def test_a_handoff_pauses_evolutions_bot_and_again_a_moment_later(fake, evo, start):
    bot = await start()
    assert evo.customer_writes(JID)  # Evolution's Typebot talks to her
    delivered = time.monotonic()
    conv = fake.customer_writes(maria(fake), "a human please", inbox=WHATSAPP).conversation
    await wait_for(lambda: switched(evo) == [("paused", JID, "WhatsApp")], 5, "the first pause")
    assert not evo.customer_writes(JID)
    evo.sessions.clear()  # the message that caused the handoff started a new session after the first pause
    assert evo.customer_writes(JID)
    await wait_for(lambda: len(switched(evo)) == 2, 5, "the second pause")
    first, second = evo.calls_to("changeStatus")
    assert second.at - delivered >= 1.5 and switched(evo)[1] == ("paused", JID, "WhatsApp")
    assert not evo.customer_writes(JID)
    await bot.idle()
    assert fake.conversation(conv.display_id).status == "open" and fake.notes(conv.display_id) == [ASKED]


async def test_a_timers_handoff_pauses_once_the_bot_sees_it_open_and_so_does_an_agents_open(fake, evo, start):
    bot = await start(HANDOFF_AFTER_SECONDS="1", EVOLUTION_INSTANCE="WhatsApp")  # conversation events: no inbox name
    conv = fake.customer_writes(maria(fake), "hello", inbox=WHATSAPP).conversation  # kept, for a second
    await wait_for(lambda: fake.conversation(conv.display_id).status == "open", 5, "the timer's handoff")
    await wait_for(lambda: len(switched(evo)) == 2, 5, "both pauses")
    other = "15550106@s.whatsapp.net"
    taken = fake.customer_writes(maria(fake, phone_number="+1 555 0106"), "hello", inbox=WHATSAPP).conversation
    await wait_for(lambda: fake.in_flight == 0, 0.5, "the keep decided")  # before the timer fires
    fake.set_status(taken.display_id, "open")  # an agent takes it over before the timer
    await wait_for(lambda: [j for _, j, _ in switched(evo)].count(other) == 2, 5, "the pauses at the agent's open")
    await bot.idle()
    assert [s for s, _, _ in switched(evo)] == ["paused"] * 4


async def test_a_give_back_opens_evolutions_bot_by_command_and_by_assigning_the_bot(fake, evo, start):
    bot = await start()
    conv = fake.customer_writes(maria(fake), "a human please", inbox=WHATSAPP).conversation
    await wait_for(lambda: len(switched(evo)) == 2, 5, "both pauses")
    fake.agent_writes(conv.display_id, "#bot", private=True)
    await wait_for(lambda: switched(evo)[2:] == [("opened", JID, "WhatsApp")], 5, "opened at #bot")
    await bot.idle()
    assert fake.conversation(conv.display_id).status == "pending" and evo.customer_writes(JID)

    fake.customer_writes(maria(fake, phone_number="+1 555 0100"), "a human please", inbox=WHATSAPP)
    other = "15550100@s.whatsapp.net"
    await wait_for(lambda: [s for s, j, _ in switched(evo) if j == other] == ["paused", "paused"], 5, "the pauses")
    second = fake.conversations[max(fake.conversations)]
    fake.assign_to_bot(second.display_id)  # Chatwoot 4.16+: the bot hears of it at the customer's next message
    fake.customer_writes(second.contact, "thanks", inbox=WHATSAPP)
    await wait_for(lambda: [s for s, j, _ in switched(evo) if j == other][2:] == ["opened"], 5, "opened at assignment")
    await bot.idle()
    assert fake.conversation(second.display_id).status == "pending"


async def test_a_resolve_closes_the_sessions_and_keep_leaves_them(fake, evo, start):
    bot = await start()
    conv = fake.customer_writes(maria(fake), "a human please", inbox=WHATSAPP).conversation
    await wait_for(lambda: len(switched(evo)) == 2, 5, "both pauses")
    fake.resolve(conv.display_id)
    await wait_for(lambda: switched(evo)[2:] == [("closed", JID, "WhatsApp")], 5, "closed at the resolve")
    await bot.idle()
    assert evo.session(JID) is None and len(switched(evo)) == 3  # ended once, though Chatwoot sent two events

    await bot.stop()
    evo.calls.clear()
    kept = await start(EVOLUTION_ON_RESOLVE="keep")
    conv = fake.customer_writes(maria(fake, phone_number="+1 555 0101"), "a human please", inbox=WHATSAPP).conversation
    await wait_for(lambda: len(switched(evo)) == 2, 5, "both pauses")
    fake.resolve(conv.display_id)
    await kept.idle()
    assert [s for s, _, _ in switched(evo)] == ["paused", "paused"]


async def test_nothing_is_switched_for_a_kept_conversation_a_website_contact_or_evolutions_own(fake, evo, start):
    bot = await start(LOG_LEVEL="DEBUG")
    fake.customer_writes(maria(fake), "hello", inbox=WHATSAPP)  # the bot keeps it: Evolution's bot goes on
    fake.customer_writes(fake.contact("Web Visitor"), "a human please", inbox=3)  # no phone, no JID
    system = fake.contact("EvolutionAPI", phone_number="+123456")
    fake.customer_writes(system, "QR code", inbox=WHATSAPP)
    await bot.idle()
    assert evo.calls == []
    assert {c.status for c in fake.conversations.values()} == {"pending", "open"}  # the two handoffs happened


async def test_a_group_is_paused_by_its_jid(fake, evo, start):
    bot = await start(WHATSAPP_GROUPS="open")
    group = fake.contact("Team chat", identifier=GROUP, phone_number=None)
    conv = fake.customer_writes(group, "hi all", inbox=WHATSAPP).conversation
    await wait_for(lambda: len(switched(evo)) == 2, 5, "both pauses")
    await bot.idle()
    assert switched(evo) == [("paused", GROUP, "WhatsApp")] * 2
    assert fake.conversation(conv.display_id).status == "open" and fake.notes(conv.display_id) == []


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_evolution_down_holds_up_nothing_and_the_switches_land_when_it_is_back(
    fake, evo, start, backend, request, tmp_path, monkeypatch
):
    url = request.getfixturevalue("redis") if backend == "redis" else f"sqlite:///{tmp_path}/bot.sqlite3"
    bot = await start(STORE_URL=url, HANDOFF_MESSAGE="An agent will answer, {name}.")
    monkeypatch.setattr("agentbot.outbox.BACKOFF_BASE", 4.0)  # a failed switch is tried again 2-4 s later
    await evo.down()
    given_back = fake.customer_writes(maria(fake), "a human please", inbox=WHATSAPP).conversation
    await wait_for(lambda: fake.bot_messages(given_back.display_id), 5, "the handoff's message")
    assert fake.conversation(given_back.display_id).status == "open" and fake.notes(given_back.display_id) == [ASKED]
    await wait_for(lambda: bot.bot.evolution.failing, 5, "a failed switch")
    fake.agent_writes(given_back.display_id, "#bot", private=True)  # its pauses still retrying meanwhile
    # at once: not after the next try of the pauses (2-4 s), as it would be in the same queue
    await wait_for(lambda: fake.conversation(given_back.display_id).status == "pending", 1.5, "the give-back")
    monkeypatch.setattr("agentbot.outbox.BACKOFF_BASE", 0.1)
    other = "15550105@s.whatsapp.net"
    handed = fake.customer_writes(maria(fake, phone_number="+1 555 0105"), "a human please", inbox=WHATSAPP)
    await wait_for(lambda: fake.bot_messages(handed.conversation.display_id), 5, "the second handoff's message")
    assert evo.calls_to("changeStatus") == [] and await bot.bot.store.depth() > 0
    await evo.up()
    await wait_for(lambda: len(switched(evo)) == 3, 10, "the switches once Evolution is back")
    await bot.idle()
    # the given-back conversation's pauses were dropped (their period ended), its opened landed
    assert sorted(switched(evo)) == [
        ("opened", JID, "WhatsApp"),
        ("paused", other, "WhatsApp"),
        ("paused", other, "WhatsApp"),
    ]
    assert bot.bot.evolution.failing is None and await bot.bot.store.dead_letters() == []


async def test_a_wrong_key_is_logged_once_not_retried_and_shown_by_check_and_the_page(
    fake, evo, start, log_lines, tmp_path
):
    bot = await start(EVOLUTION_API_KEY="wrong-key")
    for phone in ("+55 11 91234-5678", "+1 555 0102"):
        conv = fake.customer_writes(maria(fake, phone_number=phone), "a human please", inbox=WHATSAPP).conversation
        await wait_for(lambda c=conv: fake.notes(c.display_id) == [ASKED], 5, "the handoff")
    await wait_for(lambda: len(evo.calls_to("changeStatus", accepted=False)) == 4, 5, "each pause tried once")
    await bot.idle()
    assert len(evo.calls_to("changeStatus", accepted=False)) == 4 and switched(evo) == []  # none tried again
    errors = [line for line in log_lines if line.startswith("ERROR") and "Evolution API" in line]
    assert len(errors) == 1 and "set EVOLUTION_API_KEY" in errors[0] and "wrong-key" not in "".join(log_lines)
    assert await bot.bot.store.dead_letters() == []
    _, metrics = await bot.get("/metrics")
    assert counted(metrics, "agentbot_evolution_switches_total") == {("refused", "paused"): 4.0}  # result, status
    assert "Evolution API" in await health(bot) and "set EVOLUTION_API_KEY" in await health(bot)
    status, out, _ = await run_main(
        tmp_path,
        "check",
        CHATWOOT_URL=fake.url,
        CHATWOOT_BOT_TOKEN="bot-token-7",
        CHATWOOT_API_TOKEN="user-token-5",
        CHATWOOT_ACCOUNT_ID="1",
        WEBHOOK_TOKEN="a-token-only-chatwoot-knows",
        STORE_URL=f"sqlite:///{tmp_path}/check.sqlite3",
        EVOLUTION_URL=evo.url,
        EVOLUTION_API_KEY="wrong-key",
    )
    assert status == 1 and "FAIL Evolution at" in out and "Unauthorized (set EVOLUTION_API_KEY" in out


async def test_an_unknown_instance_set_for_the_inbox_is_a_configuration_problem(fake, evo, start, log_lines):
    bot = await start(INBOX_4_EVOLUTION_INSTANCE="Sales")
    for phone in ("+55 11 91234-5678", "+1 555 0103"):
        fake.customer_writes(maria(fake, phone_number=phone), "a human please", inbox=WHATSAPP)
    await wait_for(lambda: len(evo.calls_to("changeStatus", accepted=False)) == 4, 5, "each pause tried once")
    await bot.idle()
    errors = [line for line in log_lines if line.startswith("ERROR") and "Evolution API" in line]
    assert len(errors) == 1 and "INBOX_<id>_EVOLUTION_INSTANCE" in errors[0], errors
    page = await health(bot)
    assert "Evolution API" in page and 'The "Sales" instance does not exist' in page


async def test_the_default_instance_is_the_inbox_name_and_the_inboxs_own_setting_wins(fake, evo, start):
    evo.add_instance("Sales")
    bot = await start(EVOLUTION_INSTANCE="WhatsApp", INBOX_4_EVOLUTION_INSTANCE="Sales")
    fake.customer_writes(maria(fake), "a human please", inbox=WHATSAPP)
    await wait_for(lambda: len(switched(evo)) == 2, 5, "both pauses")
    await bot.idle()
    assert {i for _, _, i in switched(evo)} == {"Sales"}


async def test_an_inbox_evolution_does_not_know_by_its_name_is_skipped_quietly(fake, evo, start, log_lines):
    """A website contact who left a phone number: its JID goes to the instance named "Website", which Evolution does
    not have. Not a configuration problem: logged once, the page stays green."""
    bot = await start()
    for phone in ("+55 11 91234-5678", "+1 555 0104"):
        fake.customer_writes(maria(fake, phone_number=phone), "a human please", inbox=3)
    await wait_for(lambda: len(evo.calls_to("changeStatus", accepted=False)) == 4, 5, "each pause tried once")
    await bot.idle()
    notes = [line for line in log_lines if "Evolution has no instance of that name" in line]
    assert len(notes) == 1 and notes[0].startswith("INFO") and "INBOX_3_EVOLUTION_INSTANCE" in notes[0]
    assert not [line for line in log_lines if line.startswith("ERROR")]
    assert "not Evolution's: inbox 3 (Website)" in await health(bot)


async def test_a_resolve_learns_the_inbox_name_from_chatwoot(fake, evo, start):
    """Conversation events carry no inbox name: with CHATWOOT_API_TOKEN the bot reads the inbox list."""
    bot = await start(CHATWOOT_API_TOKEN="user-token-5")
    conv = fake.customer_writes(maria(fake), "hello", inbox=WHATSAPP).conversation  # kept: nothing switched
    await bot.idle()
    fake.resolve(conv.display_id)
    await wait_for(lambda: switched(evo) == [("closed", JID, "WhatsApp")], 5, "closed at the resolve")
    assert fake.calls_to("inboxes", caller="user")


async def test_without_the_inbox_name_a_resolve_asks_for_evolution_instance(fake, evo, start, log_lines):
    bot = await start()
    conv = fake.customer_writes(maria(fake), "hello", inbox=WHATSAPP).conversation
    await bot.idle()
    fake.resolve(conv.display_id)
    await wait_for(lambda: [line for line in log_lines if line.startswith("ERROR")], 5, "the problem logged")
    await bot.idle()
    assert evo.calls == [] and "set INBOX_4_EVOLUTION_INSTANCE or EVOLUTION_INSTANCE" in await health(bot)


async def health(bot) -> str:
    """The operator page's health section, as text."""
    async with client() as s:
        assert (await sign_in(s, bot.url)).status == 303
        async with s.get(bot.url + "/") as r:
            page = await r.text()
    section = re.search(r'id="health".*?</section>', page, re.S)
    assert section is not None
    return html.unescape(re.sub(r"<[^>]+>", " ", section.group(0)))


# ---- a hanging Evolution API and the forwards to the team's bot: each kind of lane has its own share of workers ----
async def test_a_hanging_evolution_api_does_not_hold_up_the_forwards_to_the_teams_bot(fake, evo, start, redis):
    team = await TeamBot().start()
    try:
        bot = await start(
            STORE_URL=redis,
            REDIS_MAX_CONNECTIONS="8",  # four outbox workers: Evolution API's calls may hold two of them
            EVOLUTION_INSTANCE="WhatsApp",
            FORWARD_URL=team.url,
            INBOX_4_FORWARD_URL="",  # WhatsApp has Evolution's bot; the web widget's messages go to the team's bot
        )
        convs = [
            fake.customer_writes(fake.contact(f"C{n}", phone_number=f"+55 11 9000-000{n}"), "oi", inbox=WHATSAPP)
            for n in range(6)
        ]
        await bot.idle()
        hang = evo.fail(hang=6.0, times=40)
        for message in convs:  # each resolve closes the contact's session in Evolution: six calls that hang
            fake.resolve(message.conversation.display_id)
        await wait_for(lambda: 40 - hang.times >= 2, 5, "the closes under way")
        fake.customer_writes(fake.contact("Maria"), "Which lamp fits my desk?")
        await wait_for(lambda: team.received, 3, "the forward at the team's bot")  # not after the hang's 6 s
    finally:
        await team.close()
