"""The operator page's summary figure "median time from message to open" (issue 22): each open the bot logged
(store.base.OPENED) paired with its pending period's first message, as a table of logs, and shown over HTTP after
a real handoff whose open lands late."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import msgspec
import pytest

from agentbot.page import panels
from agentbot.page.names import Names
from agentbot.store import DecisionEntry
from agentbot.store.base import OPENED
from tests.conftest import Clock, wait_for
from tests.test_page_http import client, sign_in

UTC = ZoneInfo("UTC")
NOW = datetime(2026, 11, 26, 10, 0, tzinfo=timezone.utc)
T = NOW.timestamp() - 3600  # the logs below start an hour ago


def log(*lines: tuple[int, str, float] | tuple[int, str, float, str]) -> list[DecisionEntry]:
    """(conversation, outcome, seconds after T[, rule]) oldest first → the decision log as the store gives it."""
    entries = [
        DecisionEntry(
            T + at, 1, None if what == OPENED else 3, n, "", what, rest[0] if rest else "keyword", "", "", f"{n}:{i}"
        )
        for i, (n, what, at, *rest) in enumerate(lines)
    ]
    return entries[::-1]  # newest first


@pytest.mark.parametrize(
    ("lines", "waited"),
    [
        pytest.param([(1, "keep", 0), (1, "keep", 30), (1, "handoff", 60), (1, OPENED, 65)], [65], id="from-the-first"),
        pytest.param([(1, "handoff", 0), (1, OPENED, 4)], [4], id="handed-off-at-once"),
        pytest.param([(1, "keep", 0), (1, "handoff", 10)], [], id="open-not-landed-or-dead-letter"),
        pytest.param([(1, "defer", 0), (1, OPENED, 1800)], [1800], id="deferred-opened-at-opening-hours"),
        pytest.param([(1, "keep", 0), (1, OPENED, 120, "wait")], [120], id="the-wait-rules-timer"),
        pytest.param([(1, OPENED, 5)], [], id="period-began-before-the-log"),
        pytest.param(
            [(1, "handoff", 0), (1, "keep", 500), (1, "handoff", 510), (1, OPENED, 512)], [12], id="after-a-failed-one"
        ),
        pytest.param([(1, "handoff", 0), (1, "handoff", 300, "operator"), (1, OPENED, 302)], [302], id="hand-off-now"),
        pytest.param(
            [(1, "keep", 0), (1, "pending", 100), (1, "keep", 200), (1, "handoff", 210), (1, OPENED, 211)],
            [11],
            id="given-back-begins-again",
        ),
        pytest.param(
            [(1, "keep", 0), (2, "keep", 10), (2, "handoff", 20), (2, OPENED, 25), (1, "handoff", 30), (1, OPENED, 40)],
            [15, 40],
            id="two-conversations",
        ),
        pytest.param(
            [(1, "handoff", 0), (1, OPENED, 3), (1, "keep", 900), (1, "handoff", 960), (1, OPENED, 970)],
            [3, 70],
            id="a-later-period",
        ),
    ],
)
def test_each_open_is_paired_with_its_periods_first_message(lines, waited):
    assert [o.waited for o in panels.opens(log(*lines))] == waited


def numbered(*lines: tuple[int, str, float, int | None, str, float | None]) -> list[DecisionEntry]:
    """(conversation, outcome, seconds after T, period, rule, the wait's start after T or None) oldest first."""
    return [
        msgspec.structs.replace(e, period=period, began=None if began is None else T + began)
        for e, (_, _, _, period, _, began) in zip(
            log(*((n, what, at, rule) for n, what, at, _, rule, _ in lines)), reversed(lines), strict=True
        )
    ]


@pytest.mark.parametrize(
    ("lines", "waited"),
    [
        pytest.param(
            [(1, "keep", 0, 1, "", None), (1, "handoff", 10800, 2, "keyword", None), (1, OPENED, 10804, 2, "", None)],
            [4],
            id="a-period-that-ended-unlogged",  # resolved by an agent, the team's bot, Chatwoot's fallback
        ),
        pytest.param(
            [(1, "handoff", 0, 1, "keyword", None), (1, "keep", 100, 2, "", None), (1, OPENED, 101, 1, "", None)],
            [],
            id="an-earlier-periods-open",
        ),
        pytest.param(
            [
                (1, "handoff", 0, 1, "keyword", None),
                (1, "handoff", 300, 2, "operator", None),
                (1, OPENED, 302, 2, "", None),
            ],
            [302],
            id="hand-off-now-after-a-failed-one",
        ),
        pytest.param(
            [(1, "handoff", 7200, 1, "returning", 0), (1, OPENED, 7205, 1, "", None)],
            [7205],
            id="the-sweep-knew-the-wait",
        ),
        pytest.param(
            [(1, "keep", 0, 1, "", None), (1, "handoff", 600, 1, "keyword", 300), (1, OPENED, 605, 1, "", None)],
            [605],
            id="the-sweep-after-a-keep",
        ),
        pytest.param(
            [(1, "keep", 0, None, "", None), (1, "handoff", 10, 1, "keyword", None), (1, OPENED, 12, 1, "", None)],
            [12],
            id="logged-before-periods-were",
        ),
    ],
)
def test_an_open_is_paired_with_its_own_periods_first_message_or_wait(lines, waited):
    assert [o.waited for o in panels.opens(numbered(*lines))] == waited


@pytest.mark.parametrize(
    ("opens_at", "shown"),
    [
        pytest.param([], "–", id="none"),
        pytest.param([40], "40 s", id="one"),
        pytest.param([10, 40, 3000], "40 s", id="odd"),
        pytest.param([30, 90, 150, 3000], "2 min", id="even"),
    ],
)
def test_the_summary_shows_the_median(opens_at, shown):
    lines = [line for n, at in enumerate(opens_at) for line in ((n, "handoff", 0), (n, OPENED, at))]
    entries, opened = panels.split(log(*lines))
    assert panels.summary(entries, opened, NOW, UTC, 0).median_open == shown


def test_only_opens_of_the_last_7_days_count_and_opens_are_no_decisions():
    week = (panels.chart.week_start(NOW, UTC).timestamp() - T) // 1
    entries, opened = panels.split(
        log((1, "keep", week - 100), (1, OPENED, week - 1), (2, "handoff", 0), (2, OPENED, 9))
    )
    figures = panels.summary(entries, opened, NOW, UTC, 0)
    assert figures.median_open == "9 s"  # not (99 + 9) / 2: the first open landed before the last 7 days
    assert OPENED not in {e.outcome for e in entries}
    assert all("opened" not in words for _, found in figures.spans for words, _ in found)
    rows = panels.decisions(entries, Names(), None, "all", {}, opened)
    assert [(r.entry.display_id, r.outcome, r.opened) for r in rows] == [
        (2, "handoff", "opened 9 s later"),
        (1, "keep", ""),
    ]


async def test_the_median_time_from_message_to_open_shows_when_the_open_landed(fake, start_bot):
    clock = Clock(datetime.now(timezone.utc).replace(microsecond=0))
    bot = await start_bot(clock, HANDOFF_KEYWORDS="human")
    fake.fail("toggle_status", status=422)  # final: this handoff's open never lands (a dead letter), so no figure
    failed = fake.customer_writes(fake.contact("Rui"), "A human please").conversation
    await wait_for(lambda: bot.bot.store.dead_letters(), 5, "the dead letter")

    joao = fake.contact("Joao Silva")
    conv = fake.customer_writes(joao, "Hello").conversation  # kept pending: the period's first message
    await bot.idle()
    clock.at += timedelta(seconds=60)
    held = fake.hold("toggle_status")
    fake.customer_writes(joao, "I want a human")  # the handoff, a minute after the first message
    await wait_for(lambda: held.waiting == 1, 5, "the open on its way")
    clock.at += timedelta(seconds=300)  # Chatwoot takes five minutes to answer
    held.release.set()
    await wait_for(lambda: conv.status == "open", 5, "the open")
    await bot.idle()
    async with client() as s:
        await sign_in(s, bot.url)
        async with s.get(bot.url + "/?outcome=all") as r:
            page = await r.text()
    assert re.search(r'<b id="median-open">6 min</b><span>median time from message to open \(last 7 days\)', page)
    row = re.search(rf'data-outcome="handoff">.*?#{conv.display_id}.*?</tr>', page, re.S)
    assert row is not None and "opened 5 min later" in row[0]
    assert f"#{failed.display_id}" in page and failed.status == "pending"
    assert 'data-outcome="opened"' not in page and "opened</span>" not in page
