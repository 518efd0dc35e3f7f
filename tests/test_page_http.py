"""The operator page over plain HTTP: cookie attributes, sessions shared by instances, sign-in limits,
bad input, and the sweep panel against a small sweeper."""

from __future__ import annotations

import asyncio
import html
import re

import aiohttp
from yarl import URL

from tests.conftest import returning, wait_for

ADMIN = "user-token-5"


def client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))  # keep cookies for 127.0.0.1


async def sign_in(s: aiohttp.ClientSession, url: str, token: str = ADMIN, **headers: str) -> aiohttp.ClientResponse:
    async with s.post(url + "/signin", data={"token": token}, headers=headers, allow_redirects=False) as r:
        await r.read()
        return r


async def test_the_session_cookie_is_httponly_strict_expiring_and_secure_behind_https(fake, start_bot):
    bot = await start_bot()
    async with client() as s:
        plain = (await sign_in(s, bot.url)).headers["Set-Cookie"]
        proxied = (await sign_in(s, bot.url, **{"X-Forwarded-Proto": "https"})).headers["Set-Cookie"]
    for cookie in (plain, proxied):
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=28800" in cookie and "Path=/" in cookie
        assert ADMIN not in cookie
    assert "Secure" not in plain and "Secure" in proxied


async def test_instances_with_the_same_settings_accept_each_others_sessions(fake, start_bot):
    one, two = await start_bot(), await start_bot()
    other = await start_bot(CHATWOOT_BOT_SECRET="another-secret-with-more-length")  # other key material: not accepted
    async with client() as s:
        assert (await sign_in(s, one.url)).status == 303
        cookie = s.cookie_jar.filter_cookies(URL(one.url))["agentbot_session"].value
    for bot, accepted in ((two, True), (other, False)):
        async with (
            aiohttp.ClientSession() as s,
            s.get(bot.url + "/", headers={"Cookie": f"agentbot_session={cookie}"}) as r,
        ):
            assert ('id="health"' in await r.text()) is accepted


async def test_failed_sign_ins_are_limited_and_logged(fake, start_bot, log_lines):
    bot = await start_bot()
    async with client() as s:
        for _ in range(5):
            assert (await sign_in(s, bot.url, "wrong")).status == 401
        limited = await sign_in(s, bot.url, ADMIN)  # even a good token waits once the limit is hit
        assert limited.status == 429 and int(limited.headers["Retry-After"]) > 0
        async with s.post(bot.url + "/signin", data={"token": ADMIN}) as r:
            assert "Too many failed sign-ins" in await r.text()
    assert len(fake.calls_to("profile", caller="anonymous")) == 5  # no more checks with Chatwoot
    assert sum("too many failed sign-ins" in line for line in log_lines) == 2
    assert not any("wrong" in line or ADMIN in line for line in log_lines)


async def test_an_empty_token_and_bad_page_input_get_a_clear_answer(fake, start_bot):
    bot = await start_bot()
    async with client() as s:
        async with s.post(bot.url + "/signin", data={}) as r:
            assert r.status == 401 and "paste your Chatwoot access token" in await r.text()
        await sign_in(s, bot.url)
        async with s.get(bot.url + "/?why=abc&inbox=x") as r:
            assert r.status == 200 and "'abc' is not a conversation number (example: 123)" in html.unescape(
                await r.text()
            )
        async with s.get(bot.url + "/?why=999") as r:
            assert "Chatwoot has no conversation #999 in account 1" in await r.text()
        async with s.get(bot.url + "/") as r:
            csrf = re.search(r'name="csrf" value="([^"]+)"', await r.text())[1]
        async with s.post(bot.url + "/actions/handoff", data={"csrf": csrf, "account": "2", "conversation": "40"}) as r:
            assert r.status == 400 and "not yours" in await r.text()
    assert fake.calls_to("toggle_status") == []


class Sweeper:
    """The small interface the page's sweep panel needs (agentbot.page.panels.Sweeper)."""

    def __init__(self):
        self.last_run, self.runs = None, 0

    async def preview(self, accounts):
        return [{"conversation": "#41", "status": "pending", "would": "open (returning customer)"}]

    async def run(self, accounts):
        self.runs += 1
        self.last_run = "2026-11-26 04:00: opened 1 conversation"
        return "Opened 1 conversation."


async def test_the_sweep_panel_says_when_the_bot_has_no_sweeper(fake, start_bot):
    """Without CHATWOOT_API_TOKEN there is no sweep; the background sweep itself: test_sweep's page stories."""
    bot = await start_bot()
    async with client() as s:
        await sign_in(s, bot.url)
        async with s.get(bot.url + "/") as r:
            page = await r.text()
        assert "Sweep not available" in page and "sweep not available" in page


async def test_healthz_metrics_and_webhook_need_no_session(fake, start_bot):
    maria, conv = returning(fake)
    bot = await start_bot()
    fake.customer_writes(maria, "Back")
    await wait_for(lambda: conv.status == "open", 5, "the handoff through the webhook")
    assert (await bot.get("/healthz"))[0] == 200
    status, text = await bot.get("/metrics")
    assert status == 200 and "agentbot_handoffs_total" in text


