"""`rules` and `explain`: what the CLI says is what the running bot does."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import datetime

import pytest

from agentbot import explain as commands
from agentbot.config import load
from tests.conftest import Clock
from tests.fakechatwoot.model import fixture
from tests.test_config import ROOT
from tests.test_webhook import signed

PAYLOADS = ["message_created_incoming_pending", "message_created_incoming_reopened", "message_created_outgoing",
            "message_created_private_note", "message_updated", "conversation_opened", "conversation_resolved",
            "conversation_status_changed", "conversation_updated", "webwidget_triggered"]
SETUPS = [
    ({}, "2026-11-25T10:00:00+00:00"),
    ({"HANDOFF_KEYWORDS": "address,human", "HANDOFF_TEAM_ID": "2", "GREETING_MESSAGE": "Hi {name}"}, "2026-11-25T10:00:00+00:00"),
    ({"HANDOFF_ALL": "true", "BUSINESS_HOURS": "mon-fri 09:00-18:00", "TIMEZONE": "Europe/Lisbon",
      "AWAY_MESSAGE": "closed"}, "2026-11-28T20:00:00+00:00"),
    ({"HANDOFF_RETURNING": "false", "HANDOFF_AFTER_SECONDS": "60"}, "2026-11-25T10:00:00+00:00"),
]


async def explain(env: dict[str, str], path, at: str, capsys) -> str:
    """`python -m agentbot explain PATH --at AT`, run in-process (the CLI only parses and calls this)."""
    settings = load({"STORE_URL": "memory://", **env})
    assert await commands.explain(settings, argparse.Namespace(payload=str(path), at=at)) == 0
    return capsys.readouterr().out


def test_explain_command_line(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(fixture("message_created_incoming_reopened")))
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CHATWOOT_", "HANDOFF_", "INBOX_", "STORE_"))}
    result = subprocess.run([sys.executable, "-m", "agentbot", "explain", str(path), "--at", "2026-11-25T10:00:00Z"],
                            env={**clean, "STORE_URL": "memory://", "HANDOFF_TEAM_ID": "2"}, cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.stdout.splitlines() == [
        "handoff: Returning customer: conversation #42 had an agent reply on 2026-09-30",
        "  then conversation 1:42: assign team 2, set open, "
        "private note 'Returning customer: conversation #42 had an agent reply on 2026-09-30'",
    ]


@pytest.mark.parametrize("env, at", SETUPS)
async def test_explain_gives_the_same_decision_as_the_running_bot(fake, start_bot, tmp_path, env, at, capsys):
    for name in PAYLOADS:
        bot = await start_bot(Clock(datetime.fromisoformat(at)), **env)  # a fresh store, as explain's
        body = fixture(name)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(body))
        said = (await explain(env, path, at, capsys)).splitlines()[0]
        raw = json.dumps(body).encode()
        headers = signed(raw, ts=int(datetime.fromisoformat(at).timestamp()))
        status, answer = await bot.post(raw, headers)
        assert status == 200
        assert said == f"{answer['outcome']}: {answer['reason']}", name


def test_rules_prints_the_effective_rules_per_inbox():
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CHATWOOT_", "HANDOFF_", "INBOX_"))}
    env = {**clean, "STORE_URL": "memory://", "HANDOFF_KEYWORDS": "human,humano", "INBOX_4_HANDOFF_ALL": "true",
           "BUSINESS_HOURS": "mon-fri 09:00-18:00", "TIMEZONE": "Europe/Lisbon", "INBOX_IDS": "3,4"}
    out = subprocess.run([sys.executable, "-m", "agentbot", "rules"], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=30).stdout
    assert "Acts on all accounts, inboxes [3, 4]." in out
    assert "messages with the words human, humano open the conversation" in out
    assert "mon 09:00-18:00" in out and "(Europe/Lisbon)" in out
    every, inbox4 = out.split("Inbox 4:")
    assert "every pending conversation is opened" not in every
    assert "every pending conversation is opened" in inbox4
