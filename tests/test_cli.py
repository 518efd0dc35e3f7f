"""The command line's exit statuses, as the README says: 0 done, 1 Chatwoot refused or a check failed,
2 a setting or argument is missing or wrong (one line naming it)."""

from __future__ import annotations

import json
import os
import sys

import pytest
from aiohttp import web

from agentbot.actions import Job, SetStatus
from agentbot.store import Commit, open_store
from tests.conftest import free_port, run_main, without_settings
from tests.fakechatwoot.model import fixture

PAYLOAD = "payload.json"


@pytest.fixture
def cli(fake, tmp_path):
    """`python -m agentbot ARGS` (conftest.run_main) with working settings unless a test overrides them."""
    (tmp_path / PAYLOAD).write_text(json.dumps(fixture("message_created_incoming_reopened")))
    good = {
        "CHATWOOT_URL": fake.url,
        "CHATWOOT_BOT_TOKEN": "bot-token-7",
        "CHATWOOT_ACCOUNT_ID": "1",
        "WEBHOOK_TOKEN": "a-token-only-chatwoot-knows",
        "CHATWOOT_API_TOKEN": "user-token-5",
        "STORE_URL": f"sqlite:///{tmp_path}/bot.sqlite3",
    }

    async def run(*argv: str, **env: str | None) -> tuple[int, str, str]:
        return await run_main(tmp_path, *argv, **{**good, **env})

    run.store_url = good["STORE_URL"]
    return run


def one_line(err: str, *words: str) -> bool:
    lines = err.strip().splitlines()
    return len(lines) == 1 and all(w in lines[0] for w in words)


async def test_rules(cli):
    assert (await cli("rules"))[0] == 0
    status, _, err = await cli("rules", BUSINESS_HOURS="mnn 09:00-18:00")
    assert status == 2 and one_line(err, "BUSINESS_HOURS")


async def test_explain(cli):
    status, out, _ = await cli("explain", PAYLOAD, "--at", "2026-11-25T10:00:00Z")
    assert status == 0 and out.startswith("handoff: Returning customer")
    status, _, err = await cli("explain", "missing.json")
    assert status == 2 and one_line(err, "missing.json: no such file") and "configuration" not in err
    status, _, err = await cli("explain", PAYLOAD, "--at", "yesterday")
    assert status == 2 and one_line(err, "--at", "yesterday")
    assert (await cli("explain"))[0] == 2  # no payload given


async def test_outbox_lists_and_retries_dead_letters(cli):
    store = open_store(cli.store_url)
    await store.open()
    try:
        await store.commit(Commit("d:1", "1:40", jobs=[Job(1, 40, "r", [SetStatus("open")])]), 100.0)
        await store.bury(await store.claim(100.0), 101.0)
    finally:
        await store.close()
    status, out, _ = await cli("outbox")
    assert status == 0 and "1 dead letters, 0 jobs waiting" in out
    status, out, _ = await cli("outbox", "--retry")
    assert status == 0 and "re-queued 1 dead letters" in out
    status, out, _ = await cli("outbox")
    assert status == 0 and "0 dead letters, 1 jobs waiting" in out
    status, _, err = await cli("outbox", STORE_URL="ftp://nowhere")
    assert status == 2 and one_line(err, "STORE_URL")


async def test_check(cli, fake):
    status, out, _ = await cli("check", INBOX_IDS="3")
    assert status == 0 and "FAIL" not in out
    status, out, _ = await cli("check", HANDOFF_KEYWORD="human")
    assert status == 0 and "INFO HANDOFF_KEYWORD is not a setting (did you mean HANDOFF_KEYWORDS?)" in out
    status, out, _ = await cli("check", INBOX_IDS="9")  # the Email inbox has no bot
    assert status == 1 and "FAIL inbox 9 is not connected to this bot" in out
    status, out, _ = await cli("check", CHATWOOT_BOT_TOKEN="revoked")
    assert status == 1 and "FAIL CHATWOOT_BOT_TOKEN" in out
    # Only the two required settings (README, Run it): the account is what check needs next.
    status, out, _ = await cli("check", CHATWOOT_ACCOUNT_ID=None, CHATWOOT_API_TOKEN=None)
    assert status == 1 and "FAIL CHATWOOT_ACCOUNT_ID is not set: set it (the number after /app/accounts/" in out
    status, _, err = await cli("check", CHATWOOT_URL=None)
    assert status == 2 and one_line(err, "CHATWOOT_URL")


async def test_inboxes(cli):
    status, out, _ = await cli("inboxes")
    assert status == 0 and "Website" in out
    status, _, err = await cli("inboxes", CHATWOOT_API_TOKEN="nope")
    assert status == 1 and one_line(err, "CHATWOOT_API_TOKEN")
    status, _, err = await cli("inboxes", CHATWOOT_API_TOKEN=None)
    assert status == 2 and one_line(err, "CHATWOOT_API_TOKEN")


async def test_register(cli, fake):
    status, out, _ = await cli("register", "--url", "https://bot.example.com/webhook", "--inbox", "9")
    assert status == 0 and "CHATWOOT_BOT_TOKEN=" in out
    status, _, err = await cli("register", "--url", "https://bot.example.com/webhook", "--inbox", "77")
    assert status == 1 and one_line(err, "unknown inbox id 77")
    status, _, err = await cli("register", "--inbox", "3")
    assert status == 2 and one_line(err, "--url")
    # The bot's bare address would register https://bot.example.com/<token>, where the bot answers 404.
    calls = len(fake.calls)
    status, _, err = await cli("register", "--url", "https://bot.example.com", "--inbox", "3")
    assert status == 2 and one_line(err, "--url", "/webhook")
    assert len(fake.calls) == calls  # nothing asked of Chatwoot
    assert (await cli("register", "--inbox", "three"))[0] == 2