async def test_hand_off_now_clicked_twice_queues_one_handoff(fake, start_bot):
    bot = await start_bot(HANDOFF_MESSAGE="An agent will be with you shortly.")
    kept = fake.customer_writes(fake.contact("Joao Silva"), "Hello, a question").conversation
    await bot.idle()
    held = fake.hold_deliveries(lambda d: True)  # Sidekiq lag
    async with client() as s:
        await sign_in(s, bot.url)
        async with s.get(bot.url + "/") as r:
            csrf = re.search(r'name="csrf" value="([^"]+)"', await r.text())[1]
        form = {"csrf": csrf, "account": "1", "conversation": str(kept.display_id)}

        async def click():
            async with s.post(bot.url + "/actions/handoff", data=form, allow_redirects=False) as r:
                return r.status, r.headers.get("Location")

        await asyncio.gather(click(), click())
    await wait_for(lambda: kept.status == "open", 5, "the handoff")
    await wait_for(
        lambda: len(fake.notes(kept.display_id)) >= 1 and len(fake.bot_messages(kept.display_id)) >= 1,
        5,
        "the note and the message",
    )
    await wait_for(lambda: _outbox_empty(bot), 5, "the outbox to empty")  # a second job would have run by now
    held.release()
    await bot.idle()
    assert len(fake.notes(kept.display_id)) == 1
    assert len(fake.bot_messages(kept.display_id)) == 1


async def _outbox_empty(bot) -> bool:
    return await bot.bot.store.depth() == 0


async def test_a_hand_off_for_an_unknown_conversation_answers_in_html_and_queues_nothing(fake, start_bot):
    bot = await start_bot()
    async with client() as s:
        await sign_in(s, bot.url)
        async with s.get(bot.url + "/") as r:
            csrf = re.search(r'name="csrf" value="([^"]+)"', await r.text())[1]
        for number, said in (
            ("9999", "Nothing was queued: Chatwoot has no conversation #9999 in account 1."),
            ("-5", "'-5' is not a conversation number: they start at 1"),
        ):
            form = {"csrf": csrf, "account": "1", "conversation": number}
            async with s.post(bot.url + "/actions/handoff", data=form) as r:
                page = html.unescape(await r.text())
                assert r.status == 200 and r.content_type == "text/html" and said in page
        async with s.get(bot.url + "/?why=1&note=ok:forged&sig=0") as r:
            assert "forged" not in await r.text()  # a notice in the URL shows only with the session's signature
    assert fake.calls_to("toggle_status") == []


async def test_keeps_are_one_row_per_conversation_and_hidden_by_default(fake, start_bot):
    bot = await start_bot()
    joao = fake.contact("Joao Silva")
    for text in ("Hello", "Are you there?", "Hello?"):
        fake.customer_writes(joao, text)
        await bot.idle()
    async with client() as s:
        await sign_in(s, bot.url)
        async with s.get(bot.url + "/") as r:
            assert 'data-outcome="keep"' not in await r.text()  # the default: what needs attention
        async with s.get(bot.url + "/?outcome=keep") as r:
            page = await r.text()
    assert page.count('data-outcome="keep"') == 1 and "×3" in page


async def test_the_last_sweep_is_shown_in_the_pages_time_zone(fake, start_bot):
    bot = await start_bot(TIMEZONE="America/Sao_Paulo")
    bot.bot.sweeper = sweeper = Sweeper()
    sweeper.last_run = "2026-11-26 04:00 UTC: opened 1 conversation"
    async with client() as s:
        await sign_in(s, bot.url)
        async with s.get(bot.url + "/") as r:
            assert "Last sweep: 2026-11-26 01:00 America/Sao_Paulo: opened 1 conversation" in await r.text()


async def test_trusted_proxies_must_be_addresses_or_networks():
    from agentbot.config import ConfigError, load

    assert load({"TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1,*"}).trusted_proxies == ["10.0.0.0/8", "192.0.2.1", "*"]
    try:
        load({"TRUSTED_PROXIES": "10.0.0.0/8,router"})
    except ConfigError as exc:
        assert str(exc).startswith("TRUSTED_PROXIES: 'router' is not an IP address or network")
    else:
        raise AssertionError("accepted")


async def test_behind_a_platform_router_the_hop_it_added_is_the_client(fake, start_bot):
    bot = await start_bot(TRUSTED_PROXIES="*")  # Heroku, Render, Railway, Fly: only their router reaches the bot
    async with client() as s:
        for i in range(6):  # forged first hops, the router's own hop last
            assert (await sign_in(s, bot.url, "wrong", **{"X-Forwarded-For": f"10.0.0.{i}, 203.0.113.9"})).status in (
                401,
                429,
            )
        assert (await sign_in(s, bot.url, "wrong", **{"X-Forwarded-For": "10.0.0.99, 203.0.113.9"})).status == 429
        assert (await sign_in(s, bot.url, ADMIN, **{"X-Forwarded-For": "198.51.100.7"})).status == 303
