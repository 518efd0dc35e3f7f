"""End-to-end stories of the handoff rules: each fires when it should, stays quiet otherwise, acts once."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from tests.conftest import Clock, returning, wait_for


def calls(fake, display_id):
    """The bot's calls on one conversation, as (endpoint, body) in order."""
    return [(c.endpoint, c.body) for c in fake.calls if c.caller == "bot" and f"/conversations/{display_id}/" in c.path]


async def opened(bot, conv, timeout=2.0):
    await wait_for(lambda: conv.status == "open", timeout, f"conversation {conv.display_id} to open")
    await bot.idle()


async def stays_pending(bot, conv):
    await bot.idle()
    assert conv.status == "pending"
    assert [e for e, _ in calls(bot.fake, conv.display_id) if e == "toggle_status"] == []


async def test_keywords_match_words_without_case_or_accents(fake, start_bot):
    bot = await start_bot(HANDOFF_KEYWORDS="human,agent,atendente")
    quiet = fake.customer_writes(fake.contact("A"), "I love agentic workflows").conversation
    loud = fake.customer_writes(fake.contact("B"), "Quero falar com um ATENDÊNTE").conversation
    await opened(bot, loud)
    await stays_pending(bot, quiet)
    assert fake.notes(loud.display_id) == ['Customer asked for a person ("atendente")']
    assert fake.opened_by(loud.display_id) == ["bot:7"]


async def test_after_n_messages(fake, start_bot):
    bot = await start_bot(HANDOFF_AFTER_MESSAGES="3")
    maria = fake.contact()
    conv = fake.customer_writes(maria, "one").conversation
    fake.customer_writes(maria, "two")
    await stays_pending(bot, conv)
    fake.customer_writes(maria, "three")
    await opened(bot, conv)
    assert fake.notes(conv.display_id) == ["Customer sent 3 messages while pending"]


async def test_handoff_all_opens_at_the_first_message(fake, start_bot):
    bot = await start_bot(HANDOFF_ALL="true")
    conv = fake.customer_writes(fake.contact(), "hi").conversation
    await opened(bot, conv)
    assert fake.notes(conv.display_id) == ["Every conversation goes to humans (HANDOFF_ALL)"]


def timer_ticks(bot) -> list[float]:
    """The clock readings at which the outbox's timer loop has asked the store to fire due timers since now."""
    store, seen = bot.bot.store, []
    fire = store.fire_timers

    async def recorded(now: float) -> int:
        seen.append(now)
        return await fire(now)

    store.fire_timers = recorded
    return seen


async def test_wait_timer_fires_after_a_restart_and_is_dropped_when_opened(fake, start_bot, tmp_path):
    t0 = datetime(2026, 11, 25, 10, 0, tzinfo=timezone.utc)
    store = f"sqlite:///{tmp_path}/bot.sqlite3"
    clock = Clock(t0)
    bot = await start_bot(clock, STORE_URL=store, HANDOFF_AFTER_SECONDS="300")
    waiting = fake.customer_writes(fake.contact("Waiting"), "hello?").conversation
    taken = fake.customer_writes(fake.contact("Taken"), "hello?").conversation
    await bot.idle()
    fake.set_status(taken.display_id, "open")  # an agent took it: its timer is dropped
    await bot.idle()
    fake.set_status(taken.display_id, "pending", by="test")
    clock.at = t0 + timedelta(seconds=299)
    ticks = timer_ticks(bot)
    await wait_for(lambda: ticks, 10, "a timer tick at 299 s")  # it found nothing due yet
    await stays_pending(bot, waiting)
    await bot.stop()  # the bot is down when the timer comes due

    later = Clock(t0 + timedelta(seconds=400))
    bot = await start_bot(later, STORE_URL=store, HANDOFF_AFTER_SECONDS="300")
    await opened(bot, waiting, timeout=5)
    assert fake.notes(waiting.display_id) == ["Customer waited 300 s in pending"]
    assert taken.status == "pending"
    assert fake.opened_by(waiting.display_id) == ["bot:7"]