async def test_register_never_silently_replaces_the_bot_an_inbox_has(cli, fake):
    """Inbox 3 has the team's own bot ("Triage Bot", e.g. an n8n flow): connecting another one would cut it off."""
    fake.bots[7].description = "Our n8n flow"
    before = len(fake.bots)
    status, out, err = await cli("register", "--url", "https://bot.example.com/webhook", "--inbox", "9", "--inbox", "3")
    assert status == 2 and one_line(err, "inbox 3 (Website) already has the agent bot 'Triage Bot'", "--replace")
    assert out == "" and len(fake.bots) == before and fake.inboxes[3].bot_id == 7 and fake.inboxes[9].bot_id is None
    assert not [c for c in fake.calls if c.method != "GET"]  # nothing changed in Chatwoot
    # Standing in front of it: the same bot, pointed at agentbot; its description stays the team's.
    status, out, _ = await cli(
        "register", "--url", "https://bot.example.com/webhook", "--inbox", "3", "--name", "Triage Bot"
    )
    assert status == 0 and "Updated agent bot 'Triage Bot' (id 7)" in out
    assert fake.inboxes[3].bot_id == 7 and fake.bots[7].description == "Our n8n flow"
    status, out, _ = await cli("register", "--url", "https://bot.example.com/webhook", "--inbox", "3", "--replace")
    assert status == 0 and "Created agent bot 'Handoff bot'" in out and fake.inboxes[3].bot_id not in (None, 7)


PROXY_PAGE = """<html>
<head><title>502 Bad Gateway</title></head>
<body>
<center><h1>502 Bad Gateway</h1></center>
<hr><center>nginx/1.24.0</center>
</body>
</html>
"""


@pytest.fixture
async def proxy_page():
    """A URL that is not Chatwoot nor Evolution: a proxy answering every request with its HTML 502 page."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(status=502, text=PROXY_PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", page)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_an_html_error_page_is_one_line(cli, proxy_page):
    for argv, env in (
        (("check",), {"CHATWOOT_URL": proxy_page, "INBOX_IDS": "3"}),
        (("inboxes",), {"CHATWOOT_URL": proxy_page}),
        (("sweep", "--dry-run"), {"CHATWOOT_URL": proxy_page}),
        (("check",), {"EVOLUTION_URL": proxy_page, "EVOLUTION_API_KEY": "k"}),
    ):
        status, out, err = await cli(*argv, **env)
        said = [line for line in (out + err).splitlines() if "502" in line]
        assert status == 1 and said, (argv, out, err)
        assert all("Bad Gateway" in line for line in said), said  # the page's words, squashed into the line
        assert not [line for line in (out + err).splitlines() if "<" in line or "nginx" in line and line not in said]


def test_the_process_exit_status_is_mains(tmp_path):
    """`python -m agentbot` exits with what main() returns (the tests above call main())."""
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "agentbot", "rules"],
        env={**without_settings(os.environ), "TIMEZONE": "Mars/Olympus"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and one_line(result.stderr, "TIMEZONE")


async def test_run_main_leaves_the_test_processs_stdlib_logging_as_it_found_it(fake, tmp_path):
    """`sweep` sets up logging as a process does (logs.setup: the root logger's handlers replaced by loguru's
    intercept). In-process (conftest.run_main) that must not outlive the command: pytest's capture handlers
    of the running test would be closed, and every later test on this worker would route aiohttp's and
    asyncio's records into loguru (log_lines) or not, depending on which tests ran before it."""
    import logging

    from tests.test_sweep import sweep_cli

    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    status, _, err = await sweep_cli(fake, tmp_path, "--dry-run", STORE_URL="memory://")
    assert status == 0, err
    assert (list(root.handlers), root.level) == before


async def test_run_main_runs_with_only_the_settings_the_test_gives(tmp_path, monkeypatch):
    """conftest.run_main promises `main` sees only the settings in its arguments: a setting exported in the
    developer's shell or CI (LOG_LEVEL, WEBHOOK_TOKEN, GREETING_MESSAGE, IGNORE_INBOX_IDS…) must not reach it."""
    monkeypatch.setenv("LOG_LEVEL", "LOUD")  # a setting without a prefix such as CHATWOOT_
    status, out, err = await run_main(tmp_path, "rules", STORE_URL="memory://")
    assert status == 0, err


async def test_a_misspelt_required_setting_is_named_when_start_up_or_check_says_it_is_missing(cli):
    """The typo warning is printed by `serve` after `require` and by `check` after every probe, so the one typo
    that stops the bot (CHATWOOT_BOT_TOKEN written CHATWOOT_BOT_TOKN) gets only "CHATWOOT_BOT_TOKEN: missing":
    the variable the user did set, and the setting meant, are never named."""
    for argv in ((), ("check",)):
        status, out, err = await cli(*argv, CHATWOOT_BOT_TOKEN=None, CHATWOOT_BOT_TOKN="bot-token-7")
        assert status == 2 and "CHATWOOT_BOT_TOKEN" in err
        assert "CHATWOOT_BOT_TOKN" in out + err, (argv, err)  # e.g. appended: "(CHATWOOT_BOT_TOKN is set: a typo?)"
