"""The Evolution API client against the fake Evolution, the contact's JID, the switches each lifecycle transition
needs, and the EVOLUTION_* settings."""

from __future__ import annotations

import json

import aiohttp
import msgspec
import pytest

from agentbot.config import ConfigError, load
from agentbot.events import parse
from agentbot.evolution import (
    SECOND_PAUSE,
    Evolution,
    EvolutionRefused,
    EvolutionServerError,
    EvolutionUnreachable,
    IntegrationDisabled,
    Switch,
    Transition,
    UnknownInstance,
    WrongKey,
    conversation_jid,
    instance_for,
    switches,
    whatsapp_jid,
)
from tests.fakechatwoot.model import fixture
from tests.fakeevolution import GLOBAL_KEY

MARIA = "5511912345678@s.whatsapp.net"


@pytest.fixture
async def client(evo):
    async with aiohttp.ClientSession() as session:

        def make(key: str = GLOBAL_KEY, url: str | None = None, timeout: float = 5.0) -> Evolution:
            return Evolution(session, url or evo.url, key, timeout)

        yield make


# ---- the client against the fake ---------------------------------------------------------
async def test_paused_session_ignores_the_contact_until_opened_again(evo, client):
    assert evo.customer_writes(MARIA)  # the Typebot starts a session and answers
    await client().change_status("WhatsApp", "typebot", MARIA, "paused")
    assert not evo.customer_writes(MARIA)
    await client().change_status("WhatsApp", "typebot", MARIA, "opened")
    assert evo.customer_writes(MARIA)
    assert evo.statuses(MARIA) == ["paused", "opened"]
    assert [c.key for c in evo.calls] == ["global", "global"]


async def test_one_route_switches_the_sessions_of_every_integration(evo, client):
    """Evolution's sessions table is shared: a pause through the Typebot route pauses an n8n session too."""
    evo.customer_writes(MARIA, integration="n8n")
    await client().change_status("WhatsApp", "typebot", MARIA, "paused")
    assert evo.session(MARIA).status == "paused"


async def test_closed_ends_the_sessions_unless_keep_open(evo, client):
    evo.customer_writes(MARIA)
    await client().change_status("WhatsApp", "typebot", MARIA, "closed")
    assert evo.session(MARIA) is None  # deleted: the next message starts the bot afresh
    assert evo.customer_writes(MARIA)
    evo.instances["WhatsApp"].keep_open.add("typebot")
    await client().change_status("WhatsApp", "typebot", MARIA, "closed")
    assert evo.session(MARIA).status == "closed" and not evo.customer_writes(MARIA)


async def test_a_contact_without_a_session_is_not_an_error(evo, client):
    await client().change_status("WhatsApp", "typebot", MARIA, "paused")
    assert evo.session(MARIA) is None and evo.statuses(MARIA) == ["paused"]


async def test_the_instances_token_works_for_its_instance_only(evo, client):
    evo.add_instance("Vendas", token="vendas-token")
    await client("vendas-token").change_status("Vendas", "typebot", MARIA, "paused")
    with pytest.raises(WrongKey):
        await client("vendas-token").change_status("WhatsApp", "typebot", MARIA, "paused")


async def test_an_instance_name_with_spaces_and_accents_reaches_its_instance(evo, client):
    for name in ("Atendimento São Paulo", "Loja/Centro #2"):
        evo.add_instance(name)
        await client().change_status(name, "typebot", MARIA, "paused")
        assert evo.calls[-1].status == 200 and evo.calls[-1].instance == name


@pytest.mark.parametrize("key", ["wrong-key", ""])
async def test_a_wrong_or_missing_key_is_a_configuration_problem(evo, client, key):
    with pytest.raises(WrongKey) as caught:
        await client(key).change_status("WhatsApp", "typebot", MARIA, "paused")
    assert not caught.value.retry and "EVOLUTION_API_KEY" in caught.value.fix
    assert caught.value.status == 401 and caught.value.detail == "Unauthorized"
    assert evo.calls[-1].status == 401


async def test_an_unknown_instance_is_named_before_the_key_is_checked(evo, client):
    """Evolution's guards check the instance first: a wrong key on an unknown instance is a 404."""
    for key in (GLOBAL_KEY, "wrong-key"):
        with pytest.raises(UnknownInstance) as caught:
            await client(key).change_status("Website", "typebot", MARIA, "paused")
        assert caught.value.detail == 'The "Website" instance does not exist' and not caught.value.retry
        assert "EVOLUTION_INSTANCE" in caught.value.fix


async def test_a_disabled_integration_says_which_and_what_to_set(evo, client):
    evo.disabled = {"dify", "evolutionBot"}
    with pytest.raises(IntegrationDisabled) as caught:
        await client().change_status("WhatsApp", "dify", MARIA, "paused")
    assert caught.value.detail == "Dify is disabled" and "EVOLUTION_BOTS" in caught.value.fix
    await client().change_status("WhatsApp", "evolutionBot", MARIA, "paused")  # has no switch in Evolution