async def test_business_hours_defer_with_one_away_message_then_open_at_opening_time(fake, start_bot, tmp_path):
    saturday_evening = datetime(2026, 11, 28, 19, 0, tzinfo=timezone.utc)  # Lisbon: UTC+0 in winter
    clock = Clock(saturday_evening)
    env = dict(
        HANDOFF_KEYWORDS="human",
        BUSINESS_HOURS="mon-fri 09:00-18:00; sat 09:00-13:00",
        TIMEZONE="Europe/Lisbon",
        AWAY_MESSAGE="We are closed, {name}. A person will answer from 09:00.",
        STORE_URL=f"sqlite:///{tmp_path}/bot.sqlite3",
    )
    bot = await start_bot(clock, **env)
    maria = fake.contact()
    conv = fake.customer_writes(maria, "human please").conversation
    await bot.idle()
    fake.customer_writes(maria, "HUMAN!!")
    await stays_pending(bot, conv)
    assert fake.bot_messages(conv.display_id) == ["We are closed, Maria Lopez. A person will answer from 09:00."]
    await bot.stop()

    clock.at = datetime(2026, 11, 30, 8, 59, tzinfo=timezone.utc)  # Monday, a minute before opening
    bot = await start_bot(clock, **env)
    await stays_pending(bot, conv)
    clock.at = datetime(2026, 11, 30, 9, 0, 1, tzinfo=timezone.utc)
    await opened(bot, conv, timeout=5)
    assert fake.notes(conv.display_id) == ['Customer asked for a person ("human") (deferred from closed hours)']
    assert len(fake.bot_messages(conv.display_id)) == 1


async def test_business_hours_open_during_opening_time(fake, start_bot):
    clock = Clock(datetime(2026, 11, 25, 10, 0, tzinfo=timezone.utc))  # Wednesday morning
    bot = await start_bot(clock, HANDOFF_ALL="true", BUSINESS_HOURS="mon-fri 09:00-18:00", AWAY_MESSAGE="closed")
    conv = fake.customer_writes(fake.contact(), "hi").conversation
    await opened(bot, conv)
    assert fake.bot_messages(conv.display_id) == []


async def test_agent_reply_and_phone_reply_open_but_the_bot_messages_do_not(fake, start_bot):
    bot = await start_bot(GREETING_MESSAGE="Hi {name}!")
    by_agent = fake.customer_writes(fake.contact("A"), "hi").conversation
    by_phone = fake.customer_writes(fake.contact("B"), "hi", inbox=4).conversation
    await bot.idle()
    assert by_agent.status == by_phone.status == "pending"  # the greeting's echo changed nothing
    fake.agent_writes(by_agent.display_id, "Hi, Sam here")
    fake.phone_writes(by_phone.display_id, "oi, aqui é o dono da loja")
    await opened(bot, by_agent)
    await opened(bot, by_phone)
    assert fake.notes(by_agent.display_id) == ["Sam Rivera replied while the conversation was pending"]
    assert fake.notes(by_phone.display_id) == ["Evolution API replied while the conversation was pending"]


async def test_agent_reply_rule_can_be_switched_off(fake, start_bot):
    bot = await start_bot(HANDOFF_ON_AGENT_REPLY="false")
    conv = fake.customer_writes(fake.contact(), "hi").conversation
    await bot.idle()
    fake.agent_writes(conv.display_id, "Hi")
    await stays_pending(bot, conv)


async def test_inbox_filters(fake, start_bot):
    bot = await start_bot(HANDOFF_ALL="true", INBOX_IDS="3,4", IGNORE_INBOX_IDS="4")
    handled = fake.customer_writes(fake.contact("A"), "hi", inbox=3).conversation
    ignored = fake.customer_writes(fake.contact("B"), "hi", inbox=4).conversation
    outside = fake.customer_writes(fake.contact("C"), "hi", inbox=5).conversation
    await opened(bot, handled)
    await stays_pending(bot, ignored)
    await stays_pending(bot, outside)


async def test_account_filter(fake, start_bot):
    bot = await start_bot(HANDOFF_ALL="true", CHATWOOT_ACCOUNT_IDS="2")
    conv = fake.customer_writes(fake.contact(), "hi").conversation
    await stays_pending(bot, conv)


