"""`register`, `inboxes` and `check` against the fake Chatwoot's administrator endpoints."""

from __future__ import annotations

import argparse

import pytest

from agentbot.commands import change, show
from agentbot.config import ConfigError, load


def settings(fake, **env):
    return load(
        {
            "CHATWOOT_URL": fake.url,
            "CHATWOOT_ACCOUNT_ID": "1",
            "CHATWOOT_API_TOKEN": "user-token-5",
            "STORE_URL": "memory://",
            "WEBHOOK_TOKEN": "a-token-only-chatwoot-knows",
            **env,
        }
    )


def reg(url="https://bot.example.com/webhook", inbox=(3, 4), name="Handoff bot", detach=False, replace=True):
    return argparse.Namespace(url=url, inbox=list(inbox), name=name, detach=detach, replace=replace)


async def test_register_creates_the_bot_connects_inboxes_and_prints_env(fake, capsys):
    fake.inboxes[3].bot_id = fake.inboxes[4].bot_id = None
    assert await change.register(settings(fake), reg()) == 0
    out = capsys.readouterr().out
    bot = next(b for b in fake.bots.values() if b.name == "Handoff bot")
    token = bot.outgoing_url.removeprefix("https://bot.example.com/webhook/")
    assert len(token) >= 16 and "/" not in token
    assert fake.inboxes[3].bot_id == fake.inboxes[4].bot_id == bot.id
    assert f"→ https://bot.example.com/webhook/{token}" in out
    assert f"CHATWOOT_BOT_TOKEN={bot.token}" in out and f"CHATWOOT_BOT_SECRET={bot.secret}" in out
    assert f"WEBHOOK_TOKEN={token}" in out
    assert load({"CHATWOOT_URL": fake.url, "WEBHOOK_TOKEN": token}).webhook_token.get_secret_value() == token
    assert [c.endpoint for c in fake.calls] == [
        "inboxes",
        "agent_bots",
        "agent_bots_create",
        "set_agent_bot",
        "set_agent_bot",
    ]


async def test_register_twice_updates_the_same_bot(fake, capsys):
    await change.register(settings(fake), reg())
    count = len(fake.bots)
    bot = next(b for b in fake.bots.values() if b.name == "Handoff bot")
    first = bot.outgoing_url
    assert await change.register(settings(fake), reg()) == 0
    assert bot.outgoing_url == first  # the token in the URL is kept
    assert await change.register(settings(fake), reg(url="https://new.example.com/webhook")) == 0
    assert len(fake.bots) == count
    assert bot.outgoing_url.startswith("https://new.example.com/webhook/")
    assert "Updated agent bot 'Handoff bot'" in capsys.readouterr().out
    mine = "wh-3fK9pQ2mZx7LrT5vB8nC1dY6"
    assert await change.register(settings(fake, WEBHOOK_TOKEN=mine), reg()) == 0
    assert bot.outgoing_url == f"https://bot.example.com/webhook/{mine}"


