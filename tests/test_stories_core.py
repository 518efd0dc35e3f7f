"""End-to-end stories of the core behaviour (returning customers opened, everyone else left alone, once, through
duplicates and Chatwoot failures): the real app against the fake Chatwoot, asserting on Chatwoot's state."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.conftest import counted, returning, wait_for
from tests.fakechatwoot.model import fixture
from tests.fakechatwoot.server import VERSIONS
from tests.test_webhook import signed

pytestmark = pytest.mark.parametrize("fake", VERSIONS, indirect=True)  # Chatwoot 4.6, 4.12 and 4.16+


async def test_new_customer_stays_pending(fake, start_bot):
    bot = await start_bot()
    maria = fake.contact()
    msg = fake.customer_writes(maria, "Hi, where is my order?")
    await bot.idle()
    conv = msg.conversation
    assert conv.status == "pending"
    assert fake.calls == []
    assert [d.event for d in fake.deliveries][0] == "message_created"  # 4.13+: then waiting_since's update
    assert all(d.answers == [200] for d in fake.deliveries)


async def test_returning_customer_in_reopened_conversation_is_opened_by_the_bot(fake, start_bot):
    bot = await start_bot()
    maria = fake.contact()
    conv = fake.customer_writes(maria, "Hi").conversation
    await bot.idle()
    fake.set_status(conv.display_id, "open")
    fake.agent_writes(conv.display_id, "Hello Maria, done.")
    fake.resolve(conv.display_id)
    await bot.idle()
    fake.customer_writes(maria, "Hi again, the parcel still has the old address")
    await wait_for(lambda: conv.status == "open", 10, "the handoff")
    await bot.idle()
    assert fake.opened_by(conv.display_id)[-1] == "bot:7"
    assert len(fake.calls_to("toggle_status", conv.display_id)) == 1
    assert fake.calls_to("toggle_status")[0].body == {"status": "open"}
    [note] = fake.notes(conv.display_id)
    assert note.startswith(f"Returning customer: conversation #{conv.display_id} was resolved on ")
    assert fake.fallbacks == []


async def test_reopened_conversation_without_bot_memory_is_recognised_from_the_payload(fake, start_bot):
    maria = fake.contact()
    conv = fake.customer_writes(maria, "Hi").conversation  # no bot connected yet: nothing delivered
    fake.set_status(conv.display_id, "open")
    fake.agent_writes(conv.display_id, "Sorted.")
    fake.resolve(conv.display_id)
    bot = await start_bot()  # a fresh store: the bot never saw this conversation
    fake.customer_writes(maria, "It happened again")
    await wait_for(lambda: conv.status == "open", 10, "the handoff")
    await bot.idle()
    assert fake.opened_by(conv.display_id)[-1] == "bot:7"
    assert "had an agent reply" in fake.notes(conv.display_id)[0]


async def test_human_assignee_on_pending_conversation_counts_as_returning(fake, start_bot):
    maria = fake.contact()
    conv = fake.customer_writes(maria, "Hi").conversation
    conv.assignee = fake.users[6]  # kept through a resolve → pending reopen, no reply sent
    fake.resolve(conv.display_id, user_id=6)
    bot = await start_bot()
    fake.customer_writes(maria, "Hello?")
    await wait_for(lambda: conv.status == "open", 10, "the handoff")
    await bot.idle()
    assert fake.notes(conv.display_id) == [
        f"Returning customer: conversation #{conv.display_id} is assigned to Ana Costa"
    ]


async def test_returning_customer_in_a_new_conversation(fake, start_bot):
    bot = await start_bot()
    maria = fake.contact()
    first = fake.customer_writes(maria, "Hi", inbox=5).conversation
    await bot.idle()
    fake.resolve(first.display_id)
    await bot.idle()
    second = fake.customer_writes(maria, "Me again", inbox=5).conversation
    assert second.display_id != first.display_id
    await wait_for(lambda: second.status == "open", 10, "the handoff")
    await bot.idle()
    assert fake.opened_by(second.display_id) == ["bot:7"]
    assert f"conversation #{first.display_id} was resolved" in fake.notes(second.display_id)[0]


async def test_returning_customer_found_through_chatwoot_lookup_once_per_hour(fake, start_bot):
    maria = fake.contact()
    first = fake.customer_writes(maria, "Hi", inbox=5).conversation
    fake.resolve(first.display_id)
    bot = await start_bot(CHATWOOT_API_TOKEN="user-token-5", HANDOFF_NOTE="false")
    second = fake.customer_writes(maria, "Back", inbox=5).conversation
    await wait_for(lambda: second.status == "open", 10, "the handoff")
    await bot.idle()
    fake.resolve(second.display_id)
    await bot.idle()
    ana = fake.contact("Ana Novak")
    third = fake.customer_writes(ana, "New here", inbox=5).conversation
    await bot.idle()
    fake.customer_writes(ana, "Hello?", inbox=5)
    await bot.idle()
    assert third.status == "pending"
    lookups = fake.calls_to("contact_conversations", caller="user")
    assert [c.path.split("/")[-2] for c in lookups] == [str(maria.id), str(ana.id)]  # Ana's answer is cached
    assert fake.notes(second.display_id) == []  # HANDOFF_NOTE=false


async def test_everything_else_is_acknowledged_and_left_alone(fake, start_bot):
    bot = await start_bot(GREETING_MESSAGE="Hi {name}, how can I help?")
    maria = fake.contact()
    first = fake.customer_writes(maria, "Hi", inbox=4)  # an API channel: receipts are message_updated
    conv = first.conversation
    await bot.idle()
    fake.agent_writes(conv.display_id, "internal: VIP customer", private=True)
    fake.label(conv.display_id, "vip")
    fake.edit(first, "Hi, about order 1234")
    await bot.idle()
    events = [d.event for d in fake.deliveries]
    assert (
        events.count("message_created") == 3 and events.count("message_updated") == 3
    )  # the greeting's receipts, the edit
    if fake.has("change_events"):
        assert "conversation_updated" in events  # waiting_since, the label
    assert [(c.endpoint, c.body) for c in fake.calls if c.caller == "bot"] == [
        ("messages", {"content": "Hi Maria Lopez, how can I help?", "message_type": "outgoing", "private": False})
    ]
    assert conv.status == "pending"
    assert all(d.answers == [200] for d in fake.deliveries)
    # The customer's message was kept pending (and greeted); every other delivery was an ignore.
    expected = Counter((event, "ignore") for event in events)
    expected["message_created", "ignore"] -= 1
    expected["message_created", "keep"] = 1
    assert counted((await bot.get("/metrics"))[1], "agentbot_deliveries_total") == expected
    assert fake.fallbacks == []


async def test_resolve_is_recorded_and_conversation_events_are_acknowledged(fake, start_bot):
    bot = await start_bot()
    maria = fake.contact()
    conv = fake.customer_writes(maria, "Hi").conversation
    await bot.idle()
    fake.set_status(conv.display_id, "open")
    fake.resolve(conv.display_id)
    await bot.idle()
    events = {"conversation_opened", "conversation_resolved"}
    if fake.has("change_events"):
        events |= {"conversation_status_changed", "conversation_updated"}
    assert {d.event for d in fake.deliveries} >= events
    assert all(d.answers == [200] for d in fake.deliveries)
    state, previous = await bot.bot.store.load(f"1:{conv.display_id}", f"1:{maria.id}")
    assert state.resolved_on and previous.display_id == conv.display_id


async def test_conversation_updated_without_a_status_change_needs_no_memory(fake, start_bot):
    bot = await start_bot(WEBHOOK_TOKEN="a-token-only-chatwoot-knows")  # verified: the answer says why
    body = fixture("conversation_updated")
    body["status"] = "resolved"
    cases = [  # (changed_attributes, outcome): a label on a resolved conversation is not a resolve
        ([{"labels": {"previous_value": [], "current_value": ["vip"]}}], "ignore"),
        (None, "record"),  # Chatwoot before 4.13 doesn't say what changed: the bot reads its memory
        ([{"status": {"previous_value": "open", "current_value": "resolved"}}], "record"),
    ]
    for n, (changed, outcome) in enumerate(cases):
        raw = json.dumps({**body, "changed_attributes": changed, "updated_at": 1790931680.5 + n}).encode()
        status, answer = await bot.post(raw, signed(raw))
        assert (status, answer["outcome"]) == (200, outcome), changed
        if outcome == "ignore":
            assert answer["reason"] == "conversation_updated without a status change needs nothing"
            assert (await bot.bot.store.load(f"1:{body['id']}", None))[0].resolved_on is None


async def test_duplicate_delivery_leads_to_one_handoff(fake, start_bot):
    maria, conv = returning(fake)
    bot = await start_bot()
    fake.customer_writes(maria, "Again")
    await wait_for(lambda: conv.status == "open", 10, "the handoff")
    await bot.idle()
    delivery = next(
        d for d in fake.deliveries if d.event == "message_created" and d.payload["message_type"] == "incoming"
    )
    fake.set_status(conv.display_id, "pending", by="test")  # even if it were pending again
    await bot.idle()
    fake.redeliver(delivery)
    await bot.idle()
    assert delivery.answers == [200, 200]
    assert len(fake.calls_to("toggle_status", conv.display_id)) == 1
    assert len(fake.notes(conv.display_id)) == 1


async def test_burst_of_messages_leads_to_one_handoff_and_one_note(fake, start_bot):
    maria, conv = returning(fake)
    bot = await start_bot()
    for i in range(20):
        fake.customer_writes(maria, f"message {i}")
    await wait_for(lambda: conv.status == "open", 10, "the handoff")
    await bot.idle()
    assert len(fake.calls_to("toggle_status", conv.display_id)) == 1
    assert len(fake.notes(conv.display_id)) == 1
    assert fake.fallbacks == []


async def test_chatwoot_failing_twice_then_working(fake, start_bot):
    maria, conv = returning(fake)
    bot = await start_bot()
    fake.fail("toggle_status", status=500, times=2)
    fake.customer_writes(maria, "Again")
    await wait_for(lambda: conv.status == "open", 10.0, "the retried handoff")
    await bot.idle()
    assert [c.status for c in fake.calls_to("toggle_status")] == [500, 500, 200]
    assert len(fake.notes(conv.display_id)) == 1
    assert fake.fallbacks == []


async def test_healthz_answers(fake, start_bot):
    bot = await start_bot()
    status, text = await bot.get("/healthz")
    assert status == 200 and '"status": "ok"' in text


async def test_a_conversation_resolved_twice_is_recorded_twice_without_delivery_ids(fake, start_bot):
    fake.bots[7].secret = None
    bot = await start_bot(WEBHOOK_TOKEN="wh-3fK9pQ2mZx7LrT5vB8nC1dY6")  # verified: the answer has the decision
    from tests.fakechatwoot.model import fixture

    first = fixture("conversation_resolved")
    again = {**fixture("conversation_resolved"), "updated_at": first["updated_at"] + 86400}
    answers = []
    for body in (first, first, again):  # a retry, then the same conversation resolved a day later
        status, answer = await bot.post(body)
        assert status == 200
        answers.append(answer["outcome"])
    assert answers == ["record", "duplicate", "record"]