async def test_whatsapp_groups(fake, start_bot):
    # README: WHATSAPP_GROUPS is open / ignore / rules; a group's handoff is the status change only (no team, priority,
    # note or message), never deferred, and a group is never greeted nor sent the away message.
    saturday_evening = Clock(datetime(2026, 11, 28, 20, 0, tzinfo=timezone.utc))  # closed
    bot = await start_bot(
        saturday_evening,
        GROUPS="ignore",
        HANDOFF_ALL="true",
        INBOX_4_WHATSAPP_GROUPS="open",
        INBOX_4_HANDOFF_ALL="false",
        INBOX_5_WHATSAPP_GROUPS="rules",
        INBOX_5_HANDOFF_ALL="false",
        INBOX_5_HANDOFF_KEYWORDS="human",
        HANDOFF_TEAM_ID="2",
        HANDOFF_PRIORITY="high",
        HANDOFF_MESSAGE="A person will answer, {name}",
        GREETING_MESSAGE="Hi {name}",
        BUSINESS_HOURS="mon-fri 09:00-18:00",
        AWAY_MESSAGE="We are closed",
    )

    def group(name, n):
        return fake.contact(name, identifier=f"12036304{n}@g.us")

    ignored = fake.customer_writes(group("Team A", 1), "human please", inbox=3).conversation
    opened_group = fake.customer_writes(group("Team B", 2), "hi all", inbox=4).conversation
    ruled_group = fake.customer_writes(group("Team C", 3), "human please", inbox=5).conversation
    quiet_group = fake.customer_writes(group("Team D", 4), "hi all", inbox=5).conversation
    person = fake.customer_writes(
        fake.contact("Person", identifier="351911111111@s.whatsapp.net"), "hi", inbox=4
    ).conversation
    asking = fake.customer_writes(fake.contact("Asking"), "human please", inbox=5).conversation
    for group_conv in (opened_group, ruled_group):
        await opened(bot, group_conv)
        assert calls(fake, group_conv.display_id) == [("toggle_status", {"status": "open"})], group_conv.contact.name
        assert fake.opened_by(group_conv.display_id) == ["bot:7"]
    for group_conv in (ignored, quiet_group):
        await stays_pending(bot, group_conv)
        assert calls(fake, group_conv.display_id) == [], group_conv.contact.name
    # The same settings do greet a person and defer a person's handoff with the away message.
    await stays_pending(bot, person)
    assert fake.bot_messages(person.display_id) == ["Hi Person"]
    await stays_pending(bot, asking)
    assert fake.bot_messages(asking.display_id) == ["We are closed"]


async def test_evolution_system_contact_is_opened_and_never_messaged(fake, start_bot):
    bot = await start_bot(GREETING_MESSAGE="Hello!", HANDOFF_MESSAGE="An agent will be with you", HANDOFF_TEAM_ID="2")
    evolution = fake.contact("EvolutionAPI", phone_number="+123456")
    conv = fake.customer_writes(evolution, "QR code: 2@abc...", inbox=4).conversation
    await opened(bot, conv)
    assert calls(fake, conv.display_id) == [("toggle_status", {"status": "open"})]
    assert fake.bot_messages(conv.display_id) == [] and fake.notes(conv.display_id) == []


async def test_handoff_actions_in_order_once(fake, start_bot):
    bot = await start_bot(
        HANDOFF_KEYWORDS="human",
        HANDOFF_TEAM_ID="2",
        HANDOFF_ASSIGNEE_ID="6",
        HANDOFF_PRIORITY="high",
        HANDOFF_MESSAGE="Hi {name}, {reason}. Ticket #{conversation_id}.",
    )
    conv = fake.customer_writes(fake.contact(), "human").conversation
    await opened(bot, conv)
    reason = 'Customer asked for a person ("human")'
    assert calls(fake, conv.display_id) == [
        ("assignments", {"team_id": 2}),
        ("toggle_priority", {"priority": "high"}),
        ("toggle_status", {"status": "open"}),  # a human assignment would open a bot-owned conversation itself
        ("assignments", {"assignee_id": 6}),
        ("messages", {"content": reason, "message_type": "outgoing", "private": True}),
        (
            "messages",
            {
                "content": f"Hi Maria Lopez, {reason}. Ticket #{conv.display_id}.",
                "message_type": "outgoing",
                "private": False,
            },
        ),
    ]
    assert conv.team_id == 2 and conv.assignee.id == 6 and conv.priority == "high"
    assert fake.opened_by(conv.display_id) == ["bot:7"]


async def test_returning_customer_keeps_previous_agent_and_gets_returning_message(fake, start_bot):
    bot = await start_bot(HANDOFF_MESSAGE="generic", RETURNING_MESSAGE="Welcome back {name}!")
    maria = fake.contact()
    first = fake.customer_writes(maria, "hi", inbox=5).conversation
    await bot.idle()
    fake.agent_writes(first.display_id, "hello", user_id=6)
    await bot.idle()
    first.assignee = fake.users[6]  # Ana took it (opening had auto-assigned Sam)
    fake.resolve(first.display_id, user_id=6)
    await bot.idle()
    second = fake.customer_writes(maria, "me again", inbox=5).conversation
    await opened(bot, second)
    assert second.assignee.id == 6
    assert fake.bot_messages(second.display_id) == ["Welcome back Maria Lopez!"]