async def test_server_errors_and_silence_are_worth_trying_again(evo, client):
    evo.fail("changeStatus", status=500)
    with pytest.raises(EvolutionServerError) as caught:
        await client().change_status("WhatsApp", "typebot", MARIA, "paused")
    assert caught.value.retry and caught.value.detail == "fault"
    evo.instances["WhatsApp"].loaded = False  # Evolution's own 500 for a Typebot switch of an unloaded instance
    with pytest.raises(EvolutionServerError) as caught:
        await client().change_status("WhatsApp", "typebot", MARIA, "paused")
    assert caught.value.detail == "Error changing Typebot status"
    evo.fail("changeStatus", hang=2.0)
    with pytest.raises(EvolutionUnreachable) as slow:
        await client(timeout=0.2).change_status("WhatsApp", "n8n", MARIA, "paused")
    assert slow.value.retry and slow.value.detail == "timed out"


async def test_an_answer_lost_after_the_switch_was_applied_is_retried_safely(evo, client):
    evo.customer_writes(MARIA)
    evo.fail("changeStatus", applied=True, drop=True)
    with pytest.raises(EvolutionUnreachable):
        await client().change_status("WhatsApp", "typebot", MARIA, "paused")
    assert evo.session(MARIA).status == "paused"  # applied all the same
    await client().change_status("WhatsApp", "typebot", MARIA, "paused")  # the retry changes nothing
    assert evo.session(MARIA).status == "paused"


async def test_evolution_down_is_unreachable_and_back_up_works(evo, client):
    await evo.down()
    with pytest.raises(EvolutionUnreachable) as caught:
        await client().change_status("WhatsApp", "typebot", MARIA, "paused")
    assert caught.value.retry and caught.value.status is None
    await evo.up()
    await client().change_status("WhatsApp", "typebot", MARIA, "paused")


async def test_a_url_that_is_not_evolution_is_refused_with_a_hint(evo, client):
    with pytest.raises(EvolutionRefused) as caught:
        await client(url=evo.url + "/api").change_status("WhatsApp", "typebot", MARIA, "paused")
    assert caught.value.status == 404 and "EVOLUTION_URL" in caught.value.fix
    assert caught.value.detail.startswith("Cannot POST /api/typebot/changeStatus")


async def test_the_key_never_shows_in_errors_or_the_client(evo, client):
    secret = "k3y-that-must-stay-hidden"
    made = client(secret)
    assert secret not in repr(made)
    for instance in ("WhatsApp", "Nowhere"):
        with pytest.raises(EvolutionRefused) as caught:
            await made.change_status(instance, "typebot", MARIA, "paused")
        assert secret not in str(caught.value) + caught.value.fix


async def test_the_client_sends_only_what_evolution_accepts(client):
    with pytest.raises(ValueError):
        await client().change_status("WhatsApp", "typebot", MARIA, "resumed")
    with pytest.raises(ValueError):
        await client().change_status("WhatsApp", "Typebot", MARIA, "paused")


async def test_the_fake_refuses_a_status_outside_the_schema(evo):
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{evo.url}/typebot/changeStatus/WhatsApp",
            json={"remoteJid": MARIA, "status": "resumed"},
            headers={"apikey": GLOBAL_KEY},
        ) as resp,
    ):
        assert resp.status == 400
        assert (await resp.json())["response"]["message"] == [
            ["status is not one of enum values: opened,closed,paused,delete"]
        ]


async def test_fetch_instances_lists_what_the_key_may_see(evo, client):
    evo.add_instance("Vendas", token="vendas-token", connection="close")
    assert {i.name for i in await client().fetch_instances()} == {"WhatsApp", "Vendas"}
    [only] = await client("vendas-token").fetch_instances()
    assert (only.name, only.connectionStatus) == ("Vendas", "close")
    with pytest.raises(WrongKey):
        await client("wrong-key").fetch_instances()


# ---- the JID -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "identifier, phone, jid",
    [
        (MARIA, "+55 11 91234-5678", MARIA),  # Evolution's contact: the identifier wins
        ("120363025246125244@g.us", None, "120363025246125244@g.us"),  # a group
        ("40383741427919@lid", "+5511912345678", "40383741427919@lid"),  # a LID contact
        (" 5511912345678@s.whatsapp.net ", None, MARIA),
        (None, "+55 (11) 91234-5678", MARIA),  # no identifier: the phone's digits
        ("maria@example.com", "+5511912345678", MARIA),  # an identifier that is no JID
        ("maria@example.com", None, None),  # a website contact
        (None, "", None),
        (None, "n/a", None),
    ],
)
def test_whatsapp_jid(identifier, phone, jid):
    assert whatsapp_jid(identifier, phone) == jid


# ---- the switches a transition needs ---------------------------------------------------------
GROUP = "120363025246125244@g.us"


