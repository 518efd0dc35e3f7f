"""Stale pending conversations: `expiry.expiry` as a table (one row per verdict and exclusion), the expiry job,
and the labels endpoints the label action needs, against the fake Chatwoot per version."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from msgspec import Raw
from msgspec.structs import replace

from agentbot.actions import Job, PublicMessage, SetStatus
from agentbot.chatwoot import Chatwoot, ChatwootError, client_session
from agentbot.config import ConfigError, load
from agentbot.events import Conversation, Message, Person
from agentbot.expiry import Known, Verdict, dedup_key, expiry, resolve_job
from agentbot.facts import ConversationState
from agentbot.period import Phase

NOW = 2_000_000_000.0
DAY = 86400.0
WEEK = {"PENDING_EXPIRE_AFTER": str(7 * 86400)}
MARIA = Person(58, "contact", "Maria")
SAM = Person(5, "user", "Sam Rivera")
BOT = Person(7, "agent_bot", "Triage Bot")
PENDING = Conversation(1, 42, 3, "pending", MARIA)


def said(id: int, days_ago: float, who: Person = MARIA, kind: str | None = None, private: bool = False) -> Message:
    kind = kind or ("incoming" if who.kind == "contact" else "outgoing")
    return Message(id, kind, private, f"message {id}", who, None, NOW - days_ago * DAY)


def handoff() -> Job:
    return Job(1, 42, "keyword", [SetStatus("open")], trigger=1)


@dataclass
class Row:
    id: str
    messages: list[Message]
    verdict: Verdict
    conversation: Conversation = PENDING
    known: Known = field(default_factory=lambda: Known(ConversationState()))
    env: dict[str, str] = field(default_factory=lambda: dict(WEEK))


ROWS = [
    Row("a customer silent for 8 days expires", [said(1, 8)], Verdict.EXPIRES),
    Row("off without PENDING_EXPIRE_AFTER", [said(1, 8)], Verdict.OFF, env={}),
    Row(
        "off in an inbox that switches it off",
        [said(1, 8)],
        Verdict.OFF,
        env={**WEEK, "INBOX_3_PENDING_EXPIRE_AFTER": ""},
    ),
    Row("on in one inbox only", [said(1, 8)], Verdict.EXPIRES, env={"INBOX_3_PENDING_EXPIRE_AFTER": "3600"}),
    Row("a customer who wrote 6 days ago does not yet", [said(1, 6)], Verdict.RECENT),
    Row("counted from the customer's last message, not the first", [said(1, 9), said(2, 1)], Verdict.RECENT),
    Row("the bot's own greeting after it is no agent", [said(1, 8), said(2, 8, BOT)], Verdict.EXPIRES),
    Row("an agent's reply after the customer's last message", [said(1, 8), said(2, 7.5, SAM)], Verdict.TOUCHED),
    Row("an agent's private note after it", [said(1, 8), said(2, 7.5, SAM, private=True)], Verdict.TOUCHED),
    Row(
        "an activity after it (an assignment, a label)",
        [said(1, 8), said(2, 7.5, Person(None, None), kind="activity")],
        Verdict.TOUCHED,
    ),
    Row("an agent's reply before the customer's last message", [said(1, 9, SAM), said(2, 8)], Verdict.EXPIRES),
    Row(
        "assigned to an agent",
        [said(1, 8)],
        Verdict.TOUCHED,
        conversation=replace(PENDING, assignee=SAM),
    ),
    Row(
        "a WhatsApp group",
        [said(1, 30)],
        Verdict.GROUP,
        conversation=replace(PENDING, contact_identifier="120363040000000000@g.us"),
    ),
    Row(
        "Evolution API's own conversation",
        [said(1, 30)],
        Verdict.GROUP,
        conversation=replace(PENDING, contact_phone="+123456"),
    ),
    Row("no customer message", [said(1, 30, SAM)], Verdict.NO_CUSTOMER_MESSAGE),
    Row("no message at all", [], Verdict.NO_CUSTOMER_MESSAGE),
    Row("a handoff queued", [said(1, 8)], Verdict.HANDOFF, known=Known(ConversationState(), [handoff()])),
    Row(
        "a handoff deferred to the opening time",
        [said(1, 8)],
        Verdict.HANDOFF,
        known=Known(ConversationState(timer_due=NOW + 3600)),
    ),
    Row(
        "handed off in this period", [said(1, 8)], Verdict.HANDOFF, known=Known(ConversationState(phase=Phase.HANDOFF))
    ),
    Row(
        "its expiry queued already",
        [said(1, 8)],
        Verdict.QUEUED,
        known=Known(ConversationState(), [Job(1, 42, "Expired", [SetStatus("resolved")], rule="expire")]),
    ),
    Row(
        "labelled already (PENDING_EXPIRE_ACTION=label)",
        [said(1, 8)],
        Verdict.LABELLED,
        conversation=replace(PENDING, raw_labels=Raw(b'["vip","Expired"]')),
        env={**WEEK, "PENDING_EXPIRE_ACTION": "label"},
    ),
    Row(
        "another label does not count",
        [said(1, 8)],
        Verdict.EXPIRES,
        conversation=replace(PENDING, raw_labels=Raw(b'["vip"]')),
        env={**WEEK, "PENDING_EXPIRE_ACTION": "label"},
    ),
    Row("not pending any more", [said(1, 8)], Verdict.NOT_PENDING, conversation=replace(PENDING, status="open")),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_expiry(row: Row):
    rules = load(row.env).rules_for(row.conversation.inbox_id)
    found = expiry(row.conversation, row.messages, row.known, NOW, rules)
    assert found.verdict is row.verdict, found.reason


def test_the_expiry_job_sends_the_message_then_resolves_for_the_customers_last_message():
    rules = load({**WEEK, "PENDING_EXPIRE_MESSAGE": "Closing this, {name} (#{conversation_id})."}).rules_for(3)
    found = expiry(PENDING, [said(1, 9), said(2, 8)], Known(ConversationState()), NOW, rules)
    job = resolve_job(PENDING, found, NOW, rules, 0)
    assert job.steps == [PublicMessage("Closing this, Maria (#42)."), SetStatus("resolved")]
    assert (job.trigger, job.rule, job.verify, job.expected_status) == (2, "expire", True, "pending")
    assert not job.opens_later
    assert dedup_key(PENDING, found) == "x:1:42:2"
    no_message = resolve_job(PENDING, found, NOW, load(WEEK).rules_for(3), 0)
    assert no_message.steps == [SetStatus("resolved")]


# ---- the labels endpoints (the label action's calls) -------------------------------------------
@pytest.mark.parametrize("fake", ["4.12", "4.16"], indirect=True)
async def test_labels_replace_the_whole_list_bot_token_on_416_user_token_before(fake):
    conv = fake.customer_writes(fake.contact("Maria"), "Hi").conversation
    fake.label(conv.display_id, "vip")
    async with client_session() as session:
        bot = Chatwoot(session, fake.url, "bot-token-7")
        if fake.has("bot_reads"):
            assert await bot.labels(1, conv.display_id) == ["vip"]
            assert await bot.set_labels(1, conv.display_id, ["vip", "expired"]) == ["expired", "vip"]
        else:
            with pytest.raises(ChatwootError) as refused:
                await bot.set_labels(1, conv.display_id, ["vip", "expired"])
            assert refused.value.refused_to_bots and conv.labels == ["vip"]
            assert await bot.labels(1, conv.display_id, token="user-token-5") == ["vip"]
            saved = await bot.set_labels(1, conv.display_id, ["vip", "expired"], token="user-token-5")
            assert saved == ["expired", "vip"]
        assert conv.labels == ["expired", "vip"]
        assert await bot.set_labels(1, conv.display_id, ["expired"], token="user-token-5") == ["expired"]
        assert conv.labels == ["expired"]  # "vip" was not sent: gone


@pytest.mark.parametrize(
    "env, problem",
    [
        ({"PENDING_EXPIRE_AFTER": "-1"}, "PENDING_EXPIRE_AFTER: Input should be greater than or equal to 0"),
        ({"INBOX_3_PENDING_EXPIRE_AFTER": "a week"}, "INBOX_3_PENDING_EXPIRE_AFTER: Input should be a valid integer"),
        ({"PENDING_EXPIRE_ACTION": "delete"}, "PENDING_EXPIRE_ACTION: Input should be 'resolve' or 'label'"),
        ({"PENDING_EXPIRE_LABEL": "no reply"}, "PENDING_EXPIRE_LABEL: 'no reply' is not a Chatwoot label"),
        ({"PENDING_EXPIRE_MESSAGE": "Bye {nome}"}, "PENDING_EXPIRE_MESSAGE: unknown placeholder {nome}"),
    ],
)
def test_a_bad_expiry_setting_is_one_line_naming_it(env, problem):
    with pytest.raises(ConfigError) as refused:
        load(env)
    assert str(refused.value).startswith(problem) and "\n" not in str(refused.value)


def test_expiry_settings_are_read_per_inbox_and_in_any_case():
    s = load(
        {
            **WEEK,
            "PENDING_EXPIRE_ACTION": " Label",
            "PENDING_EXPIRE_LABEL": "Sem-Resposta",
            "INBOX_4_PENDING_EXPIRE_AFTER": "0",
        }
    )
    assert (s.pending_expire_action, s.pending_expire_label) == ("label", "sem-resposta")
    assert s.rules_for(3).pending_expire_after == 7 * 86400 and s.rules_for(4).pending_expire_after is None
    assert load({}).pending_expire_after is None  # off by default