async def test_offline_previous_agent_falls_back_to_team_and_says_so(fake, start_bot):
    bot = await start_bot(HANDOFF_TEAM_ID="2")
    maria = fake.contact()
    first = fake.customer_writes(maria, "hi", inbox=5).conversation
    await bot.idle()
    fake.conversation(first.display_id).assignee = fake.users[6]
    fake.resolve(first.display_id, user_id=6)
    await bot.idle()
    fake.users[6].availability = "offline"
    second = fake.customer_writes(maria, "me again", inbox=5).conversation
    await opened(bot, second)
    assert second.assignee is None and second.team_id == 2
    [note] = fake.notes(second.display_id)
    assert note.endswith("Ana Costa is offline; handed to team 2 instead.")


async def test_offline_assignee_of_reopened_conversation_is_replaced(fake, start_bot):
    maria = fake.contact()
    conv = fake.customer_writes(maria, "hi").conversation
    conv.assignee = fake.users[6]
    fake.agent_writes(conv.display_id, "hello", user_id=6)
    fake.resolve(conv.display_id, user_id=6)
    fake.users[6].availability = "busy"
    bot = await start_bot()
    fake.customer_writes(maria, "again")
    await opened(bot, conv)
    assert conv.assignee is fake.users[5]  # Chatwoot's auto-assignment picked the online agent
    assert fake.notes(conv.display_id)[0].endswith("Ana Costa is busy; handed to Chatwoot's auto-assignment instead.")


async def test_greeting_once_per_conversation_also_on_redelivery(fake, start_bot):
    bot = await start_bot(GREETING_MESSAGE="Hello {name}, how can we help?")
    maria = fake.contact()
    conv = fake.customer_writes(maria, "hi").conversation
    await bot.idle()
    fake.customer_writes(maria, "are you there?")
    await bot.idle()
    for d in list(fake.deliveries):
        fake.redeliver(d)
    await bot.idle()
    assert fake.bot_messages(conv.display_id) == ["Hello Maria Lopez, how can we help?"]
    assert conv.status == "pending"


async def test_labels_attributes_and_languages(fake, start_bot):
    bot = await start_bot(HANDOFF_LABELS="vip", HANDOFF_ATTRIBUTES="plan=enterprise", KEEP_LANGUAGES="en,pt")
    vip = fake.customer_writes(fake.contact("V"), "hi")
    vip.conversation.labels.append("VIP")
    plain = fake.customer_writes(fake.contact("P"), "hi").conversation
    await bot.idle()
    fake.customer_writes(vip.conversation.contact, "hello?")
    rich = fake.customer_writes(fake.contact("E", custom_attributes={"plan": "Enterprise"}), "hi").conversation
    german = fake.contact("G")
    fake._create_conversation(german, fake.inboxes[3]).browser_language = "de"
    fake.customer_writes(german, "Hallo")
    brazilian = fake.contact("B")
    fake._create_conversation(brazilian, fake.inboxes[3]).browser_language = "pt-BR"
    fake.customer_writes(brazilian, "Olá")
    await opened(bot, vip.conversation)
    await opened(bot, rich)
    de = next(c for c in fake.conversations.values() if c.contact is german)
    br = next(c for c in fake.conversations.values() if c.contact is brazilian)
    await opened(bot, de)
    await stays_pending(bot, plain)
    await stays_pending(bot, br)
    assert fake.notes(vip.conversation.display_id) == ['Conversation has the label "VIP"']
    assert fake.notes(rich.display_id) == ["Customer attribute plan=Enterprise"]
    assert fake.notes(de.display_id) == ['Customer language "de" is not one the bot answers (en, pt)']


async def test_handoff_languages(fake, start_bot):
    bot = await start_bot(HANDOFF_LANGUAGES="fr")
    french = fake.contact("F")
    fake._create_conversation(french, fake.inboxes[3]).browser_language = "fr-CA"
    conv = fake.customer_writes(french, "Bonjour").conversation
    english = fake.customer_writes(fake.contact("E"), "Hello").conversation
    await opened(bot, conv)
    await stays_pending(bot, english)


