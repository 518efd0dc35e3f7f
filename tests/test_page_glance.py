"""The operator page read at a glance (issue 22), in a real headless Chromium against the fake Chatwoot: failures
first, names instead of ids, stable chart colours, one "last 7 days", hand-off results in view, sessions that end,
and a sign-in limiter that forged addresses cannot turn against an administrator."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import aiohttp

from agentbot.page import words
from agentbot.page.auth import RECHECK_SECONDS
from tests import browser as browsers
from tests.conftest import Clock, returning, wait_for
from tests.fakechatwoot.model import Bot

ADMIN = "user-token-5"
chromium, browser = browsers.chromium, browsers.browser  # the fixtures


async def signed_in(bot, browser, token: str = ADMIN) -> None:
    await browser.sign_in(bot.url, token)
    await wait_for(lambda: browser.all("#health"), 5, "the page after sign-in")


async def attr(browser, element, name: str) -> str:
    return await browser.call(element.get_attribute, name)


async def with_text(browser, css: str, text: str):
    """The first element matching `css` whose text holds `text`."""
    for element in await browser.all(css):
        if text in await browser.call(lambda e=element: e.text):
            return element
    raise AssertionError(f"no {css} with {text!r}")


async def in_view(browser, css: str) -> bool:
    """Whether the element is entirely inside the window, as the page stands (no scrolling by the test)."""
    return await browser.script(
        "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
        "return r.top >= 0 && r.bottom <= window.innerHeight && r.height > 0;",
        css,
    )


async def test_a_dead_letter_is_in_the_red_banner_and_marked_failed_in_the_list_and_the_why_panel(
    fake, start_bot, browser
):
    maria, conv = returning(fake)
    bot = await start_bot()
    fake.fail("toggle_status", status=422, times=1)  # final: a dead letter at once
    fake.customer_writes(maria, "Back again")
    await wait_for(lambda: bot.bot.store.dead_letters(), 5, "the dead letter")
    await signed_in(bot, browser)

    banner = await browser.text("#failures")
    assert "1 failed: 1 customer(s) may still wait in pending" in banner
    assert f"#{conv.display_id}" in banner and "Maria Lopez" in banner
    assert "Chatwoot refused to open the conversation: 422" in banner and "toggle_status" not in banner
    assert await in_view(browser, "#failures")  # the first thing on the page
    link = await browser.find("#failures a")
    assert await attr(browser, link, "href") == f"{fake.url}/app/accounts/1/conversations/{conv.display_id}"
    assert await browser.all("#failures button.retry")
    assert await browser.text("#failed-count") == "1"
    assert await browser.text("#median-open") == "–"  # its open never landed: no time from message to open
    store = await with_text(browser, "#health li.check", "Store")
    assert await attr(browser, store, "data-level") == "bad"  # not a green tick next to "1 dead letter"

    [row] = await browser.all("tr.decision")
    assert await attr(browser, row, "data-outcome") == "failed"
    text = await browser.call(lambda: row.text)
    assert "handoff failed" in text and "Chatwoot refused to open the conversation: 422" in text
    await browser.shot("failed")

    await browser.go(bot.url + f"/?why={conv.display_id}#why")
    failed = await browser.text("#why-failed")
    assert failed.startswith("Failed") and "Chatwoot refused to open the conversation: 422" in failed
    assert "a handoff was decided in the current pending period, and FAILED" in await browser.text("#why-remembered")


async def test_names_instead_of_ids(fake, start_bot, browser):
    maria, conv = returning(fake)
    bot = await start_bot(
        HANDOFF_TEAM_ID="2",
        HANDOFF_ASSIGNEE_ID="5",
        BUSINESS_HOURS="mon-fri 00:00-24:00; sat-sun 00:00-24:00",
        INBOX_4_HANDOFF_ALL="true",
    )
    fake.customer_writes(maria, "Back again")
    await wait_for(lambda: conv.status == "open", 5, "the handoff")
    await bot.idle()
    await signed_in(bot, browser)

    rules = await browser.text("#rules")
    assert "at handoff: Support, Sam Rivera" in rules and "team 2" not in rules and "agent 5" not in rules
    assert "Every other inbox (Website, Instagram, Email)" in rules
    assert "WhatsApp: differs in" in rules and "every pending conversation is opened" in rules
    assert "Mon–Sun 00:00–24:00 (UTC)" in rules and "mon 00:00" not in rules
    differs = rules.split("WhatsApp: differs in", 1)[1]
    assert "WhatsApp groups" not in differs  # what is the same is not repeated
    [row] = await browser.all("tr.decision")
    assert "Website" in await browser.call(lambda: row.text) and "inbox 3" not in await browser.text("#decisions")
    options = [await browser.call(lambda o=o: o.text) for o in await browser.all("#filter-inbox option")]
    assert options == ["every inbox", "Website"]
    outcomes = [await browser.call(lambda o=o: o.text) for o in await browser.all("#filter-outcome option")]
    assert outcomes[0] == "Needs attention: handoffs, deferrals, failures" and "Everything" in outcomes
    await browser.go(bot.url + f"/?why={conv.display_id}#why")
    assert "Website" in await browser.text("#why") and "inbox 3" not in await browser.text("#why")
    email = await with_text(browser, "#health li.inbox", "Email")
    assert await attr(browser, email, "data-level") == "ok"  # no bot in the email inbox: not red
    assert await browser.all("link[rel=icon]")
    async with aiohttp.ClientSession() as s, s.get(bot.url + "/favicon.ico") as r:
        assert r.status == 200 and r.content_type == "image/svg+xml"


async def test_a_rules_colour_stays_when_another_rule_appears(fake, start_bot, browser):
    maria, conv = returning(fake)
    bot = await start_bot(HANDOFF_KEYWORDS="human")
    fake.customer_writes(maria, "Back again")
    await wait_for(lambda: conv.status == "open", 5, "the returning customer's handoff")
    await signed_in(bot, browser)

    async def colours() -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for bar in await browser.all("#activity svg rect.bar"):
            found.setdefault(await attr(browser, bar, "data-rule"), set()).add(await attr(browser, bar, "fill"))
        return found

    before = await colours()
    assert before == {"returning": {words.colour("returning")}}
    joao = fake.customer_writes(fake.contact("Joao Silva"), "I want a human").conversation  # "keyword" sorts first
    await wait_for(lambda: joao.status == "open", 5, "the keyword handoff")
    await bot.idle()
    await browser.go(bot.url + "/")
    after = await colours()
    assert after["returning"] == before["returning"] and after["keyword"] == {words.colour("keyword")}
    assert after["keyword"] != after["returning"]
    legend = await browser.text("#activity .legend")
    assert "Returning customer" in legend and "Asked for a person" in legend
    await browser.size(*browsers.PHONE)
    await browser.go(bot.url + "/")
    assert await colours() == after  # the same on a phone
    chart = await browser.find("#activity svg")
    main = await browser.find("#activity")
    assert await browser.call(lambda: chart.size["width"]) >= await browser.call(lambda: main.size["width"]) - 40
    size = await browser.script("return parseFloat(getComputedStyle(document.querySelector('.axis span')).fontSize)")
    assert size >= 11  # legible at 390 px: the labels are HTML, not SVG text scaled down


async def test_the_last_7_days_count_the_same_everywhere(fake, start_bot, browser):
    now = datetime(2026, 11, 26, 10, 0, tzinfo=timezone.utc)
    clock = Clock(now - timedelta(days=7) + timedelta(hours=1))  # inside 7×24 hours, before the 7 calendar days
    bot = await start_bot(clock, HANDOFF_KEYWORDS="human")
    for name, at in (("Old Customer", clock.at), ("Ana", now - timedelta(days=3)), ("Bea", now - timedelta(hours=1))):
        clock.at = at
        c = fake.customer_writes(fake.contact(name), "human please").conversation
        await wait_for(lambda c=c: c.status == "open", 5, f"{name}'s handoff")
        await bot.idle()
    clock.at = now
    await signed_in(bot, browser)
    daily = await browser.text("#activity figure:first-of-type h3")
    assert daily == "Handoffs per day, last 7 days: 2"
    assert "Decisions, last 7 days: handed to humans 2" in await browser.text("#activity")
    assert "since 2026-11-20 00:00 (UTC)" in await browser.text("#activity")
    assert await browser.text("#today") == "1"


async def test_hand_off_nows_result_is_in_view_at_1280_and_390_pixels(fake, start_bot, browser):
    bot = await start_bot()
    convs = [fake.customer_writes(fake.contact(n), "Hello, a question").conversation for n in ("Joao Silva", "Rui")]
    await bot.idle()
    await signed_in(bot, browser)
    for size, conv in zip((browsers.DESKTOP, browsers.PHONE), convs, strict=True):
        await browser.size(*size)
        await browser.go(bot.url + f"/?why={conv.display_id}#why")
        assert await browser.text("#why-status") == "pending"
        await browser.click("#handoff-now")
        assert f"#{conv.display_id}: handoff queued" in await browser.text("#notice")
        assert await in_view(browser, "#notice"), f"the result is out of view at {size}"
        await browser.shot(f"handed-off-{size[0]}")
        await wait_for(lambda conv=conv: conv.status == "open", 5, "the handoff")
        status = await browser.text("#why-status")
        assert status == "open" or await browser.all("#why-opening")  # the state shown is the new one
        assert not await browser.all("#handoff-now")  # not offered again


async def test_why_checks_the_number_before_asking_chatwoot(fake, start_bot, browser):
    bot = await start_bot()
    await signed_in(bot, browser)
    asked = len(fake.calls_to("show"))
    for typed, said in (
        ("-5", "'-5' is not a conversation number: they start at 1"),
        ("#", "Type the conversation's number"),
        ("abc", "'abc' is not a conversation number"),
    ):
        await browser.fill("#why-number", typed)
        await browser.click("#why-button")
        assert said in await browser.text("#why-error")
    assert len(fake.calls_to("show")) == asked  # Chatwoot was not asked
    await browser.fill("#why-number", "9999")
    await browser.click("#why-button")
    assert await browser.text("#why-error") == "Chatwoot has no conversation #9999 in account 1."
    assert not await browser.all("#why a")  # no link to a conversation that does not exist


async def test_hand_off_now_is_refused_in_an_inbox_of_another_bot(fake, start_bot, browser):
    fake.bots[8] = Bot(8, "Sales Bot", "bot-token-8")
    fake.inboxes[5].bot_id = 8
    conv = fake.customer_writes(fake.contact("Rui"), "Hello", inbox=5).conversation
    bot = await start_bot()
    await signed_in(bot, browser)
    await browser.go(bot.url + f"/?why={conv.display_id}#why")
    assert "Instagram is connected to another bot (Sales Bot)" in await browser.text("#why-refusal")
    assert not await browser.all("#handoff-now")
    csrf = await attr(browser, await browser.find("header input[name=csrf]"), "value")
    await browser.script(
        "const f = document.createElement('form'); f.method = 'post'; f.action = '/actions/handoff';"
        "for (const [k, v] of Object.entries(arguments[0])) {"
        "  const i = document.createElement('input'); i.name = k; i.value = v; f.appendChild(i); }"
        "f.id = 'crafted'; const b = document.createElement('button'); b.id = 'crafted-button'; f.appendChild(b);"
        "document.body.appendChild(f);",
        {"csrf": csrf, "account": "1", "conversation": str(conv.display_id)},
    )
    await browser.click("#crafted-button")
    assert "Nothing was queued: Instagram is connected to another bot" in await browser.text("#notice")
    assert conv.status == "pending" and fake.calls_to("toggle_status") == []


async def test_a_copied_cookie_is_refused_after_sign_out(fake, start_bot, browser):
    bot = await start_bot()
    await signed_in(bot, browser)
    copied = await browser.call(browser.driver.get_cookie, "agentbot_session")
    await browser.click("#signout")
    assert "Signed out." in await browser.text("#message")
    await browser.call(browser.driver.add_cookie, {"name": "agentbot_session", "value": copied["value"], "path": "/"})
    await browser.go(bot.url + "/")
    assert "This session was signed out" in await browser.text("#message") and not await browser.all("#health")
    async with (
        aiohttp.ClientSession() as s,
        s.get(bot.url + "/", headers={"Cookie": f"agentbot_session={copied['value']}"}) as r,
    ):
        assert 'id="health"' not in await r.text()


async def test_a_demoted_administrator_is_refused_within_the_recheck_interval(fake, start_bot, browser, log_lines):
    clock = Clock()
    bot = await start_bot(clock)
    kept = fake.customer_writes(fake.contact("Joao Silva"), "Hello").conversation
    await bot.idle()
    await signed_in(bot, browser)
    await browser.go(bot.url + f"/?why={kept.display_id}#why")
    fake.users[5].role = "agent"  # demoted in Chatwoot
    await browser.click("#handoff-now")  # an action asks Chatwoot at once
    assert "You were signed out: Sam Rivera is not an administrator" in await browser.text()
    await bot.idle()
    assert kept.status == "pending" and fake.calls_to("toggle_status") == []

    fake.users[5].role = "administrator"
    await signed_in(bot, browser)
    fake.users[5].role = "agent"
    clock.at = datetime.now(timezone.utc) + timedelta(seconds=RECHECK_SECONDS - 30)
    await browser.go(bot.url + "/")
    assert await browser.all("#health")  # within the interval the page is still shown without asking
    clock.at += timedelta(seconds=31)
    await browser.go(bot.url + "/")
    assert "You were signed out: Sam Rivera is not an administrator" in await browser.text("#message")
    assert not await browser.all("#health")
    assert any("session of Sam Rivera (user 5) ended" in line for line in log_lines)


async def test_forged_forwarded_for_failures_do_not_lock_out_a_right_sign_in(fake, start_bot, browser):
    bot = await start_bot(TRUSTED_PROXIES="127.0.0.1")  # the test plays the proxy in front of the bot
    admin_address = "198.51.100.7"
    async with aiohttp.ClientSession() as s:
        for i in range(40):  # an attacker behind the proxy (203.0.113.9) forging other addresses, the admin's too
            forged = admin_address if i % 2 else f"10.9.{i}.1"
            headers = {"X-Forwarded-For": f"{forged}, 203.0.113.9"}
            async with s.post(bot.url + "/signin", data={"token": "wrong"}, headers=headers) as r:
                assert r.status in (401, 429)
        async with s.post(bot.url + "/signin", data={"token": "wrong"}, headers=headers) as r:
            assert r.status == 429  # the attacker's own address is limited
    await browser.call(browser.driver.execute_cdp_cmd, "Network.enable", {})
    await browser.call(
        browser.driver.execute_cdp_cmd,
        "Network.setExtraHTTPHeaders",
        {"headers": {"X-Forwarded-For": admin_address}},
    )
    try:
        await signed_in(bot, browser)
    finally:
        await browser.call(browser.driver.execute_cdp_cmd, "Network.setExtraHTTPHeaders", {"headers": {}})
    assert "Sam Rivera" in await browser.text("header")
