"""The sweep hands off pending conversations whose delivery never became a decision.

The stories run the real app (and `python -m agentbot sweep` as a process) against the fake Chatwoot,
whose conversation list has Chatwoot's pagination, filters, permissions and partial shape.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from agentbot.config import load
from agentbot.decide import decide
from agentbot.events import Delivery, parse_page
from agentbot.facts import Facts
from tests.conftest import Clock, free_port, returning, run_main, wait_for

ROOT = Path(__file__).resolve().parents[1]

# No SWEEP_RATE pace (5 calls/s by default): the stories wait for what the sweep does, not for the pace; the
# two-instance story sets its own.
USER = {"CHATWOOT_API_TOKEN": "user-token-5", "CHATWOOT_ACCOUNT_ID": "1", "SWEEP_RATE": "0"}
AWAY = 120  # seconds: written while the bot was away, longer ago than the sweep leaves to deliveries


def disconnected(fake) -> None:
    """The bot is down or not connected yet: customers write, Chatwoot delivers nothing (4.6: no fallback)."""
    fake.bots[7].outgoing_url = ""
    fake.bot_urls = []


def came_back(fake, name: str, text: str = "Hello again", inbox: int = 3):
    contact, _ = returning(fake, name, inbox)
    return fake.customer_writes(contact, text, inbox=inbox).conversation


def new_customer(fake, name: str, text: str = "Hi, where is my order?", inbox: int = 3):
    return fake.customer_writes(fake.contact(name), text, inbox=inbox).conversation


def aged(fake, convs, seconds: float = AWAY):
    for conv in convs:
        fake.age(conv.display_id, seconds)
    return convs


def assert_handed_off_once(fake, convs):
    for conv in convs:
        assert conv.status == "open", conv.display_id
        assert fake.opened_by(conv.display_id) == ["bot:7"], conv.display_id
        assert len(fake.notes(conv.display_id)) == 1, conv.display_id


async def sweep_cli(fake, tmp_path, *args: str, **env: str | None) -> tuple[int, str, str]:
    """`python -m agentbot sweep ARGS` (conftest.run_main) against the fake, storing in tmp_path."""
    full = {
        "CHATWOOT_URL": fake.url,
        "CHATWOOT_BOT_TOKEN": "bot-token-7",
        **USER,
        "STORE_URL": f"sqlite:///{tmp_path}/bot.sqlite3",
        "SWEEP_RATE": "0",
        **env,
    }
    return await run_main(tmp_path, "sweep", *args, **full)


def opened_keys(result: dict) -> set[str]:
    return {c["key"] for c in result["conversations"] if c["outcome"] == "opened"}


# ---- the fake's list endpoint is Chatwoot's -------------------------------------------------
async def test_the_conversation_list_is_for_user_tokens_with_chatwoots_pages_and_shapes(fake):
    import aiohttp

    disconnected(fake)
    convs = [new_customer(fake, f"C{i}") for i in range(30)]
    fake.agent_writes(convs[0].display_id, "a private remark", private=True)
    fake.set_status(convs[1].display_id, "open")
    base = f"{fake.url}/api/v1/accounts/1/conversations"
    async with aiohttp.ClientSession() as s:
        async with s.get(base, params={"status": "pending"}, headers={"api_access_token": "bot-token-7"}) as r:
            assert (r.status, await r.json()) == (401, {"error": "Access to this endpoint is not authorized for bots"})
        pages = []
        for page in (1, 2, 3):
            async with s.get(
                base,
                params={"status": "pending", "assignee_type": "all", "inbox_id": "3", "page": str(page)},
                headers={"api_access_token": "user-token-5"},
            ) as r:
                pages.append(await r.json())
    assert [len(p["data"]["payload"]) for p in pages] == [25, 4, 0]
    assert pages[0]["data"]["meta"] == {"mine_count": 0, "assigned_count": 0, "unassigned_count": 29, "all_count": 29}
    item = next(i for i in pages[0]["data"]["payload"] if i["id"] == convs[0].display_id)
    assert (
        item["first_reply_created_at"] == 0
        and item["agent_last_seen_at"] == 0
        and isinstance(item["waiting_since"], int)
    )
    assert item["messages"][0]["private"] is True  # the last message of any kind
    assert item["last_non_activity_message"]["content"] == "a private remark"
    total, listed, unreadable = parse_page(json.dumps(pages[0]).encode())
    assert (total, len(listed), unreadable) == (29, 25, 0)
    mine = next(x for x in listed if x.conversation.display_id == convs[0].display_id)
    assert mine.conversation.first_reply_at is None and mine.conversation.waiting_since
    assert [(m.kind, m.private) for m in mine.messages] == [("outgoing", True)]  # the sweep must read further


def test_the_sweep_decides_without_greeting_and_counts_the_wait_from_waiting_since():
    settings = load({"GREETING_MESSAGE": "Hi {name}!", "HANDOFF_AFTER_SECONDS": "600"})
    now = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
    body = {
        "data": {
            "meta": {"all_count": 1},
            "payload": [
                {
                    "id": 42,
                    "account_id": 1,
                    "inbox_id": 3,
                    "status": "pending",
                    "first_reply_created_at": 0,
                    "waiting_since": int(now.timestamp()) - 700,
                    "last_activity_at": int(now.timestamp()) - 700,
                    "meta": {"sender": {"id": 58, "name": "Maria"}, "channel": "Channel::WebWidget"},
                    "messages": [
                        {
                            "id": 9,
                            "message_type": 0,
                            "private": False,
                            "content": "hi",
                            "account_id": 1,
                            "created_at": int(now.timestamp()) - 700,
                            "sender_type": "Contact",
                            "sender": {"id": 58},
                        }
                    ],
                }
            ],
        }
    }
    _, [listed], _ = parse_page(json.dumps(body).encode())
    d = Delivery("message_created", None, listed.conversation, listed.messages[-1])
    swept = decide(d, Facts(), now, settings, live=False)
    assert (swept.outcome, swept.rule) == ("handoff", "wait")
    live = decide(d, Facts(), now, settings)
    assert live.outcome == "keep" and [j.reason for j in live.jobs] == ["greeting"]
    later = decide(d, Facts(), datetime.fromtimestamp(now.timestamp() - 200, timezone.utc), settings, live=False)
    assert later.outcome == "keep" and later.jobs == [] and later.timer[0] == now.timestamp() - 100


# ---- the stories ---------------------------------------------------------------------------
@pytest.mark.parametrize("fake", ["4.6"], indirect=True)  # before 4.7 a failed delivery is simply dropped
async def test_start_up_sweep_catches_up_on_what_was_written_while_the_bot_was_down(fake, start_bot, log_lines):
    fake.connect_bot(f"http://127.0.0.1:{free_port()}/webhook")  # the bot's address, nobody listening: it is down
    back = aged(fake, [came_back(fake, f"Returning {i}") for i in range(5)])
    new = aged(fake, [new_customer(fake, f"New {i}") for i in range(5)])
    await wait_for(lambda: fake.in_flight == 0, 10, "Chatwoot to give up on its deliveries")
    assert fake.deliveries and {d.answers[-1] for d in fake.deliveries} == {"refused"}
    assert [c.status for c in back + new] == ["pending"] * 10
    bot = await start_bot(**USER, GREETING_MESSAGE="Hi {name}, a bot here.")
    await wait_for(lambda: all(c.status == "open" for c in back), 10, "the start-up sweep's handoffs")
    await bot.idle()
    assert_handed_off_once(fake, back)
    assert all("had an agent reply" in fake.notes(c.display_id)[0] for c in back)
    assert [c.status for c in new] == ["pending"] * 5
    assert all(fake.bot_messages(c.display_id) == [] for c in back + new)  # nothing greeted late
    assert fake.fallbacks == []
    _, metrics = await bot.get("/metrics")
    assert 'agentbot_sweeps_total{outcome="done"} 1.0' in metrics
    assert 'agentbot_sweep_conversations_total{outcome="opened"} 5.0' in metrics
    [summary] = [line for line in log_lines if line.startswith("INFO sweep done")]
    assert "10 pending conversations listed" in summary and "opened 5 (returning 5)" in summary
    assert "kept 5 (no rule fired 5)" in summary


async def test_without_a_user_token_the_sweep_is_off_and_says_so(fake, start_bot, log_lines):
    disconnected(fake)
    back = aged(fake, [came_back(fake, "R")])
    bot = await start_bot()
    await bot.idle()
    assert back[0].status == "pending"
    assert any(line.startswith("INFO sweep off: without CHATWOOT_API_TOKEN") for line in log_lines)
    assert fake.calls_to("conversations", caller="user") == []


async def test_pending_before_the_bot_existed_dry_run_then_sweep_then_nothing(fake, start_bot, tmp_path):
    disconnected(fake)
    back = aged(fake, [came_back(fake, f"R{i}") for i in range(15)])
    asked = aged(fake, [new_customer(fake, f"K{i}", "can I talk to a human please") for i in range(5)])
    waited = aged(fake, [new_customer(fake, f"W{i}") for i in range(5)], 7200)
    new = aged(fake, [new_customer(fake, f"N{i}") for i in range(50)])
    rules = {
        "HANDOFF_KEYWORDS": "human",
        "HANDOFF_AFTER_SECONDS": "3600",
        "GREETING_MESSAGE": "Hi!",
        "AWAY_MESSAGE": "x",
    }
    expected = {f"1:{c.display_id}" for c in back + asked + waited}

    code, out, err = await sweep_cli(fake, tmp_path, "--dry-run", "--json", **rules)
    assert code == 0, err
    dry = json.loads(out)
    assert dry["listed"] == 75 and opened_keys(dry) == expected
    assert dry["counts"]["opened"] == {"returning": 15, "keyword": 5, "wait": 5}
    assert fake.calls_to("toggle_status") == [] and fake.status_log[-1][2] == "pending"

    bot = await start_bot(**USER, **rules, STORE_URL=f"sqlite:///{tmp_path}/bot.sqlite3", SWEEP_INTERVAL="0")
    code, out, err = await sweep_cli(fake, tmp_path, **rules)
    assert code == 0, err
    assert "returning" in out and "15" in out  # the table
    await wait_for(lambda: sum(c.status == "open" for c in back + asked + waited) == 25, 20, "25 handoffs")
    await bot.idle()
    assert_handed_off_once(fake, back + asked + waited)
    assert [c.status for c in new] == ["pending"] * 50
    assert all(fake.bot_messages(c.display_id) == [] for c in back + asked + waited + new)

    calls = len(fake.calls_to("toggle_status")) + len(fake.calls_to("messages"))
    code, out, err = await sweep_cli(fake, tmp_path, "--json", **rules)
    assert code == 0, err
    again = json.loads(out)
    assert again["listed"] == 50 and again["counts"]["opened"] == {} and again["counts"]["deferred"] == {}
    await bot.idle()
    assert len(fake.calls_to("toggle_status")) + len(fake.calls_to("messages")) == calls


async def test_handoff_all_turned_on_opens_every_pending_conversation(fake, start_bot):
    disconnected(fake)
    convs = aged(fake, [new_customer(fake, f"N{i}") for i in range(4)])
    bot = await start_bot(**USER, SWEEP_INTERVAL="3600")
    await wait_for(lambda: bot.bot.metrics.sweeps.labels("done")._value.get() == 1, 10, "the start-up sweep")
    assert [c.status for c in convs] == ["pending"] * 4
    await bot.stop()
    bot = await start_bot(**USER, HANDOFF_ALL="true", SWEEP_INTERVAL="3600")
    await wait_for(lambda: all(c.status == "open" for c in convs), 10, "HANDOFF_ALL's handoffs")
    await bot.idle()
    assert_handed_off_once(fake, convs)
    assert fake.notes(convs[0].display_id) == ["Every conversation goes to humans (HANDOFF_ALL)"]


async def test_handoff_all_outside_business_hours_defers_without_an_away_message(fake, start_bot, log_lines):
    disconnected(fake)
    convs = aged(fake, [new_customer(fake, f"N{i}") for i in range(3)])
    clock = Clock(datetime(2035, 12, 29, 20, 0, tzinfo=timezone.utc))  # a Saturday evening, after the messages
    bot = await start_bot(
        clock,
        **USER,
        HANDOFF_ALL="true",
        BUSINESS_HOURS="mon-fri 09:00-18:00",
        AWAY_MESSAGE="We are closed.",
        SWEEP_INTERVAL="3600",
    )
    swept = bot.bot.metrics.swept
    await wait_for(lambda: swept.labels("deferred")._value.get() == 3, 10, "the start-up sweep to defer all three")
    assert any("deferred to 2035-12-31 09:00" in line for line in log_lines)
    await bot.idle()
    assert [c.status for c in convs] == ["pending"] * 3
    assert all(fake.bot_messages(c.display_id) == [] for c in convs)  # no away message
    clock.at = datetime(2035, 12, 31, 9, 0, 1, tzinfo=timezone.utc)  # Monday, opening time: the timers fire
    await wait_for(lambda: all(c.status == "open" for c in convs), 10, "the deferred handoffs at opening time")
    await bot.idle()
    assert_handed_off_once(fake, convs)
    again = await bot.bot.sweeps.once()
    assert again.listed == 0


async def test_a_customer_writing_while_the_sweep_decides_their_conversation_gets_one_handoff(fake, start_bot):
    disconnected(fake)
    maria = fake.contact("Maria")
    first = fake.customer_writes(maria, "Hi", inbox=5).conversation
    fake.agent_writes(first.display_id, "Hello")
    fake.resolve(first.display_id)
    conv = fake.customer_writes(
        maria, "Me again", inbox=5
    ).conversation  # a new conversation: the evidence is in Chatwoot
    aged(fake, [first, conv])
    held = fake.hold("contact_conversations")
    bot = await start_bot(**USER)
    await wait_for(lambda: held.waiting == 1, 5, "the sweep's contact look-up (under the conversation's lock)")
    fake.customer_writes(maria, "Hello? Anyone?", inbox=5)
    await wait_for(lambda: bot.bot.handoffs.live == 1, 5, "the live delivery waiting for the lock")
    held.times = 0
    held.release.set()
    await wait_for(lambda: conv.status == "open", 5, "the handoff")
    await bot.idle()
    assert_handed_off_once(fake, [conv])
    assert f"conversation #{first.display_id} was resolved" in fake.notes(conv.display_id)[0]


async def test_two_instances_on_redis_never_sweep_at_once(fake, processes, redis, tmp_path):
    disconnected(fake)
    back = aged(fake, [came_back(fake, f"R{i}") for i in range(30)])
    env = {**USER, "STORE_URL": redis, "SWEEP_INTERVAL": "1", "SWEEP_RATE": "50"}
    a = await processes(**env)
    b = await processes(**env)

    def sweeps(p) -> list[tuple[str, str]]:
        lines = p.log.read_text().splitlines()
        starts = [ln[:23] for ln in lines if "sweep started" in ln]
        ends = [ln[:23] for ln in lines if re.search(r"sweep (done|failed)", ln)]
        return list(zip(starts, ends, strict=False))

    await wait_for(
        lambda: sweeps(a) and sweeps(b) and len(sweeps(a) + sweeps(b)) >= 3, 30, "three sweeps, by both instances"
    )
    await wait_for(lambda: all(c.status == "open" for c in back), 10, "the handoffs")
    spans = sorted(sweeps(a) + sweeps(b))
    assert all(earlier[1] <= later[0] for earlier, later in zip(spans, spans[1:], strict=False)), spans
    assert_handed_off_once(fake, back)


async def test_429_and_500_while_listing_pause_the_sweep_not_the_webhook(fake, start_bot):
    disconnected(fake)
    back = aged(fake, [came_back(fake, f"R{i}") for i in range(3)])
    fake.fail("conversations", status=429, retry_after=2)  # not 1: without Retry-After the pause is 1 s
    fake.fail("conversations", status=500)
    bot = await start_bot(**USER, HANDOFF_KEYWORDS="human")
    await wait_for(lambda: fake.calls_to("conversations", caller="user"), 5, "the sweep's first listing")
    live = new_customer(fake, "Live", "human please")
    await wait_for(lambda: live.status == "open", 5, "the live handoff while the sweep waits out Retry-After")
    assert all(c.status == "pending" for c in back)  # the sweep is still paused
    await wait_for(lambda: all(c.status == "open" for c in back), 15, "the sweep to complete")
    await bot.idle()
    assert [c.status for c in fake.calls_to("conversations", caller="user")][:3] == [429, 500, 200]
    gap = [c.at for c in fake.calls_to("conversations", caller="user")]
    assert gap[1] - gap[0] >= 1.9  # Retry-After honoured
    assert_handed_off_once(fake, back + [live])
    assert all(d.answers == [200] for d in fake.deliveries)


# ---- the command's answers --------------------------------------------------------------------
async def test_sweep_without_a_user_token_exits_2_naming_it(fake, tmp_path):
    code, out, err = await sweep_cli(fake, tmp_path, CHATWOOT_API_TOKEN=None)
    assert code == 2
    assert "CHATWOOT_API_TOKEN" in err
    assert fake.calls == []


async def test_a_store_the_sweep_cannot_open_is_one_line_naming_it_without_its_password(fake, tmp_path):
    code, out, err = await sweep_cli(fake, tmp_path, STORE_URL="redis://:hunter2@127.0.0.1:1/0")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "STORE_URL: cannot open the redis store at redis://:***@127.0.0.1:1/0" in err and "hunter2" not in err
    assert fake.calls == []


async def test_sweep_exits_1_when_chatwoot_refuses_or_fails(fake, tmp_path, monkeypatch):
    code, out, err = await sweep_cli(fake, tmp_path, "--json", CHATWOOT_API_TOKEN="bot-token-7")
    assert code == 1
    assert "not authorized for bots" in err
    assert json.loads(out)["failures"]
    fake.fail("conversations", status=500, times=10)
    monkeypatch.setattr("agentbot.outbox.BACKOFF_BASE", 0.1)  # the retries of conftest's quick_outbox
    code, out, err = await sweep_cli(fake, tmp_path, "--dry-run")
    assert code == 1 and "500" in err
    assert "incomplete: the listing failed" in " ".join(out.split())  # the table does not pass for a clean one


async def test_sweep_with_an_inbox_lists_only_that_inbox(fake, tmp_path):
    disconnected(fake)
    web = aged(fake, [came_back(fake, "W")])
    wa = aged(fake, [came_back(fake, "A", inbox=4)])
    code, out, err = await sweep_cli(fake, tmp_path, "--dry-run", "--json", "--inbox", "4")
    assert code == 0, err
    assert opened_keys(json.loads(out)) == {f"1:{wa[0].display_id}"}
    assert {c.path for c in fake.calls_to("conversations", caller="user")} == {"/api/v1/accounts/1/conversations"}
    assert web[0].status == wa[0].status == "pending"


async def test_the_sweep_leaves_inboxes_that_are_not_connected_to_this_bot(fake, tmp_path):
    disconnected(fake)
    mine = aged(fake, [came_back(fake, "Mine")])
    other = aged(fake, [came_back(fake, "Other", inbox=4)])
    fake.inboxes[4].bot_id = None  # now another bot (Dialogflow, Captain) keeps inbox 4's conversations pending
    code, out, err = await sweep_cli(fake, tmp_path, "--dry-run", "--json")
    assert code == 0, err
    assert opened_keys(json.loads(out)) == {f"1:{mine[0].display_id}"}
    assert other[0].status == "pending"
    listed = {c.path + str(c.body) for c in fake.calls_to("conversations", caller="user")}
    assert len(listed) == 1
    code, out, err = await sweep_cli(fake, tmp_path, "--dry-run", CHATWOOT_BOT_TOKEN=None)
    assert code == 2 and "CHATWOOT_BOT_TOKEN" in err


async def test_a_dry_run_writes_nothing_not_even_the_look_up_cache(fake, tmp_path):
    disconnected(fake)
    aged(fake, [new_customer(fake, f"N{i}") for i in range(3)])
    for _ in range(2):
        code, out, err = await sweep_cli(fake, tmp_path, "--dry-run")
        assert code == 0, err
    assert len(fake.calls_to("contact_conversations", caller="user")) == 6
    code, out, err = await sweep_cli(fake, tmp_path, "--json")
    assert json.loads(out)["counts"]["kept"] == {"no rule fired": 3} and json.loads(out)["outbox"] == 0


async def test_handoff_after_messages_reads_messages_only_where_that_rule_is_on(fake, tmp_path):
    disconnected(fake)
    talkative, quiet, elsewhere = fake.contact("T"), fake.contact("Q"), fake.contact("E")
    for text in ("hi", "hello?"):
        fake.customer_writes(talkative, text, inbox=4)
        fake.customer_writes(elsewhere, text, inbox=3)
    fake.customer_writes(quiet, "hi", inbox=4)
    convs = aged(
        fake,
        [
            fake.customer_writes(c, "still there?", inbox=i).conversation
            for c, i in ((talkative, 4), (quiet, 4), (elsewhere, 3))
        ],
    )
    code, out, err = await sweep_cli(fake, tmp_path, "--dry-run", "--json", INBOX_4_HANDOFF_AFTER_MESSAGES="3")
    assert code == 0, err
    result = json.loads(out)
    assert opened_keys(result) == {f"1:{convs[0].display_id}"}
    assert result["counts"]["opened"] == {"messages": 1}
    read = {c.path for c in fake.calls_to("messages_index", caller="user")}
    assert read == {f"/api/v1/accounts/1/conversations/{c.display_id}/messages" for c in convs[:2]}


async def test_a_conversation_given_back_to_the_bot_waits_for_the_customers_next_message(fake, start_bot, tmp_path):
    disconnected(fake)
    conv = aged(fake, [came_back(fake, "Maria")])[0]
    store = {"STORE_URL": f"sqlite:///{tmp_path}/bot.sqlite3", "SWEEP_INTERVAL": "3600"}
    bot = await start_bot(**USER, **store)
    await wait_for(lambda: conv.status == "open", 10, "the start-up sweep's handoff")
    fake.agent_writes(conv.display_id, "#bot", private=True)
    await wait_for(lambda: conv.status == "pending", 5, "the give-back")
    await bot.idle()
    await bot.stop()
    fake.age(conv.display_id, AWAY)
    bot = await start_bot(**USER, **store, HANDOFF_ALL="true")
    await wait_for(lambda: bot.bot.metrics.sweeps.labels("done")._value.get() == 1, 10, "the start-up sweep")
    await bot.idle()
    assert conv.status == "pending"  # the customer's old message was decided before the agent gave it back
    assert fake.opened_by(conv.display_id) == ["bot:7"]
    fake.customer_writes(conv.contact, "Thanks, one more question")
    await wait_for(lambda: conv.status == "open", 5, "the handoff at the customer's next message")


async def test_a_customer_who_wrote_5_s_before_the_bot_started_is_handed_off_within_a_minute(fake, start_bot):
    """Their delivery was lost (the bot was down, or asleep and woken by it); the start-up sweep leaves them to it
    (active in the last 30 s) and looks again once they are no longer recent, not a SWEEP_INTERVAL later."""
    disconnected(fake)
    conv = aged(fake, [came_back(fake, "Woke the bot")], 5)[0]
    clock = Clock(datetime.now(timezone.utc))
    bot = await start_bot(clock, **USER)  # SWEEP_INTERVAL: 600 s
    swept = bot.bot.metrics.swept
    await wait_for(lambda: swept.labels("skipped")._value.get() == 1, 10, "the start-up sweep to leave it")
    assert conv.status == "pending"
    clock.at += timedelta(seconds=26)  # 31 s since the customer wrote: no longer recent
    await wait_for(lambda: conv.status == "open", 5, "the second pass")
    await bot.idle()
    assert_handed_off_once(fake, [conv])
    assert bot.bot.metrics.sweeps.labels("done")._value.get() == 2


async def test_a_sweep_rate_below_one_call_a_second_is_a_pace_not_an_error():
    from agentbot.chatwoot import Throttle

    await Throttle(0.5).wait()  # the first call goes at once


async def test_the_command_does_not_sweep_while_another_instance_does(fake, tmp_path, redis):
    from agentbot.store import open_store

    store = open_store(redis)
    await store.open()
    lease = await store.lease("sweep", 60)
    try:
        code, out, err = await sweep_cli(fake, tmp_path, STORE_URL=redis)
        assert code == 1 and "another instance is sweeping" in err
        assert fake.calls == []
    finally:
        await lease.release()
        await store.close()
    code, out, err = await sweep_cli(fake, tmp_path, STORE_URL=redis)
    assert code == 0, err


async def test_a_new_customer_is_looked_up_once_not_at_every_sweep(fake, start_bot):
    disconnected(fake)
    aged(fake, [new_customer(fake, f"N{i}") for i in range(3)])
    clock = Clock(datetime.now(timezone.utc))
    bot = await start_bot(clock, **USER, SWEEP_INTERVAL="3600")
    await wait_for(lambda: bot.bot.metrics.sweeps.labels("done")._value.get() == 1, 10, "the start-up sweep")
    assert len(fake.calls_to("contact_conversations", caller="user")) == 3
    clock.at += timedelta(hours=2)  # the look-up cache (an hour) has expired
    again = await bot.bot.sweeps.once()
    assert again.counts()["kept"] == {"no rule fired": 3}
    assert len(fake.calls_to("contact_conversations", caller="user")) == 3  # the bot remembers it saw them


async def test_the_operator_pages_sweep_runs_in_the_background_and_a_dry_run_offers_run_these_now(fake, start_bot):
    from tests.test_page_http import client, sign_in

    disconnected(fake)
    back = aged(fake, [came_back(fake, f"R{i}") for i in range(2)])
    new = aged(fake, [new_customer(fake, "N")])
    bot = await start_bot(**USER, SWEEP_INTERVAL="0")  # no sweeps of its own: only the page's
    held = fake.hold("conversations")  # the listing waits: the sweep is seen running

    async with client() as s:
        await sign_in(s, bot.url)

        async def page(path: str = "/sweep") -> str:
            async with s.get(bot.url + path) as r:
                assert r.status == 200
                return await r.text()

        async def press(mode: str, **more: str) -> str:
            csrf = re.search(r'name="csrf" value="([^"]+)"', await page("/"))[1]
            form = {"csrf": csrf, "mode": mode, **more}
            async with s.post(bot.url + "/actions/sweep", data=form, allow_redirects=False) as r:
                assert r.status == 303  # POST-redirect-GET: a reload shows, never runs again
                return r.headers["Location"]

        assert "Last sweep: not yet" in await page("/")
        assert await press("preview") == "/sweep"
        running = await page()
        assert "Dry run" in running and "running" in running and 'http-equiv="refresh"' in running
        assert await press("run") == "/sweep?busy=1"  # one at a time
        assert "A sweep is running already" in await page("/sweep?busy=1")
        held.times = 0
        held.release.set()
        done = await wait_for(lambda: _done(page), 10, "the dry run's result")
        assert "decided 3 of 3" in done and "would be" in done
        for conv in back:
            assert f'href="{fake.url}/app/accounts/1/conversations/{conv.display_id}"' in done
        assert f"/conversations/{new[0].display_id}" not in done  # kept ones are counted, not listed
        assert [c.status for c in back] == ["pending", "pending"]
        run_id = re.search(r'name="run" value="([^"]+)"', done)[1]
        assert "Run these 2 now" in done

        assert await press("these", run=run_id) == "/sweep"
        result = await wait_for(lambda: _done(page), 10, "the sweep of those conversations")
        assert "Sweep of 2 conversations" in result and "opened 2 (returning 2)" in result
        await wait_for(lambda: all(c.status == "open" for c in back), 5, "the page's handoffs")
        calls = len(fake.calls_to("conversations", caller="user"))
        for _ in range(2):  # reloading the result runs nothing
            assert "opened 2 (returning 2)" in await page()
        assert len(fake.calls_to("conversations", caller="user")) == calls
        assert await press("these", run=run_id) == "/sweep?gone=1"  # that dry run is no longer the latest
        assert "Last sweep: " in (await page("/")) and "opened 2 (returning 2)" in await page("/")
    await bot.idle()
    assert_handed_off_once(fake, back)
    assert new[0].status == "pending"
    # The decision log has the sweep's handoffs (and when their opens landed); its keeps (thousands at a first
    # sweep) stay out of it.
    logged = await bot.bot.store.decisions(datetime.now(timezone.utc).timestamp())
    assert sorted((e.display_id, e.outcome, e.rule, e.event) for e in logged) == [
        (c.display_id, outcome, "returning", event)
        for c in back
        for outcome, event in (("handoff", "sweep"), ("opened", "outbox"))
    ]


async def _done(page) -> str | None:
    text = await page()
    return text if "· done" in text else None


async def test_the_pages_sweep_answers_bad_input_clearly_and_changes_nothing(fake, start_bot):
    from tests.test_page_http import client, sign_in

    disconnected(fake)
    back = aged(fake, [came_back(fake, "R")])
    bot = await start_bot(**USER, SWEEP_INTERVAL="0")
    async with client() as s:
        await sign_in(s, bot.url)
        async with s.get(bot.url + "/") as r:
            csrf = re.search(r'name="csrf" value="([^"]+)"', await r.text())[1]
        async with s.post(bot.url + "/actions/sweep", data={"csrf": csrf, "mode": "all"}) as r:
            assert r.status == 400 and "mode must be one of preview, run, these" in await r.text()
        async with s.post(bot.url + "/actions/sweep", data={"csrf": csrf, "mode": "these", "run": "nope"}) as r:
            assert "That dry run's result is gone" in await r.text()
        async with s.get(bot.url + "/sweep") as r:
            assert "No sweep started from this page" in await r.text()
    async with client() as anonymous, anonymous.get(bot.url + "/sweep", allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"] == "/"
    await bot.idle()
    assert back[0].status == "pending" and fake.calls_to("conversations", caller="user") == []


@pytest.mark.parametrize("change", ["snoozed", "open"])
async def test_an_agent_who_changes_a_conversation_after_the_listing_is_not_undone(fake, start_bot, change):
    disconnected(fake)
    maria = fake.contact("Maria")
    first = fake.customer_writes(maria, "Hi", inbox=5).conversation
    fake.agent_writes(first.display_id, "Hello")
    fake.resolve(first.display_id)
    conv = fake.customer_writes(maria, "Me again", inbox=5).conversation
    aged(fake, [first, conv])
    held = fake.hold("contact_conversations")
    bot = await start_bot(**USER)
    await wait_for(lambda: held.waiting == 1, 5, "the sweep's look-up, after the listing")
    fake.set_status(conv.display_id, change)  # an agent snoozes / opens it; the bot gets the events
    await bot.idle()
    held.times = 0
    held.release.set()
    await wait_for(lambda: bot.bot.metrics.sweeps.labels("done")._value.get() == 1, 10, "the sweep")
    await bot.idle()
    assert conv.status == change
    assert fake.notes(conv.display_id) == []


async def test_a_handoff_the_bot_decided_but_never_carried_out_is_handed_off_again_by_the_sweep(
    fake, start_bot, tmp_path
):
    """The bot counts the conversation as handed off, but nothing in its outbox will open it any more (a dead
    letter here; or its open was undone by a resolve and a reopen whose events never reached the bot)."""
    store = f"sqlite:///{tmp_path}/bot.sqlite3"
    maria, conv = returning(fake)
    bot = await start_bot(**USER, STORE_URL=store, SWEEP_INTERVAL="0")
    fake.fail("toggle_status", status=422)  # final: the handoff becomes a dead letter
    fake.customer_writes(maria, "Again")
    await bot.idle()
    assert conv.status == "pending" and len(await bot.bot.store.dead_letters()) == 1
    aged(fake, [conv])
    code, out, err = await sweep_cli(fake, tmp_path)
    assert code == 0, err
    await wait_for(lambda: conv.status == "open", 10, "the sweep's handoff")
    await bot.idle()
    assert fake.opened_by(conv.display_id) == ["bot:7"]


async def test_a_dead_letter_retried_after_the_sweep_handed_off_again_posts_no_second_note_or_message(
    fake, start_bot, tmp_path
):
    """Review: the sweep now hands off again a handed-off conversation whose handoff is a dead letter. When that
    dead letter's open was unsure (a timed-out toggle, then a final 422), `outbox --retry` later takes the sweep's
    open for its own ("done": status open and unsure) and posts its note and handoff message after the sweep's
    job posted the same: the customer reads the handoff message twice, the agents two notes."""
    store = f"sqlite:///{tmp_path}/bot.sqlite3"
    maria, conv = returning(fake)
    bot = await start_bot(**USER, STORE_URL=store, SWEEP_INTERVAL="0", CHATWOOT_TIMEOUT="0.5", HANDOFF_MESSAGE="Hi")
    fake.fail("toggle_status", hang=1.0, status=500)  # not applied, no answer in time: unsure
    fake.fail("toggle_status", status=422)  # then final: a dead letter that keeps its unsure mark
    fake.customer_writes(maria, "Again")
    await wait_for(lambda: bot.bot.store.dead_letters(), 10, "the dead letter")
    await bot.idle()
    assert conv.status == "pending"
    assert [j.attempt.maybe for j in await bot.bot.store.dead_letters()] == [True]
    aged(fake, [conv])
    code, out, err = await sweep_cli(fake, tmp_path, HANDOFF_MESSAGE="Hi")
    assert code == 0, err
    await wait_for(lambda: conv.status == "open" and fake.bot_messages(conv.display_id), 10, "the sweep's handoff")
    await bot.idle()
    assert await bot.bot.store.requeue_dead(time.time()) == 1  # `outbox --retry`
    bot.bot.outbox.wake()
    await bot.idle()
    assert fake.opened_by(conv.display_id) == ["bot:7"]
    assert fake.bot_messages(conv.display_id) == ["Hi"]
    assert len(fake.notes(conv.display_id)) == 1, fake.notes(conv.display_id)


async def test_a_handoff_the_sweep_itself_decided_and_never_carried_out_is_handed_off_again_by_the_next_sweep(
    fake, start_bot
):
    """As test_a_handoff_the_bot_decided_but_never_carried_out_is_handed_off_again_by_the_sweep, but the dead
    letter is the sweep's own handoff (the customer wrote while the bot was away). The next sweep starts a new
    period and decides the same handoff for the same message, whose dedup key (`s:<conv>:<message>:handoff:<rule>`,
    kept 24 h) the first sweep wrote: the new handoff is refused as a duplicate and the customer stays pending."""
    maria, conv = returning(fake)
    disconnected(fake)
    fake.customer_writes(maria, "Again")  # never delivered: the bot was away
    aged(fake, [conv])
    bot = await start_bot(**USER, SWEEP_INTERVAL="0")
    fake.fail("toggle_status", status=422)  # final: the sweep's handoff becomes a dead letter
    assert (await bot.bot.sweeps.once()) is not None
    await bot.idle()
    assert conv.status == "pending" and len(await bot.bot.store.dead_letters()) == 1
    assert (await bot.bot.sweeps.once()) is not None
    await wait_for(lambda: conv.status == "open", 10, "the next sweep's handoff")
    await bot.idle()
    assert fake.opened_by(conv.display_id) == ["bot:7"]


# ---- a backlog swept right: the sweep never guesses (issue 21) --------------------------------
def backlog(fake) -> tuple[list, list, list]:
    """The day the bot is connected: 25 new customers, 5 asking for a person, then 10 returning customers who
    wrote in a new conversation after a resolved one (Instagram: the evidence is only in Chatwoot). Every one
    of the 40 needs a contact look-up, twice the live share's burst; the returning ones are swept last."""
    disconnected(fake)
    new = [new_customer(fake, f"N{i}", inbox=5) for i in range(25)]
    asked = [new_customer(fake, f"K{i}", "quero falar com um atendente", inbox=5) for i in range(5)]
    back = []
    for i in range(10):
        contact, first = returning(fake, f"R{i}", inbox=5)
        back.append(fake.customer_writes(contact, "Oi de novo", inbox=5).conversation)
        aged(fake, [first])
    # The sweep takes the longest waiting first: the returning customers come after the 30 others' look-ups.
    return aged(fake, new, AWAY + 600), aged(fake, asked, AWAY + 600), aged(fake, back)


