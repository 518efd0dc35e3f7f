"""`rules` and `explain`: what the CLI says is what the running bot does."""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime

import pytest

from agentbot.commands import show
from agentbot.config import load
from tests.conftest import Clock, run_main
from tests.fakechatwoot.model import fixture
from tests.test_webhook import signed

PAYLOADS = [
    "message_created_incoming_pending",
    "message_created_incoming_reopened",
    "message_created_outgoing",
    "message_created_private_note",
    "message_updated",
    "conversation_opened",
    "conversation_resolved",
    "conversation_status_changed",
    "conversation_updated",
    "webwidget_triggered",
]
SETUPS = [
    ({}, "2026-11-25T10:00:00+00:00"),
    (
        {"HANDOFF_KEYWORDS": "address,human", "HANDOFF_TEAM_ID": "2", "GREETING_MESSAGE": "Hi {name}"},
        "2026-11-25T10:00:00+00:00",
    ),
    (
        {
            "HANDOFF_ALL": "true",
            "BUSINESS_HOURS": "mon-fri 09:00-18:00",
            "TIMEZONE": "Europe/Lisbon",
            "AWAY_MESSAGE": "closed",
        },
        "2026-11-28T20:00:00+00:00",
    ),
    ({"HANDOFF_RETURNING": "false", "HANDOFF_AFTER_SECONDS": "60"}, "2026-11-25T10:00:00+00:00"),
]


async def explain(env: dict[str, str], path, at: str, capsys) -> str:
    """`python -m agentbot explain PATH --at AT`, run in-process (the CLI only parses and calls this)."""
    settings = load({"STORE_URL": "memory://", **env})
    assert await show.explain(settings, argparse.Namespace(payload=str(path), at=at)) == 0
    return capsys.readouterr().out


async def test_explain_command_line(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(fixture("message_created_incoming_reopened")))
    status, out, _ = await run_main(
        tmp_path, "explain", str(path), "--at", "2026-11-25T10:00:00Z", STORE_URL="memory://", HANDOFF_TEAM_ID="2"
    )
    assert status == 0
    assert out.splitlines() == [
        "handoff: Returning customer: conversation #42 had an agent reply on 2026-09-30",
        "  then conversation 1:42: assign team 2, set open, "
        "private note 'Returning customer: conversation #42 had an agent reply on 2026-09-30'",
    ]


RETURNING = "Returning customer: conversation #42 had an agent reply on 2026-09-30"
ASKED = 'Customer asked for a person ("address")'
ALL_DEFERRED = "Every conversation goes to humans (HANDOFF_ALL) (deferred from closed hours)"
NEW = "new customer: no rule fired, conversation stays pending"
QUIET = {  # the same in every setup: (outcome, rule, explain's lines); rule None: not a counted decision
    "message_created_outgoing": ("ignore", None, ["ignore: the bot's own message"]),
    "message_created_private_note": ("ignore", None, ["ignore: private note"]),
    "message_updated": ("ignore", None, ["ignore: message_updated (receipts and edits) is not new customer input"]),
    "conversation_opened": ("ignore", None, ["ignore: conversation_opened with status open needs nothing"]),
    "conversation_resolved": (
        "record",
        "-",
        ["record: conversation_resolved: conversation resolved", "  drop the conversation's timer"],
    ),
    "conversation_status_changed": (
        "ignore",
        None,
        ["ignore: conversation_status_changed with status open needs nothing"],
    ),
    "conversation_updated": ("ignore", None, ["ignore: conversation_updated with status open needs nothing"]),
    "webwidget_triggered": ("ignore", None, ["ignore: webwidget_triggered is not an event the bot acts on"]),
}
DEFER = (
    "defer",
    "all",
    [
        "defer: Every conversation goes to humans (HANDOFF_ALL); outside business hours, deferred to "
        "2026-11-30 09:00 WET",
        "  then conversation 1:42: message 'closed'",
        f"  timer at 2026-11-30T09:00:00+00:00: conversation 1:42: set open, private note '{ALL_DEFERRED}'",
    ],
)
WAIT = (
    "keep",
    "-",
    [
        f"keep: {NEW}",
        "  timer at 2026-11-25T10:01:00+00:00: conversation 1:42: set open, "
        "private note 'Customer waited 60 s in pending'",
    ],
)
EXPECTED = [  # per setup of SETUPS: what each payload must lead to
    {
        "message_created_incoming_pending": ("keep", "-", [f"keep: {NEW}"]),
        "message_created_incoming_reopened": (
            "handoff",
            "returning",
            [f"handoff: {RETURNING}", f"  then conversation 1:42: set open, private note '{RETURNING}'"],
        ),
    },
    {
        "message_created_incoming_pending": (
            "handoff",
            "keyword",
            [f"handoff: {ASKED}", f"  then conversation 1:42: assign team 2, set open, private note '{ASKED}'"],
        ),
        "message_created_incoming_reopened": (
            "handoff",
            "returning",
            [f"handoff: {RETURNING}", f"  then conversation 1:42: assign team 2, set open, private note '{RETURNING}'"],
        ),
    },
    {"message_created_incoming_pending": DEFER, "message_created_incoming_reopened": DEFER},
    {"message_created_incoming_pending": WAIT, "message_created_incoming_reopened": WAIT},  # returning is off
]


