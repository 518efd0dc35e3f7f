"""Start-up: settings are validated once; a bad value stops with exit 2 and one line naming it."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from agentbot.config import ConfigError, Settings, load
from tests.conftest import free_port, wait_for, without_settings

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"CHATWOOT_URL": "https://chat.example.com", "CHATWOOT_BOT_TOKEN": "s3cr3t-token", "STORE_URL": "memory://"}


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`python -m agentbot ARGS` with `env`, on a free port unless `env` names one (the port is bound first)."""
    return subprocess.run(
        [sys.executable, "-m", "agentbot", *args],
        env={**without_settings(os.environ), "PORT": str(free_port()), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


class _Serves(Exception):
    pass


@pytest.fixture
def start_up(monkeypatch, capfd):
    """`python -m agentbot` with `env`, refused at start-up. Settings refused before serving run the same `main()`
    in this process (its return is the exit status; stdout and stderr captured at the file descriptors), saving
    an interpreter start each; settings that get as far as serving (the store is opened there) run in a real
    process with `run`, which also shows `python -m agentbot` exits with `main()`'s return."""
    from agentbot import __main__

    def serves(settings):
        raise _Serves

    def start(env: dict[str, str]) -> subprocess.CompletedProcess:
        with monkeypatch.context() as m:
            for name in set(os.environ) - set(without_settings(os.environ)):
                m.delenv(name)
            for name, value in env.items():
                m.setenv(name, value)
            m.chdir(ROOT)
            m.setattr(__main__, "serve", serves)
            capfd.readouterr()
            try:
                code = __main__.main([])
            except _Serves:
                return run(env)
            out, err = capfd.readouterr()
        return subprocess.CompletedProcess([], code, out, err)

    return start


@pytest.mark.parametrize(
    "env, variable, example",
    [
        ({"CHATWOOT_BOT_TOKEN": "s3cr3t-token"}, "CHATWOOT_URL", "https://chat.example.com"),
        ({"CHATWOOT_URL": "https://chat.example.com"}, "CHATWOOT_BOT_TOKEN", "Settings"),
        ({**GOOD, "CHATWOOT_URL": "chat.example.com"}, "CHATWOOT_URL", "https://"),
        ({**GOOD, "PORT": "eighty"}, "PORT", "8080"),
        ({**GOOD, "STORE_URL": "postgres://x"}, "STORE_URL", "sqlite:///"),
        ({**GOOD, "BUSINESS_HOURS": "mon-fry 09:00-18:00"}, "BUSINESS_HOURS", "mon-fri 09:00-18:00"),
        ({**GOOD, "BUSINESS_HOURS": "mon 09:00-25:00"}, "BUSINESS_HOURS", "'25:00'"),
        ({**GOOD, "TIMEZONE": "Europe/Atlantis"}, "TIMEZONE", "Europe/Lisbon"),
        ({**GOOD, "HANDOFF_PRIORITY": "extreme"}, "HANDOFF_PRIORITY", "urgent"),
        ({**GOOD, "HANDOFF_TEAM_ID": "support"}, "HANDOFF_TEAM_ID", "'support'"),
        ({**GOOD, "INBOX_3_HANDOFF_ASSIGNEE_ID": "x"}, "INBOX_3_HANDOFF_ASSIGNEE_ID", "'x'"),
        ({**GOOD, "HANDOFF_TEAM_ID": "-1"}, "HANDOFF_TEAM_ID", "greater than 0"),  # Chatwoot's ids start at 1
        ({**GOOD, "CHATWOOT_ACCOUNT_IDS": "1,0"}, "CHATWOOT_ACCOUNT_IDS", "greater than 0"),
        ({**GOOD, "HANDOFF_MESSAGE": "Hi {customer}"}, "HANDOFF_MESSAGE", "{customer}"),
        ({**GOOD, "INBOX_3_PORT": "1"}, "INBOX_3_PORT", "INBOX_3_HANDOFF_ALL"),
        ({**GOOD, "HANDOFF_AFTER_MESSAGES": "-1"}, "HANDOFF_AFTER_MESSAGES", "3"),
        ({**GOOD, "CLOSED_DATES": "2026-02-30"}, "CLOSED_DATES", "2026-12-25"),
        ({**GOOD, "LOG_LEVEL": "LOUD"}, "LOG_LEVEL", "INFO"),
        ({**GOOD, "CHATWOOT_TIMEOUT": "60"}, "CHATWOOT_TIMEOUT", "at most 20"),
        ({**GOOD, "SWEEP_INTERVAL": "-5"}, "SWEEP_INTERVAL", "600 (0 = off)"),
        ({**GOOD, "SWEEP_RATE": "fast"}, "SWEEP_RATE", "'fast'"),
        ({**GOOD, "REDIS_MAX_CONNECTIONS": "0"}, "REDIS_MAX_CONNECTIONS", "20"),
        ({**GOOD, "CHATWOOT_URL": "https://chat.example.com:abc"}, "CHATWOOT_URL", "https://chat.example.com"),
        ({**GOOD, "CHATWOOT_URL": "https://chat example.com"}, "CHATWOOT_URL", "https://chat.example.com"),
        ({**GOOD, "CHATWOOT_URL": "http://[::1"}, "CHATWOOT_URL", "https://chat.example.com"),
        ({**GOOD, "CHATWOOT_URL": "https://chat.example.com/app/accounts/1/dashboard"}, "CHATWOOT_URL", "/app/"),
        ({**GOOD, "KEEP_LANGUAGES": "english"}, "KEEP_LANGUAGES", "en,pt"),
        ({**GOOD, "HANDOFF_LANGUAGES": "pt,Portuguese"}, "HANDOFF_LANGUAGES", "'Portuguese'"),
        ({**GOOD, "GROUPS": "bogus"}, "GROUPS", "open, ignore or rules"),  # the old name, as the user wrote it
        ({**GOOD, "INBOX_4_GROUPS": "bogus"}, "INBOX_4_GROUPS", "open, ignore or rules"),
        ({**GOOD, "STORE_URL": "redis://127.0.0.1:1/0"}, "STORE_URL", "cannot open the redis store"),
        ({**GOOD, "STORE_URL": "sqlite:////nonexistent/dir/bot.sqlite3"}, "STORE_URL", "cannot open the sqlite store"),
    ],
)
def test_bad_settings_stop_start_up_with_one_line(env, variable, example, start_up):
    result = start_up(env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"agentbot: configuration error: {variable}:")
    assert example in lines[0]
    assert "Traceback" not in result.stderr and "s3cr3t-token" not in result.stderr + result.stdout


def test_a_port_in_use_stops_start_up_with_one_line(start_up):
    with socket.create_server(("0.0.0.0", 0)) as taken:
        port = taken.getsockname()[1]
        result = start_up({**GOOD, "PORT": str(port)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"agentbot: configuration error: PORT: cannot listen on port {port} (Address already in use); set a free "
        "port, e.g. 8080"
    ]


def test_env_file_is_read_and_environment_wins(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("CHATWOOT_URL=https://from-file.example\nHANDOFF_ALL=true\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HANDOFF_ALL", "false")
    settings = load()
    assert settings.chatwoot_url == "https://from-file.example"
    assert settings.handoff_all is False


def test_per_inbox_overrides_apply_only_to_that_inbox():
    s = load({**GOOD, "INBOX_3_HANDOFF_ALL": "true", "HANDOFF_KEYWORDS": "human"})
    assert s.rules_for(3).handoff_all and not s.rules_for(4).handoff_all
    assert s.rules_for(3).handoff_keywords == ["human"]


def test_secrets_are_not_in_the_settings_repr():
    s = load(
        {
            **GOOD,
            "CHATWOOT_BOT_SECRET": "hush-hush-hush-hush",
            "CHATWOOT_API_TOKEN": "user-tok",
            "WEBHOOK_TOKEN": "wh-3fK9pQ2mZx7LrT5vB8nC1dY6",
        }
    )
    for secret in ("s3cr3t-token", "hush-hush", "user-tok", "wh-3fK9pQ2mZx7LrT5vB8nC1dY6"):
        assert secret not in repr(s)


@pytest.mark.parametrize("token", [None, "", "   "])
def test_require_names_the_missing_variable(token):
    """A blank value counts as unset, as the README says."""
    env = {"CHATWOOT_URL": "https://x.example"} | ({} if token is None else {"CHATWOOT_BOT_TOKEN": token})
    with pytest.raises(ConfigError, match="^CHATWOOT_BOT_TOKEN: missing"):
        load(env).require("chatwoot_url", "chatwoot_bot_token")
    with pytest.raises(ConfigError, match="^CHATWOOT_URL: missing"):
        load({"CHATWOOT_URL": " ", "CHATWOOT_BOT_TOKEN": "t"}).require("chatwoot_url", "chatwoot_bot_token")
    assert load({"CHATWOOT_ACCOUNT_ID": ""}).chatwoot_account_id is None  # Render passes an unanswered one blank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_python_m_agentbot_serves_healthz_on_port(tmp_path):
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CHATWOOT_")},
        **GOOD,
        "PORT": str(port),
        "STORE_URL": f"sqlite:///{tmp_path}/bot.sqlite3",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentbot", env=env, cwd=tmp_path, stderr=asyncio.subprocess.PIPE
    )
    try:

        async def healthy():
            try:
                async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/healthz") as r:
                    return r.status == 200 and (await r.json())["status"] == "ok"
            except aiohttp.ClientError:
                return False

        await wait_for(healthy, 10, "/healthz")
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0


def documented_settings() -> dict[str, str]:
    """The README's settings tables: variable → its default column."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("\n## Settings") : readme.index("\n## ", readme.index("\n## Settings") + 1)]
    return dict(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \| ([^|]*) \|", section, re.M))


def test_settings_class_knows_every_documented_variable():
    documented = documented_settings()
    real = {name.upper(): field for name, field in Settings.model_fields.items()}
    assert len(documented) > 30
    assert sorted(set(documented) - set(real)) == [], "documented but not a setting"
    assert sorted(set(real) - set(documented)) == [], "a setting the README's tables do not document"
    for name, default in documented.items():  # a plain default in the table is the real one
        shown = re.fullmatch(r"`([^`]*)`", default.strip())
        value = real[name].default
        if shown and shown[1] not in documented and value is not None:
            assert shown[1] == (
                str(value).lower()
                if isinstance(value, bool)
                else f"{value:g}"
                if isinstance(value, float)
                else str(value)
            ), name


def test_redis_url_of_a_paas_add_on_is_the_store_unless_store_url_is_set():
    assert load({"REDIS_URL": "redis://h:6379/0"}).store_url == "redis://h:6379/0"
    assert load({"REDIS_URL": "redis://h:6379/0", "STORE_URL": "memory://"}).store_url == "memory://"
    assert load({}).store_url == "sqlite:///agentbot.sqlite3"


@pytest.mark.parametrize(
    "env, variable, problem, hidden",
    [
        ({"CHATWOOT_BOT_SECRET": "bot-secret-7"}, "CHATWOOT_BOT_SECRET", "shorter than 16 characters", "bot-secret-7"),
        ({"WEBHOOK_TOKEN": "letmein"}, "WEBHOOK_TOKEN", "shorter than 16 characters", "letmein"),
        ({"WEBHOOK_TOKEN": "a/b?c#d=e&f%g hij"}, "WEBHOOK_TOKEN", "only letters, digits", "a/b?c#d"),
        ({"BOT_COMMAND": " "}, "BOT_COMMAND", "must not be blank", None),
        ({"INBOX_3_BOT_COMMAND": ""}, "INBOX_3_BOT_COMMAND", "must not be blank", None),
        ({"STORE_URL": "sqlite:///"}, "STORE_URL", "needs a file path", None),
        (
            {"STORE_URL": "redis//:hunter2-pw@cache.example.com:6379/0"},
            "STORE_URL",
            ":***@cache.example.com",
            "hunter2",
        ),
        (
            {"STORE_URL": "redis://:hunter2-pw@127.0.0.1:1/0"},
            "STORE_URL",
            "cannot open the redis store at redis://:***@",
            "hunter2",
        ),
        (  # the store comes from REDIS_URL (a PaaS add-on): the message names it
            {"REDIS_URL": "redis://u:hunter2-pw@127.0.0.1:1/0?password=hunter2-pw"},
            "REDIS_URL",
            "password=***",
            "hunter2",
        ),
        ({"REDIS_URL": "redis//:hunter2-pw@cache.example.com:6379/0"}, "REDIS_URL", ":***@cache.example", "hunter2"),
        # A password with an unescaped / breaks the URL: refused at once, the password masked whole.
        ({"REDIS_URL": "redis://:hun/ter2-pw@127.0.0.1:1/0"}, "REDIS_URL", "redis://:***@127.0.0.1:1/0", "ter2"),
        ({"STORE_URL": "redis://u:hun/ter2-pw@cache.example.com/0"}, "STORE_URL", "percent-encoded", "ter2"),
        ({"STORE_URL": "postgres://u:hun/ter2-pw@db.example.com/db"}, "STORE_URL", "postgres://u:***@", "ter2"),
        ({"STORE_URL": "redis://cache.example.com:99999/0"}, "STORE_URL", "port", None),
    ],
)
def test_secrets_store_passwords_and_blank_commands_are_refused_without_printing_them(
    env, variable, problem, hidden, start_up
):
    result = start_up({**GOOD, "STORE_URL": "", **env} if "REDIS_URL" in env else {**GOOD, **env})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"agentbot: configuration error: {variable}:"), result.stderr
    assert problem in lines[0]
    assert hidden is None or hidden not in result.stderr + result.stdout


def test_blank_secret_and_token_are_unset():
    s = load({**GOOD, "CHATWOOT_BOT_SECRET": "", "WEBHOOK_TOKEN": "   "})
    assert s.chatwoot_bot_secret is None and s.webhook_token is None


def test_a_blank_per_inbox_value_switches_the_global_rule_off_there():
    s = load(
        {
            **GOOD,
            "HANDOFF_AFTER_SECONDS": "300",
            "HANDOFF_AFTER_MESSAGES": "3",
            "HANDOFF_TEAM_ID": "2",
            "HANDOFF_PRIORITY": "high",
            "HANDOFF_ASSIGNEE_ID": "5",
            "INBOX_3_HANDOFF_AFTER_SECONDS": "",
            "INBOX_3_HANDOFF_AFTER_MESSAGES": "",
            "INBOX_3_HANDOFF_TEAM_ID": "",
            "INBOX_3_HANDOFF_PRIORITY": " ",
            "INBOX_3_HANDOFF_ASSIGNEE_ID": "",
        }
    )
    inbox3, other = s.rules_for(3), s.rules_for(4)
    assert (
        inbox3.handoff_after_seconds,
        inbox3.handoff_after_messages,
        inbox3.handoff_team_id,
        inbox3.handoff_priority,
        inbox3.handoff_assignee_id,
    ) == (None, None, None, None, None)
    assert (
        other.handoff_after_seconds,
        other.handoff_after_messages,
        other.handoff_team_id,
        other.handoff_priority,
        other.handoff_assignee_id,
    ) == (300, 3, 2, "high", 5)


def test_zero_seconds_or_messages_means_off():
    s = load(
        {**GOOD, "HANDOFF_AFTER_SECONDS": "0", "HANDOFF_AFTER_MESSAGES": "0", "INBOX_3_HANDOFF_AFTER_SECONDS": "0"}
    )
    assert s.handoff_after_seconds is None and s.handoff_after_messages is None
    assert s.rules_for(3).handoff_after_seconds is None


def test_groups_is_read_under_its_new_name_and_its_old_one():
    """Bash keeps GROUPS for itself (`GROUPS=ignore python -m agentbot` is lost): WHATSAPP_GROUPS is the name."""
    assert load({**GOOD, "WHATSAPP_GROUPS": "ignore"}).whatsapp_groups == "ignore"
    assert load({**GOOD, "GROUPS": "open"}).whatsapp_groups == "open"  # .env files and PaaS settings
    assert load({**GOOD, "GROUPS": "open", "WHATSAPP_GROUPS": "ignore"}).whatsapp_groups == "ignore"
    assert load({**GOOD, "INBOX_4_GROUPS": "open"}).rules_for(4).whatsapp_groups == "open"
    # What a program started from bash receives: GROUPS=open is lost, WHATSAPP_GROUPS arrives.
    shown = subprocess.run(
        ["bash", "-c", "GROUPS=open WHATSAPP_GROUPS=ignore env"], capture_output=True, text=True, timeout=30
    ).stdout
    received = dict(line.split("=", 1) for line in shown.splitlines() if line.endswith("GROUPS=ignore"))
    assert received == {"WHATSAPP_GROUPS": "ignore"} and "GROUPS=open" not in shown
    assert load({**GOOD, **received}).whatsapp_groups == "ignore"


def test_a_misspelt_setting_is_named_with_the_one_meant():
    """A typo would switch a rule off without a word: it is named (start-up logs it, `check` shows it)."""
    settings = load({**GOOD, "HANDOF_KEYWORDS": "human", "HANDOFF_TEAM": "2", "CHATWOOT_TOKEN": "x", "PATH": "/bin"})
    assert settings.unknown == [
        "HANDOF_KEYWORDS is not a setting (did you mean HANDOFF_KEYWORDS?)",
        "HANDOFF_TEAM is not a setting (did you mean HANDOFF_TEAM_ID?)",
        "CHATWOOT_TOKEN is not a setting (did you mean CHATWOOT_BOT_TOKEN?)",
    ]
    # What PaaS add-ons and shells set beside ours is not a typo.
    assert load({**GOOD, "REDIS_URL": "redis://x", "REDIS_TLS_URL": "rediss://x", "GROUPS": "open"}).unknown == []


async def test_the_server_logs_a_misspelt_setting(fake, processes):
    bot = await processes(HANDOF_KEYWORDS="human")
    await bot.stop()
    assert "HANDOF_KEYWORDS is not a setting (did you mean HANDOFF_KEYWORDS?)" in bot.log.read_text()


def test_kubernetes_service_links_are_not_taken_for_misspelt_settings():
    """Kubernetes gives every pod <SERVICE>_SERVICE_HOST, <SERVICE>_PORT... for each service of its namespace
    (enableServiceLinks is on by default): a bot beside Chatwoot's Helm release (service `chatwoot`, Redis
    `chatwoot-redis-master`) or a service `redis` receives these at every start. They are no typos."""
    links = {}
    for service, port in (("CHATWOOT", 3000), ("CHATWOOT_REDIS_MASTER", 6379), ("REDIS", 6379)):
        links |= {
            f"{service}_SERVICE_HOST": "10.0.0.7",
            f"{service}_SERVICE_PORT": str(port),
            f"{service}_PORT": f"tcp://10.0.0.7:{port}",
            f"{service}_PORT_{port}_TCP": f"tcp://10.0.0.7:{port}",
            f"{service}_PORT_{port}_TCP_PROTO": "tcp",
            f"{service}_PORT_{port}_TCP_PORT": str(port),
            f"{service}_PORT_{port}_TCP_ADDR": "10.0.0.7",
        }
    assert load({**GOOD, **links, "KUBERNETES_SERVICE_HOST": "10.0.0.1"}).unknown == []


def test_choices_and_switches_take_any_case_and_stray_spaces():
    s = load(
        {**GOOD, "HANDOFF_ALL": "True ", "LOG_FORMAT": "JSON", "HANDOFF_PRIORITY": "High", "WHATSAPP_GROUPS": "Ignore"}
    )
    assert (s.handoff_all, s.log_format, s.handoff_priority, s.whatsapp_groups) == (True, "json", "high", "ignore")
    assert load({**GOOD, "LOG_LEVEL": " debug"}).log_level == "DEBUG"
    with pytest.raises(ConfigError, match=r"HANDOFF_ALL: .*'maybe' \(example: true or false\)"):
        load({**GOOD, "HANDOFF_ALL": "maybe"})


@pytest.mark.parametrize("tag", ["zh-Hant-TW", "sr-Latn-RS", "yue-Hant-HK"])
def test_a_language_tag_with_script_and_region_is_accepted(tag: str) -> None:
    """Review: a BCP 47 tag with a script and a region (what Windows/Safari report for Serbian, Chinese) is a
    valid language code; the new check refuses it at start-up (fails on main since f94145e)."""
    s = load({**GOOD, "KEEP_LANGUAGES": f"en,{tag}", "HANDOFF_LANGUAGES": tag})
    assert s.handoff_languages == [tag.lower()]
    assert s.keep_languages == ["en", tag.lower()]