BACKLOG_RULES = {"HANDOFF_KEYWORDS": "atendente"}


async def test_one_sweep_opens_every_returning_customer_of_a_backlog_waiting_for_its_look_ups(
    fake, start_bot, tmp_path
):
    new, asked, back = backlog(fake)
    bot = await start_bot(**USER, **BACKLOG_RULES, STORE_URL=f"sqlite:///{tmp_path}/bot.sqlite3", SWEEP_INTERVAL="0")
    code, out, err = await sweep_cli(fake, tmp_path, "--json", **BACKLOG_RULES)
    assert code == 0, err
    result = json.loads(out)
    assert opened_keys(result) == {f"1:{c.display_id}" for c in asked + back}
    assert result["counts"]["opened"] == {"returning": 10, "keyword": 5}
    assert len(fake.calls_to("contact_conversations", caller="user")) == 40  # each asked once, none guessed
    await wait_for(lambda: all(c.status == "open" for c in asked + back), 20, "the 15 handoffs")
    await bot.idle()
    assert_handed_off_once(fake, asked + back)
    assert [c.status for c in new] == ["pending"] * 25


async def test_the_dry_run_of_a_backlog_names_the_same_conversations_the_sweep_opens(fake, tmp_path):
    new, asked, back = backlog(fake)
    code, out, err = await sweep_cli(fake, tmp_path, "--dry-run", "--json", **BACKLOG_RULES)
    assert code == 0, err
    assert opened_keys(json.loads(out)) == {f"1:{c.display_id}" for c in asked + back}
    assert [c.status for c in new + asked + back] == ["pending"] * 40