def decisions(metrics: str) -> set[tuple[str, str]]:
    """The (outcome, rule) pairs /metrics has counted a decision for."""
    found = re.findall(r'^agentbot_decisions_total\{outcome="([^"]+)",rule="([^"]*)"\} ([0-9.]+)$', metrics, re.M)
    return {(outcome, rule) for outcome, rule, n in found if float(n) > 0}


@pytest.mark.parametrize("setup", range(len(SETUPS)))
async def test_explain_gives_the_same_decision_as_the_running_bot(fake, start_bot, tmp_path, setup, capsys):
    env, at = SETUPS[setup]
    for name in PAYLOADS:
        outcome, rule, lines = {**QUIET, **EXPECTED[setup]}[name]
        bot = await start_bot(Clock(datetime.fromisoformat(at)), **env)  # a fresh store, as explain's
        body = fixture(name)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(body))
        said = (await explain(env, path, at, capsys)).splitlines()
        assert said == lines, name
        raw = json.dumps(body).encode()
        headers = signed(raw, ts=int(datetime.fromisoformat(at).timestamp()))
        status, answer = await bot.post(raw, headers)
        assert status == 200
        assert f"{answer['outcome']}: {answer['reason']}" == said[0], name
        status, metrics = await bot.get("/metrics")
        assert decisions(metrics) == ({(outcome, rule)} if rule is not None else set()), name


async def test_rules_prints_the_effective_rules_per_inbox(tmp_path):
    status, out, _ = await run_main(
        tmp_path,
        "rules",
        STORE_URL="memory://",
        HANDOFF_KEYWORDS="human,humano",
        INBOX_4_HANDOFF_ALL="true",
        BUSINESS_HOURS="mon-fri 09:00-18:00",
        TIMEZONE="Europe/Lisbon",
        INBOX_IDS="3,4",
    )
    assert status == 0
    assert "Acts on all accounts, inboxes [3, 4]." in out
    assert "messages with the words human, humano open the conversation" in out
    assert "mon 09:00-18:00" in out and "(Europe/Lisbon)" in out
    every, inbox4 = out.split("Inbox 4:")
    assert "every pending conversation is opened" not in every
    assert "every pending conversation is opened" in inbox4


async def test_explain_shows_the_evolution_switches_a_delivery_would_queue(tmp_path, capsys):
    body = fixture("message_created_incoming_pending")
    body["content"] = "a human please"
    body["conversation"]["meta"]["sender"]["phone_number"] = "+55 11 91234-5678"
    path = tmp_path / "p.json"
    path.write_text(json.dumps(body))
    env = {"HANDOFF_KEYWORDS": "human", "EVOLUTION_URL": "https://evo.example.com", "EVOLUTION_API_KEY": "k"}
    out = await explain(env, path, "2026-11-25T10:00:00+00:00", capsys)
    assert out.splitlines()[1:] == [
        "  then conversation 1:42: set open, private note 'Customer asked for a person (\"human\")'",
        "  then conversation 1:42: Evolution typebot paused 5511912345678@s.whatsapp.net",
        "  then conversation 1:42: Evolution typebot paused 5511912345678@s.whatsapp.net, 10 s after the decision",
    ]