async def test_detach_disconnects_the_inboxes(fake, capsys):
    assert await change.register(settings(fake), reg(url=None, inbox=[3], detach=True)) == 0
    assert fake.inboxes[3].bot_id is None and fake.inboxes[4].bot_id == 7
    assert "Disconnected the bot from inbox 3 (Website)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "env, inbox, line",
    [
        ({"CHATWOOT_API_TOKEN": "nope"}, [3], "Chatwoot refused CHATWOOT_API_TOKEN (Invalid Access Token)"),
        ({"CHATWOOT_API_TOKEN": "user-token-6"}, [3], "without administrator rights"),
        ({}, [77], "unknown inbox id 77 in account 1"),
        ({"CHATWOOT_ACCOUNT_ID": "9"}, [3], "does not know account CHATWOOT_ACCOUNT_ID=9"),
        ({"CHATWOOT_API_TOKEN": "bot-token-7"}, [3], "Chatwoot answered 401 to inboxes"),
    ],
)
async def test_register_errors_are_one_clear_line(fake, capsys, env, inbox, line):
    assert await change.register(settings(fake, **env), reg(inbox=inbox)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and line in err[0], err


async def test_register_with_wrong_url_is_one_line(fake, capsys):
    s = settings(fake, CHATWOOT_URL="http://127.0.0.1:9")
    assert await change.register(s, reg()) == 1
    assert "cannot reach CHATWOOT_URL=http://127.0.0.1:9" in capsys.readouterr().err


async def test_register_needs_the_admin_settings(fake):
    with pytest.raises(ConfigError, match="^CHATWOOT_API_TOKEN: missing"):
        await change.register(load({"CHATWOOT_URL": fake.url, "CHATWOOT_ACCOUNT_ID": "1"}), reg())
    with pytest.raises(ConfigError, match="^--url: missing"):
        await change.register(settings(fake), reg(url=None))


async def test_inboxes_lists_ids_channels_and_bots(fake, capsys):
    assert await show.inboxes(settings(fake), argparse.Namespace()) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["id", "channel", "name", "agent", "bot"]
    assert any(
        line.split()[:3] == ["3", "Channel::WebWidget", "Website"] and "Triage Bot (bot 7)" in line for line in out
    )
    assert any(line.split()[:3] == ["9", "Channel::Email", "Email"] and line.endswith("no bot") for line in out)


async def test_check_reports_each_item(fake, capsys):
    good = settings(fake, CHATWOOT_BOT_TOKEN="bot-token-7", INBOX_IDS="3,9,12")
    assert await show.check(good, argparse.Namespace()) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("OK   Chatwoot at") and "accepts CHATWOOT_BOT_TOKEN" in out[0]
    assert "OK   inbox 3 has this bot" in out
    assert any(line.startswith("FAIL inbox 9 is not connected to this bot") for line in out)
    assert "FAIL inbox 12 (INBOX_IDS) does not exist in account 1" in out
    assert out[-1].startswith("OK   store memory is usable")


async def test_check_fails_without_a_secret_or_token(fake, capsys):
    assert (
        await show.check(settings(fake, CHATWOOT_BOT_TOKEN="bot-token-7", WEBHOOK_TOKEN=""), argparse.Namespace()) == 1
    )
    out = capsys.readouterr().out
    assert "FAIL neither CHATWOOT_BOT_SECRET nor WEBHOOK_TOKEN is set: anyone who learns the webhook URL" in out
    for env in ({"WEBHOOK_TOKEN": "wh-3fK9pQ2mZx7LrT5vB8nC1dY6"}, {"CHATWOOT_BOT_SECRET": "bot-secret-7-6Ybq3sWkT2vN"}):
        env = {"WEBHOOK_TOKEN": "", **env}
        assert await show.check(settings(fake, CHATWOOT_BOT_TOKEN="bot-token-7", **env), argparse.Namespace()) == 0
        assert (
            f"OK   deliveries are accepted only with {[k for k, v in env.items() if v][0]}" in capsys.readouterr().out
        )


async def test_check_passes_and_names_a_bad_bot_token(fake, capsys):
    good = {"CHATWOOT_BOT_TOKEN": "bot-token-7", "INBOX_IDS": "3", "WEBHOOK_TOKEN": "wh-3fK9pQ2mZx7LrT5vB8nC1dY6"}
    assert await show.check(settings(fake, **good), argparse.Namespace()) == 0
    capsys.readouterr()
    assert await show.check(settings(fake, CHATWOOT_BOT_TOKEN="wrong"), argparse.Namespace()) == 1
    out = capsys.readouterr().out
    assert "FAIL CHATWOOT_BOT_TOKEN: the token is wrong or revoked" in out and "wrong" not in out.replace(
        "wrong or", ""
    )


async def test_check_accepts_the_bot_token_on_chatwoot_before_typing_was_allowed(fake, capsys, monkeypatch):
    from tests.fakechatwoot import server

    older = [
        (m, rx, name, False if name == "toggle_typing_status" else bot_ok, admin, fn)
        for m, rx, name, bot_ok, admin, fn in server.ROUTES
    ]
    monkeypatch.setattr(server, "ROUTES", older)
    assert (
        await show.check(
            settings(fake, CHATWOOT_BOT_TOKEN="bot-token-7", WEBHOOK_TOKEN="wh-3fK9pQ2mZx7LrT5vB8nC1dY6"),
            argparse.Namespace(),
        )
        == 0
    )
    assert [c.status for c in fake.calls if c.endpoint == "toggle_typing_status"] == [401]
    assert "OK   Chatwoot at" in capsys.readouterr().out


async def test_check_lists_the_sweep(fake, capsys):
    off = load(
        {
            "CHATWOOT_URL": fake.url,
            "CHATWOOT_ACCOUNT_ID": "1",
            "CHATWOOT_BOT_TOKEN": "bot-token-7",
            "STORE_URL": "memory://",
            "WEBHOOK_TOKEN": "a-token-only-chatwoot-knows",
        }
    )
    assert await show.check(off, argparse.Namespace()) == 0
    out = capsys.readouterr().out
    assert "INFO sweep off: set CHATWOOT_API_TOKEN" in out
    fake.customer_writes(fake.contact(), "Hi")
    assert await show.check(settings(fake, CHATWOOT_BOT_TOKEN="bot-token-7"), argparse.Namespace()) == 0
    assert "OK   sweep every 600 s at up to 5 calls/s: 1 pending conversation in account 1" in capsys.readouterr().out
    assert (
        await show.check(
            settings(fake, CHATWOOT_BOT_TOKEN="bot-token-7", CHATWOOT_API_TOKEN="bot-token-7"), argparse.Namespace()
        )
        == 1
    )
    assert "FAIL sweep: Chatwoot answered 401 to conversations" in capsys.readouterr().out


async def test_check_reports_a_store_that_answers_but_refuses_the_bots_keys(fake, capsys, redis):
    """A shared Redis whose ACL user may only touch another app's keys answers PING, then refuses GET:
    `check` says so on a FAIL line (password masked) instead of ending in a traceback."""
    import redis as sync_redis

    admin = sync_redis.Redis.from_url(redis)
    admin.acl_setuser("other-app", enabled=True, passwords=["+pw-4Kq9zT"], keys=["other:*"], commands=["+@all"])
    try:
        url = redis.replace("redis://", "redis://other-app:pw-4Kq9zT@")
        good = {"CHATWOOT_BOT_TOKEN": "bot-token-7", "INBOX_IDS": "3", "WEBHOOK_TOKEN": "wh-3fK9pQ2mZx7LrT5vB8nC1dY6"}
        assert await show.check(settings(fake, STORE_URL=url, **good), argparse.Namespace()) == 1
        out = capsys.readouterr().out
        assert out.splitlines()[-1].startswith("FAIL STORE_URL"), out
        assert "pw-4Kq9zT" not in out
    finally:
        admin.acl_deluser("other-app")