async def test_a_failed_look_up_is_not_a_new_customer_and_the_next_sweep_asks_again(fake, start_bot):
    disconnected(fake)
    contact, first = returning(fake, "Maria", inbox=5)
    conv = aged(fake, [first, fake.customer_writes(contact, "Oi de novo", inbox=5).conversation])[1]
    fake.fail("contact_conversations", status=500)
    clock = Clock(datetime.now(timezone.utc))
    bot = await start_bot(clock, **USER, SWEEP_INTERVAL="0")
    first_sweep = await bot.bot.sweeps.once()
    assert first_sweep.counts()["skipped"] == {"look-up failed": 1}
    assert conv.status == "pending"
    state, _ = await bot.bot.store.load(f"1:{conv.display_id}", None)
    assert state.incoming == 0  # not remembered as seen: the next sweep decides it again
    clock.at += timedelta(seconds=61)  # the failure is not asked again for a minute
    again = await bot.bot.sweeps.once()
    assert again.counts()["opened"] == {"returning": 1}
    await wait_for(lambda: conv.status == "open", 5, "the handoff")
    await bot.idle()
    assert_handed_off_once(fake, [conv])


# ---- stale pending conversations expire (PENDING_EXPIRE_*, issue 21) ----------------------------
GOODBYE = "We're closing this conversation, {name}; write again any time."
EXPIRE = {"PENDING_EXPIRE_AFTER": str(7 * 86400), "PENDING_EXPIRE_MESSAGE": GOODBYE}
SILENT = 8 * 86400  # seconds: longer than PENDING_EXPIRE_AFTER


