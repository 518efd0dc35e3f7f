"""The handoff rules as plain functions: business hours with an injected clock, keyword matching, decisions."""

from __future__ import annotations

from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from agentbot.hours import EXAMPLE, Hours, parse_week
from agentbot.keywords import compile_keywords, find_keyword

LISBON = ZoneInfo("Europe/Lisbon")
HOURS = Hours(parse_week("mon-fri 09:00-18:00; sat 09:00-13:00"), LISBON, frozenset({date(2026, 12, 25)}))


def at(*args, zone=LISBON) -> datetime:
    return datetime(*args, tzinfo=zone)


def test_closing_time():
    assert HOURS.is_open(at(2026, 11, 25, 17, 59))
    assert not HOURS.is_open(at(2026, 11, 25, 18, 0))
    assert HOURS.next_open(at(2026, 11, 25, 18, 0)) == at(2026, 11, 26, 9, 0)


def test_weekend():
    assert HOURS.is_open(at(2026, 11, 28, 12, 59))  # Saturday morning
    assert not HOURS.is_open(at(2026, 11, 28, 13, 0))
    assert HOURS.next_open(at(2026, 11, 28, 13, 0)) == at(2026, 11, 30, 9, 0)  # Monday
    assert HOURS.next_open(at(2026, 11, 29, 10, 0)) == at(2026, 11, 30, 9, 0)  # from Sunday


def test_holiday():
    assert not HOURS.is_open(at(2026, 12, 25, 10, 0))  # a Friday, but CLOSED_DATES
    assert HOURS.next_open(at(2026, 12, 24, 18, 30)) == at(2026, 12, 26, 9, 0)


def test_daylight_saving_change_keeps_local_opening_time():
    # Lisbon moves from UTC+0 to UTC+1 on Sunday 2027-03-28.
    opening = HOURS.next_open(at(2027, 3, 27, 13, 0))
    assert opening == at(2027, 3, 29, 9, 0)
    assert opening.astimezone(timezone.utc).hour == 8  # 09:00 WEST is 08:00 UTC
    before = HOURS.next_open(at(2027, 3, 20, 13, 0))
    assert before.astimezone(timezone.utc).hour == 9  # a week earlier 09:00 WET is 09:00 UTC
    # New York falls back on 2026-11-01: an interval across the change is still measured in local time.
    ny = Hours(parse_week("sun 00:00-24:00"), ZoneInfo("America/New_York"))
    assert ny.is_open(datetime(2026, 11, 1, 5, 30, tzinfo=timezone.utc))  # 01:30 EDT
    assert ny.is_open(datetime(2026, 11, 1, 6, 30, tzinfo=timezone.utc))  # 01:30 EST (the repeated hour)
    assert not ny.is_open(datetime(2026, 11, 2, 5, 0, tzinfo=timezone.utc))  # Monday 00:00 EST


def test_utc_instants_are_compared_in_the_zone():
    assert HOURS.is_open(datetime(2026, 7, 1, 8, 30, tzinfo=timezone.utc))  # 09:30 in Lisbon summer
    assert not HOURS.is_open(datetime(2026, 7, 1, 7, 30, tzinfo=timezone.utc))


