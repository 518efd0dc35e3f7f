"""`python -m agentbot check` with EVOLUTION_URL: the key, each inbox's instance, the integrations in EVOLUTION_BOTS."""

from __future__ import annotations

import pytest

from tests.conftest import run_main
from tests.fakeevolution import GLOBAL_KEY


@pytest.fixture
def check(fake, evo, tmp_path):
    """`check` with working Chatwoot settings and Evolution at the fake; the fake Chatwoot's inbox 4 "WhatsApp" is
    an API inbox, Evolution's kind, and the fake Evolution has an instance of that name."""
    good = {
        "CHATWOOT_URL": fake.url,
        "CHATWOOT_BOT_TOKEN": "bot-token-7",
        "CHATWOOT_ACCOUNT_ID": "1",
        "WEBHOOK_TOKEN": "a-token-only-chatwoot-knows",
        "CHATWOOT_API_TOKEN": "user-token-5",
        "STORE_URL": f"sqlite:///{tmp_path}/bot.sqlite3",
        "EVOLUTION_URL": evo.url,
        "EVOLUTION_API_KEY": GLOBAL_KEY,
    }

    async def run(**env: str | None) -> tuple[int, list[str]]:
        status, out, _ = await run_main(tmp_path, "check", **{**good, **env})
        return status, [line for line in out.splitlines() if "Evolution" in line]

    return run


async def test_the_default_instance_is_the_inbox_name(check, evo):
    status, lines = await check(EVOLUTION_BOTS="typebot,n8n")
    assert status == 0, lines
    assert lines == [
        f"OK   Evolution at {evo.url} accepts EVOLUTION_API_KEY (instances: WhatsApp)",
        "OK   inbox 4 (WhatsApp): Evolution instance 'WhatsApp' (open)",
        "OK   Evolution instance 'WhatsApp': typebot is switched on",
        "OK   Evolution instance 'WhatsApp': n8n is switched on",
    ]
    assert {c.key for c in evo.calls} == {"global"} and not evo.calls_to("changeStatus", accepted=False)


async def test_a_wrong_key_is_reported(check, evo):
    status, lines = await check(EVOLUTION_API_KEY="wrong-key")
    assert status == 1
    assert lines == [
        f"FAIL Evolution at {evo.url}: Unauthorized (set EVOLUTION_API_KEY to Evolution's AUTHENTICATION_API_KEY "
        "(or the instance's token))"
    ]


async def test_an_unknown_instance_is_reported_with_the_one_feeding_the_inbox(check, evo):
    status, lines = await check(INBOX_4_EVOLUTION_INSTANCE="Vendas")
    assert status == 1
    assert (
        "FAIL inbox 4 (WhatsApp): Evolution has no instance 'Vendas' (set INBOX_4_EVOLUTION_INSTANCE=WhatsApp)" in lines
    )
    del evo.instances["WhatsApp"]
    evo.add_instance("acme-main", name_inbox="WhatsApp")  # the inbox was named in Evolution's Chatwoot settings
    status, lines = await check()
    assert status == 1
    assert (
        "FAIL inbox 4 (WhatsApp): Evolution has no instance 'WhatsApp' (set INBOX_4_EVOLUTION_INSTANCE=acme-main)"
        in lines
    )
    assert (await check(INBOX_4_EVOLUTION_INSTANCE="acme-main"))[0] == 0


async def test_a_disabled_integration_is_reported(check, evo):
    evo.disabled = {"dify"}
    status, lines = await check(EVOLUTION_BOTS="typebot,dify")
    assert status == 1
    assert (
        "FAIL Evolution instance 'WhatsApp': Dify is disabled (remove dify from EVOLUTION_BOTS, or switch the "
        "integration on in Evolution's environment)"
    ) in lines


async def test_keep_open_is_pointed_out_when_resolves_close_sessions(check, evo):
    evo.instances["WhatsApp"].keep_open.add("typebot")
    status, lines = await check()
    assert status == 0 and any(line.startswith("INFO") and "keepOpen is on" in line for line in lines)
    assert not any("keepOpen" in line for line in (await check(EVOLUTION_ON_RESOLVE="keep"))[1])


async def test_evolution_down_is_reported(check, evo):
    await evo.down()
    status, lines = await check()
    assert status == 1 and len(lines) == 1 and lines[0].startswith(f"FAIL Evolution at {evo.url}: cannot reach")


async def test_without_a_user_token_only_the_set_instance_is_checked(check):
    status, lines = await check(CHATWOOT_API_TOKEN=None, EVOLUTION_INSTANCE="WhatsApp")
    assert status == 0 and "OK   EVOLUTION_INSTANCE: Evolution instance 'WhatsApp' (open)" in lines
    assert any(line.startswith("INFO") and "CHATWOOT_API_TOKEN" in line for line in lines)


async def test_nothing_about_evolution_without_its_url(check):
    assert await check(EVOLUTION_URL=None, EVOLUTION_API_KEY=None) == (0, [])