def stale_and_spared(fake) -> tuple[list, dict]:
    """Two customers silent for 8 days, and one of each conversation that must never expire."""
    disconnected(fake)
    stale = aged(fake, [new_customer(fake, f"Silent {i}", "oi") for i in range(2)], SILENT)
    noted = new_customer(fake, "Noted", "oi")
    fake.agent_writes(noted.display_id, "looks like spam, leave it to me", private=True)
    group = fake.customer_writes(fake.contact("Family", identifier="120363040000000000@g.us"), "oi", inbox=4)
    spared = {
        "wrote yesterday": aged(fake, [new_customer(fake, "Recent", "oi")], 86400)[0],
        "an agent's note since": aged(fake, [noted], SILENT)[0],
        "a WhatsApp group": aged(fake, [group.conversation], SILENT)[0],
        "a deferred handoff": aged(fake, [new_customer(fake, "Asked", "quero um atendente")], SILENT)[0],
    }
    return stale, spared


def closed_today() -> dict[str, str]:
    """Keyword handoffs, deferred: the business is closed today and tomorrow."""
    today = datetime.now(timezone.utc).date()
    days = f"{today.isoformat()},{(today + timedelta(days=1)).isoformat()}"
    return {"HANDOFF_KEYWORDS": "atendente", "BUSINESS_HOURS": "mon-sun 00:00-24:00", "CLOSED_DATES": days}