async def test_bot_command_gives_the_conversation_back(fake, start_bot):
    bot = await start_bot(HANDOFF_KEYWORDS="human")
    maria = fake.contact()
    conv = fake.customer_writes(maria, "human").conversation
    await opened(bot, conv)
    fake.agent_writes(conv.display_id, "Sorted your address; the bot can take it from here.")
    fake.agent_writes(conv.display_id, "#bot", private=True)
    await wait_for(lambda: conv.status == "pending", 10, "the give-back")
    await bot.idle()
    fake.customer_writes(maria, "thanks, one more question")
    await bot.idle()
    assert conv.status == "pending" and len(fake.calls_to("toggle_status")) == 2
    fake.customer_writes(maria, "human again please")
    await opened(bot, conv)
    assert fake.opened_by(conv.display_id) == ["bot:7", "bot:7"]
    assert [s for d, _, s, by in fake.status_log if d == conv.display_id and by == "bot:7"] == [
        "open",
        "pending",
        "open",
    ]


async def test_other_private_notes_and_notes_on_pending_do_nothing(fake, start_bot):
    bot = await start_bot()
    conv = fake.customer_writes(fake.contact(), "hi").conversation
    await bot.idle()
    fake.agent_writes(conv.display_id, "#bot", private=True)  # pending already: nothing to give back
    fake.agent_writes(conv.display_id, "#bot please", private=True)
    await stays_pending(bot, conv)
    assert calls(fake, conv.display_id) == []


async def test_per_inbox_override(fake, start_bot):
    bot = await start_bot(INBOX_4_HANDOFF_ALL="true")
    website = fake.customer_writes(fake.contact("W"), "hi", inbox=3).conversation
    whatsapp = fake.customer_writes(fake.contact("Z"), "hi", inbox=4).conversation
    await opened(bot, whatsapp)
    await stays_pending(bot, website)


async def test_extras_refused_by_an_older_chatwoot_do_not_stop_the_handoff(fake, start_bot, monkeypatch, log_lines):
    from tests.fakechatwoot import server

    older = [
        (m, rx, name, False if name == "toggle_priority" else bot_ok, admin, fn)
        for m, rx, name, bot_ok, admin, fn in server.ROUTES
    ]
    monkeypatch.setattr(server, "ROUTES", older)
    bot = await start_bot(HANDOFF_ALL="true", HANDOFF_PRIORITY="urgent")
    conv = fake.customer_writes(fake.contact(), "hi").conversation
    await opened(bot, conv)
    assert [(c.endpoint, c.status) for c in fake.calls][:2] == [("toggle_priority", 401), ("toggle_status", 200)]
    assert len(fake.notes(conv.display_id)) == 1 and conv.priority is None
    assert any(
        line.startswith("ERROR") and "does not let agent bots call toggle_priority" in line for line in log_lines
    )


async def test_an_agent_gives_back_by_assigning_the_bot_and_the_next_message_keeps_it_pending(fake, start_bot):
    maria, conv = returning(fake)  # before the bot ran (as `returning` says): its reply and resolve took minutes
    bot = await start_bot(HANDOFF_KEYWORDS="human")
    fake.customer_writes(maria, "me again")  # returning: opened for humans
    await opened(bot, conv)
    fake.agent_writes(conv.display_id, "Done; the bot takes it from here.")
    fake.assign_to_bot(conv.display_id)  # Chatwoot 4.16+: assignee_type AgentBot, status pending
    await bot.idle()
    assert conv.status == "pending"
    fake.customer_writes(maria, "thanks, one more question")
    await stays_pending_after(bot, conv, toggles=1)
    fake.customer_writes(maria, "human please")
    await opened(bot, conv)
    assert fake.opened_by(conv.display_id) == ["bot:7", "bot:7"]


async def stays_pending_after(bot, conv, toggles):
    await bot.idle()
    assert conv.status == "pending"
    assert len([e for e, _ in calls(bot.fake, conv.display_id) if e == "toggle_status"]) == toggles