@pytest.mark.parametrize(
    "transition, jid, bots, on_resolve, enabled, expected",
    [
        (
            Transition.HANDOFF,
            MARIA,
            ["typebot"],
            "closed",
            True,
            [Switch("typebot", "paused", MARIA), Switch("typebot", "paused", MARIA, SECOND_PAUSE)],
        ),
        (
            Transition.HANDOFF,
            GROUP,
            ["typebot", "n8n"],
            "closed",
            True,
            [
                Switch("typebot", "paused", GROUP),
                Switch("n8n", "paused", GROUP),
                Switch("typebot", "paused", GROUP, SECOND_PAUSE),
                Switch("n8n", "paused", GROUP, SECOND_PAUSE),
            ],
        ),
        (
            Transition.GIVE_BACK,
            MARIA,
            ["typebot", "dify"],
            "closed",
            True,
            [Switch("typebot", "opened", MARIA), Switch("dify", "opened", MARIA)],
        ),
        (Transition.RESOLVE, MARIA, ["typebot"], "closed", True, [Switch("typebot", "closed", MARIA)]),
        (Transition.RESOLVE, MARIA, ["typebot"], "keep", True, []),  # EVOLUTION_ON_RESOLVE=keep
        (Transition.HANDOFF, None, ["typebot"], "closed", True, []),  # a website contact
        (Transition.HANDOFF, MARIA, ["typebot"], "closed", False, []),  # EVOLUTION_URL unset
        (Transition.GIVE_BACK, MARIA, ["typebot"], "keep", False, []),
    ],
)
def test_switches(transition, jid, bots, on_resolve, enabled, expected):
    assert list(switches(transition, jid, bots, on_resolve, enabled)) == expected


# ---- the settings ------------------------------------------------------------------------------
def test_evolution_settings_and_their_defaults():
    s = load({}, None)
    assert (s.evolution_url, s.evolution_bots, s.evolution_on_resolve) == (None, ["typebot"], "closed")
    s = load(
        {
            "EVOLUTION_URL": "https://evo.example.com/",
            "EVOLUTION_API_KEY": "k",
            "EVOLUTION_BOTS": "N8N, evolutionbot, n8n",
            "EVOLUTION_INSTANCE": "main",
            "INBOX_4_EVOLUTION_INSTANCE": "Vendas",
            "INBOX_5_EVOLUTION_INSTANCE": "",  # blank: the inbox's own name again
            "EVOLUTION_ON_RESOLVE": "Keep",
        },
        None,
    )
    assert s.evolution_url == "https://evo.example.com" and s.evolution_bots == ["n8n", "evolutionBot"]
    assert s.evolution_on_resolve == "keep"
    assert [s.rules_for(i).evolution_instance for i in (3, 4, 5)] == ["main", "Vendas", None]


@pytest.mark.parametrize(
    "env, variable, words",
    [
        ({"EVOLUTION_BOTS": "typebot,chatgpt"}, "EVOLUTION_BOTS", "'chatgpt' is not one of typebot, openai"),
        ({"EVOLUTION_BOTS": ","}, "EVOLUTION_BOTS", "empty"),
        ({"EVOLUTION_URL": "https://evo.example.com"}, "EVOLUTION_API_KEY", "missing, needed with EVOLUTION_URL"),
        ({"EVOLUTION_URL": "evo.example.com", "EVOLUTION_API_KEY": "k"}, "EVOLUTION_URL", "not an http(s) URL"),
        ({"EVOLUTION_URL": "https://e.com/manager/", "EVOLUTION_API_KEY": "k"}, "EVOLUTION_URL", "manager page"),
        ({"EVOLUTION_ON_RESOLVE": "delete"}, "EVOLUTION_ON_RESOLVE", "'closed' or 'keep'"),
    ],
)
def test_a_bad_evolution_setting_stops_start_up_with_one_line(env, variable, words):
    with pytest.raises(ConfigError) as caught:
        load(env, None)
    line = str(caught.value)
    assert line.startswith(f"{variable}: ") and words in line and "\n" not in line


def test_a_message_delivery_names_its_inbox_and_the_contacts_jid():
    """Message deliveries carry `inbox {id, name}` (the default Evolution instance); conversation events do not."""
    delivery = parse(json.dumps(fixture("message_created_incoming_pending")).encode())
    assert delivery.conversation.inbox_name == fixture("message_created_incoming_pending")["inbox"]["name"]
    assert parse(json.dumps(fixture("conversation_opened")).encode()).conversation.inbox_name is None
    conversation = msgspec.structs.replace(
        delivery.conversation, contact_identifier=MARIA, contact_phone="+5511912345678"
    )
    assert conversation_jid(conversation) == MARIA
    evolution_itself = msgspec.structs.replace(conversation, contact_identifier=None, contact_phone="+123456")
    assert conversation_jid(evolution_itself) is None


def test_the_instance_is_the_setting_else_the_inbox_name():
    s = load({"INBOX_4_EVOLUTION_INSTANCE": "Vendas"}, None)
    assert [instance_for(s, 4, "WhatsApp"), instance_for(s, 3, "Website"), instance_for(s, 3, None)] == [
        "Vendas",
        "Website",
        None,
    ]
    assert instance_for(load({"EVOLUTION_INSTANCE": "main"}, None), 3, "Website") == "main"