async def test_stale_pending_conversations_are_resolved_once_with_the_message_and_the_spared_ones_stay(
    fake, start_bot, tmp_path
):
    stale, spared = stale_and_spared(fake)
    env = {**EXPIRE, **closed_today()}
    code, out, err = await sweep_cli(fake, tmp_path, "--dry-run", "--json", **env)
    assert code == 0, err
    dry = json.loads(out)
    assert {c["key"] for c in dry["conversations"] if c["outcome"] == "expired"} == {f"1:{c.display_id}" for c in stale}
    assert dry["counts"]["expired"] == {"resolve": 2} and fake.calls_to("toggle_status") == []

    bot = await start_bot(**USER, **env, STORE_URL=f"sqlite:///{tmp_path}/bot.sqlite3", SWEEP_INTERVAL="0")
    first = await bot.bot.sweeps.once()
    assert first.counts()["expired"] == {"resolve": 2} and first.counts()["deferred"] == {"keyword": 1}
    await wait_for(lambda: all(c.status == "resolved" for c in stale), 10, "the expiries")
    await bot.idle()
    second = await bot.bot.sweeps.once()
    assert second.listed == 4 and second.counts()["expired"] == {}
    await bot.idle()
    for conv in stale:
        assert fake.bot_messages(conv.display_id) == [GOODBYE.format(name=conv.contact.name)]
        assert [(was, to, by) for d, was, to, by in fake.status_log if d == conv.display_id] == [
            ("pending", "resolved", "bot:7")
        ]
    for why, conv in spared.items():
        assert conv.status == "pending", why
        assert fake.bot_messages(conv.display_id) == [], why
    assert await bot.bot.sweeps.expired_today([1]) == 2
    assert bot.bot.metrics.swept.labels("expired")._value.get() == 2