async def test_a_whatsapp_group_is_only_ever_opened(fake, start_bot):
    closed = datetime(2026, 11, 29, 23, 0, tzinfo=timezone.utc)  # a Sunday night
    bot = await start_bot(
        Clock(closed),
        HANDOFF_KEYWORDS="urgent",
        GREETING_MESSAGE="Hi {name}!",
        AWAY_MESSAGE="We're closed",
        BUSINESS_HOURS="mon-fri 09:00-18:00",
        HANDOFF_TEAM_ID="2",
        HANDOFF_PRIORITY="high",
        HANDOFF_MESSAGE="Thanks {name}",
        INBOX_5_GROUPS="open",
    )
    team = fake.contact("Team A", identifier="120363041@g.us")
    ruled = fake.customer_writes(team, "good morning all", inbox=4).conversation
    await bot.idle()
    assert fake.bot_messages(ruled.display_id) == []  # no greeting for a group
    fake.customer_writes(team, "urgent: the order is stuck", inbox=4)
    await opened(bot, ruled)  # never deferred, though closed
    at_once = fake.customer_writes(fake.contact("Team B", identifier="120363042@g.us"), "hi", inbox=5).conversation
    await opened(bot, at_once)
    for conv in (ruled, at_once):
        assert [e for e, _ in calls(fake, conv.display_id)] == ["toggle_status"]
        assert fake.bot_messages(conv.display_id) == [] and fake.notes(conv.display_id) == []
        assert conv.team_id is None and conv.priority is None


async def test_accents_on_both_sides_of_labels_and_attribute_values(fake, start_bot):
    bot = await start_bot(HANDOFF_LABELS="urgência", HANDOFF_ATTRIBUTES="plan=premium")
    labelled = fake.customer_writes(fake.contact("L"), "hi")
    labelled.conversation.labels.append("urgência")
    await bot.idle()
    fake.customer_writes(labelled.conversation.contact, "hello?")
    rich = fake.customer_writes(fake.contact("R", custom_attributes={"plan": "Prémium"}), "hi").conversation
    await opened(bot, labelled.conversation)
    await opened(bot, rich)
    assert fake.notes(rich.display_id) == ["Customer attribute plan=Prémium"]


async def test_keywords_in_scripts_without_spaces_and_with_typographic_apostrophes(fake, start_bot):
    bot = await start_bot(HANDOFF_KEYWORDS="人工,オペレーター,พนักงาน,कम,i'd like a human")
    chinese = fake.customer_writes(fake.contact("C"), "我要人工客服").conversation
    japanese = fake.customer_writes(fake.contact("J"), "オペレーターと話したい").conversation
    thai = fake.customer_writes(fake.contact("T"), "ขอคุยกับพนักงานหน่อยค่ะ").conversation
    english = fake.customer_writes(fake.contact("E"), "I’d like a human, please").conversation
    hindi = fake.customer_writes(fake.contact("H"), "मुझे कमी महसूस होती है").conversation
    for conv in (chinese, japanese, thai, english):
        await opened(bot, conv)
    await stays_pending(bot, hindi)


async def test_language_settings_written_with_an_underscore(fake, start_bot):
    bot = await start_bot(HANDOFF_LANGUAGES="pt_BR")
    brazilian = fake.contact("B")
    fake._create_conversation(brazilian, fake.inboxes[3]).browser_language = "pt-BR"
    conv = fake.customer_writes(brazilian, "Olá").conversation
    await opened(bot, conv)
    assert fake.notes(conv.display_id) == ['Customer language "pt-br" goes to humans']


async def test_a_blank_inbox_value_switches_a_global_extra_off_in_that_inbox(fake, start_bot):
    bot = await start_bot(HANDOFF_ALL="true", HANDOFF_TEAM_ID="2", INBOX_4_HANDOFF_TEAM_ID="")
    website = fake.customer_writes(fake.contact("W"), "hi", inbox=3).conversation
    whatsapp = fake.customer_writes(
        fake.contact("P", identifier="351911111111@s.whatsapp.net"), "hi", inbox=4
    ).conversation
    await opened(bot, website)
    await opened(bot, whatsapp)
    assert website.team_id == 2 and whatsapp.team_id is None


async def test_a_handoff_message_worded_as_its_note_is_posted_too(fake, start_bot):
    """HANDOFF_MESSAGE="{reason}" makes the message's text the note's: the note's echo, delivered back to the bot
    before the message goes out, is not the message's (a review's case: echoes were matched by text alone)."""
    bot = await start_bot(HANDOFF_KEYWORDS="human", HANDOFF_MESSAGE="{reason}")
    conv = fake.customer_writes(fake.contact("Maria"), "I need a human").conversation
    await opened(bot, conv)
    note = ['Customer asked for a person ("human")']
    await wait_for(lambda: fake.bot_messages(conv.display_id) == note, 5, "the handoff's message")
    assert fake.notes(conv.display_id) == note