@pytest.mark.parametrize(
    "text, problem",
    [
        ("mon-fry 09:00-18:00", "unknown weekday 'fry'"),
        ("mon 9-18", "not HH:MM"),
        ("mon 18:00-09:00", "end before they start"),
        ("mon", "has no hours"),
        ("", "no opening hours"),
        ("tue 24:30-25:00", "'24:30'"),
    ],
)
def test_bad_business_hours_name_the_bad_part(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse_week(text)


@pytest.mark.parametrize(
    "text",
    [
        "mon-fri 09:00-18:00; sat 09:00-13:00",  # the README's way
        "mon-fri 09:00-18:00, sat 09:00-13:00",
        "Mon - Fri 09:00 - 18:00 ; sat 09:00-13:00",
        "mon,tue, wed , thu,fri 09:00-18:00;sat 09:00-13:00",
    ],
)
def test_business_hours_written_the_ways_people_write_them(text):
    assert parse_week(text) == parse_week(EXAMPLE)


def test_split_shifts_by_comma_or_space():
    assert parse_week("mon 09:00-12:00 13:00-18:00") == parse_week("mon 09:00-12:00,13:00-18:00")
    assert len(parse_week("mon 09:00-12:00, 13:00-18:00")[0]) == 2


def test_wrapping_day_ranges_and_24_00():
    week = parse_week("fri-mon 20:00-24:00")
    assert [bool(day) for day in week] == [True, False, False, False, True, True, True]


@pytest.mark.parametrize(
    "text, found",
    [
        ("I want to talk to an Atendênte please", "atendente"),
        ("HUMAN!", "human"),
        ("agentic workflows are great", None),
        ("my agent-id is 4", "agent"),
        ("superhuman", None),
        ("", None),
    ],
)
def test_keywords_ignore_case_and_accents_and_match_whole_words(text, found):
    pattern = compile_keywords(["human", "agent", "atendente", "humano"])
    assert find_keyword(pattern, text) == found


def test_chatwoot_retries_back_off_as_the_readme_says():
    """0.5 s doubling up to 60 s, with jitter (between half and all of it), never sooner than Retry-After."""
    from agentbot.outbox import backoff

    for attempts, full in [(1, 0.5), (2, 1.0), (3, 2.0), (8, 60.0), (30, 60.0)]:
        delays = [backoff(attempts, None) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays), attempts
        assert max(delays) - min(delays) > full / 10, "no jitter"
    assert all(backoff(1, 5.0) >= 5.0 for _ in range(50))


@pytest.mark.parametrize(
    "keywords, text, found",
    [
        (["人工"], "我要人工客服", "人工"),
        (["オペレーター"], "オペレーターと話したい", "オペレーター"),
        (["ｵﾍﾟﾚｰﾀｰ"], "オペレーターと話したい", "オペレーター"),  # half-width katakana folds to full width
        (["พนักงาน"], "ขอคุยกับพนักงานหน่อยค่ะ", "พนักงาน"),
        (["कम"], "मुझे कमी महसूस होती है", None),  # a vowel sign is part of the word
        (["कम"], "यह कम है", "कम"),
        (["i'd like a human"], "I’d like a human please", "i'd like a human"),
        (["l’humain"], "je veux parler à l'humain", "l'humain"),
        (["человек"], "Позовите ЧЕЛОВЕКА", None),
        (["человека"], "Позовите ЧЕЛОВЕКА", "человека"),
    ],
)
def test_keywords_in_every_script(keywords, text, found):
    assert find_keyword(compile_keywords(keywords), text) == found


# Decisions as functions: real payload shapes, one rule at a time.
import json  # noqa: E402

from agentbot.actions import SetStatus  # noqa: E402
from agentbot.config import load  # noqa: E402
from agentbot.decide import decide  # noqa: E402
from agentbot.events import parse  # noqa: E402
from agentbot.facts import ConversationState, Facts  # noqa: E402
from tests.fakechatwoot.model import fixture  # noqa: E402

NOON = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
SUNDAY_NIGHT = datetime(2026, 11, 29, 23, 0, tzinfo=timezone.utc)


def settings(**env):
    return load(
        {"CHATWOOT_URL": "https://chat.example.com", "CHATWOOT_BOT_TOKEN": "t", "STORE_URL": "memory://", **env},
        env_file=None,
    )


def message(kind="pending", text="hello", **conversation):
    body = fixture(f"message_created_incoming_{kind}")
    body["content"] = text
    meta = conversation.pop("meta", {})
    sender = conversation.pop("sender", {})
    body["conversation"].update(conversation)
    body["conversation"]["meta"].update(meta)
    body["conversation"]["meta"]["sender"].update(sender)
    return parse(json.dumps(body).encode())


def new_customer(**conversation):
    """A pending conversation without an agent reply or a human assignee (bot-owned, as on 4.16.2+)."""
    return message("pending", **conversation)


def test_labels_fold_accents_on_both_sides():
    d = new_customer(labels=["Urgência"])
    decision = decide(d, Facts(), NOON, settings(HANDOFF_LABELS="urgência"))
    assert decision.outcome == "handoff" and decision.rule == "label"


def test_attribute_values_fold_accents_and_case():
    d = new_customer(custom_attributes={"plan": "Prémium"})
    decision = decide(d, Facts(), NOON, settings(HANDOFF_ATTRIBUTES="plan=premium"))
    assert decision.outcome == "handoff" and decision.rule == "attribute"


@pytest.mark.parametrize("configured", ["pt_BR", "pt-BR", "PT_br"])
def test_language_tags_are_normalised(configured):
    d = new_customer(additional_attributes={"browser_language": "pt-BR"})
    assert decide(d, Facts(), NOON, settings(HANDOFF_LANGUAGES=configured)).rule == "language"
    assert decide(d, Facts(), NOON, settings(KEEP_LANGUAGES=configured)).outcome == "keep"


def test_given_back_by_assignment_the_agent_reply_no_longer_counts():
    # Chatwoot 4.16+: an agent assigned the bot; the conversation is bot-owned and pending again.
    bot = {"id": 7, "name": "Triage Bot", "type": "agent_bot"}
    d = message("reopened", "thanks!", meta={"assignee": bot, "assignee_type": "AgentBot"})
    assert d.conversation.first_reply_at is not None
    had_it = Facts(ConversationState(human_owned=True))  # the bot last saw it with a human (or nobody)
    assert decide(d, had_it, NOON, settings()).outcome == "keep"
    seen = Facts(ConversationState(resolved_on="2026-11-20", since=900, human_owned=True))
    assert decide(d, seen, NOON, settings()).outcome == "keep"
    # Other rules still apply; a conversation bot-owned since its creation (an agent replied and resolved it
    # without taking it) is a returning customer's, and so is one the bot never saw.
    assert decide(d, had_it, NOON, settings(HANDOFF_KEYWORDS="thanks")).rule == "keyword"
    assert decide(d, Facts(), NOON, settings()).rule == "returning"
    always_bot = Facts(ConversationState(resolved_on="2026-11-20", since=900))
    assert decide(d, always_bot, NOON, settings()).rule == "returning"
    human = message("reopened", "thanks!")
    assert decide(human, Facts(), NOON, settings()).rule == "returning"


@pytest.mark.parametrize("groups", ["open", "rules"])
def test_a_whatsapp_group_gets_the_status_change_only(groups):
    rules = settings(
        WHATSAPP_GROUPS=groups,
        HANDOFF_ALL="true",
        HANDOFF_TEAM_ID="2",
        HANDOFF_PRIORITY="high",
        HANDOFF_ASSIGNEE_ID="5",
        HANDOFF_MESSAGE="Thanks {name}",
        AWAY_MESSAGE="Closed",
        BUSINESS_HOURS="mon-fri 09:00-18:00",
    )
    d = new_customer(sender={"identifier": "120363041@g.us"})
    decision = decide(d, Facts(), SUNDAY_NIGHT, rules)
    assert decision.outcome == "handoff"
    assert [job.steps for job in decision.jobs] == [[SetStatus("open")]]


def test_a_whatsapp_group_is_never_greeted_or_deferred():
    rules = settings(GREETING_MESSAGE="Hi {name}", HANDOFF_AFTER_SECONDS="300", BUSINESS_HOURS="mon-fri 09:00-18:00")
    d = new_customer(sender={"identifier": "120363041@g.us"})
    decision = decide(d, Facts(), SUNDAY_NIGHT, rules)
    assert decision.outcome == "keep" and decision.jobs == []
    due, job = decision.timer
    assert due == SUNDAY_NIGHT.timestamp() + 300 and job.steps == [SetStatus("open")]