@pytest.mark.parametrize("fake", ["4.12", "4.16"], indirect=True)  # 4.12: the bot cannot read the status
async def test_a_restart_with_an_expiry_queued_repeats_nothing(fake, start_bot, tmp_path):
    disconnected(fake)
    conv = aged(fake, [new_customer(fake, "Silent", "oi")], SILENT)[0]
    env = {**USER, **EXPIRE, "STORE_URL": f"sqlite:///{tmp_path}/bot.sqlite3"}
    fake.fail("messages", status=500, times=10**6)  # the goodbye cannot be posted yet: the job waits in the outbox
    bot = await start_bot(**env)
    swept = bot.bot.metrics.swept
    await wait_for(lambda: swept.labels("expired")._value.get() == 1, 10, "the start-up sweep's expiry")
    await wait_for(lambda: fake.calls_to("messages", conv.display_id), 5, "the goodbye's first try")
    await bot.stop()
    fake.faults.clear()
    bot = await start_bot(**env)
    swept = bot.bot.metrics.swept
    await wait_for(lambda: conv.status == "resolved", 10, "the queued expiry, carried out after the restart")
    await wait_for(lambda: bot.bot.metrics.sweeps.labels("done")._value.get() == 1, 10, "the start-up sweep")
    await bot.idle()
    assert swept.labels("expired")._value.get() == 0
    assert fake.bot_messages(conv.display_id) == [GOODBYE.format(name="Silent")]
    assert [to for d, _, to, _ in fake.status_log if d == conv.display_id] == ["resolved"]


@pytest.mark.parametrize("fake", ["4.12", "4.16"], indirect=True)
async def test_stale_pending_conversations_are_labelled_once_keeping_their_labels(fake, start_bot):
    disconnected(fake)
    conv = aged(fake, [new_customer(fake, "Silent", "oi")], SILENT)[0]
    fake.label(conv.display_id, "vip")
    bot = await start_bot(
        **USER, PENDING_EXPIRE_AFTER=str(7 * 86400), PENDING_EXPIRE_ACTION="label", SWEEP_INTERVAL="0"
    )
    assert (await bot.bot.sweeps.once()).counts()["expired"] == {"label": 1}
    await wait_for(lambda: conv.labels == ["expired", "vip"], 10, "the label")
    await bot.idle()
    assert (await bot.bot.sweeps.once()).counts()["expired"] == {}
    await bot.idle()
    assert conv.status == "pending" and fake.bot_messages(conv.display_id) == []
    caller = "bot" if fake.has("bot_reads") else "user"
    assert len(fake.calls_to("set_labels", conv.display_id, caller=caller)) == 1
