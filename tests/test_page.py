"""The operator page in a real headless Chromium against the fake Chatwoot: sign-in, sessions, CSRF,
the decisions and chart after a story, "why is #N pending?" with "hand off now", dead-letter Retry."""

from __future__ import annotations

from datetime import timedelta

import aiohttp

from tests import browser as browsers
from tests.conftest import Clock, returning, wait_for

ADMIN, AGENT = "user-token-5", "user-token-6"
chromium, browser = browsers.chromium, browsers.browser  # the fixtures


async def signed_in(bot, browser, token: str = ADMIN) -> None:
    await browser.sign_in(bot.url, token)
    await wait_for(lambda: browser.all("#health"), 5, "the page after sign-in")


async def test_an_administrator_signs_in_and_agents_and_bad_tokens_are_refused(fake, start_bot, browser, log_lines):
    bot = await start_bot()
    await browser.go(bot.url + "/")
    assert "Sign in with Chatwoot" in await browser.text()
    assert not await browser.all("#health")
    await browser.shot("1-sign-in")

    await browser.sign_in(bot.url, AGENT)
    assert "Ana Costa is not an administrator of an account this bot works in" in await browser.text("#message")
    await browser.shot("2-agent-refused")
    await browser.sign_in(bot.url, "user-token-8")  # an administrator, but of another account only
    assert "Olga Berg is not an administrator" in await browser.text("#message")
    await browser.sign_in(bot.url, "not-a-token")
    assert "Chatwoot did not accept this access token" in await browser.text("#message")
    await browser.sign_in(bot.url, "bot-token-7")  # the bot's own token is no user's
    assert "did not accept" in await browser.text("#message")

    await signed_in(bot, browser)
    health = await browser.text("#health")
    assert "Chatwoot reachable" in health and "Bot token accepted in account 1: yes" in health
    assert "Chatwoot version: 4.16.0" in health and "Website (#3, account 1): this bot" in health
    assert "Email (#9, account 1): no bot" in health
    assert "returning customers are opened at once" in await browser.text("#rules")
    await browser.shot("3-signed-in")
    assert [c.status for c in fake.calls_to("profile", caller="user")] == [200, 200, 200]
    refusals = [line for line in log_lines if line.startswith("WARNING") and "sign-in refused" in line]
    assert len(refusals) == 4 and not any("user-token" in line or "not-a-token" in line for line in log_lines)


async def test_nothing_is_served_and_nothing_done_without_a_session(fake, start_bot):
    maria, conv = returning(fake)
    bot = await start_bot(HANDOFF_RETURNING="false")
    fake.customer_writes(maria, "Back again")
    await bot.idle()
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{bot.url}/?why={conv.display_id}") as r:
            page = await r.text()
            assert r.status == 200 and "Sign in with Chatwoot" in page
            assert "Maria" not in page and "Health" not in page
        for path, form in [
            ("/actions/handoff", {"account": "1", "conversation": str(conv.display_id)}),
            ("/actions/retry", {"id": "1"}),
            ("/actions/sweep", {"mode": "run"}),
            ("/signout", {}),
        ]:
            async with s.post(bot.url + path, data=form) as r:
                assert r.status == 401, path
        forged = {"Cookie": "agentbot_session=eyJ1c2VyX2lkIjo1fQ.forged"}
        async with s.post(
            bot.url + "/actions/handoff", data={"account": "1", "conversation": str(conv.display_id)}, headers=forged
        ) as r:
            assert r.status == 401
    await bot.idle()
    assert conv.status == "pending" and fake.calls_to("toggle_status") == []


async def test_a_form_without_the_session_csrf_token_is_refused(fake, start_bot, browser):
    kept = fake.customer_writes(fake.contact("Joao Silva"), "Hello").conversation
    bot = await start_bot()
    await bot.idle()
    await signed_in(bot, browser)
    await browser.fill("#why-number", str(kept.display_id))
    await browser.click("#why-button")
    await browser.script("document.querySelector('#why input[name=csrf]').value = 'forged'")
    await browser.click("#handoff-now")
    assert "did not come from the bot's page" in await browser.text()
    await browser.shot("csrf-refused")
    await bot.idle()
    assert kept.status == "pending" and fake.calls_to("toggle_status") == []


async def test_the_session_expires(fake, start_bot, browser):
    clock = Clock()
    bot = await start_bot(clock)
    await signed_in(bot, browser)
    clock.at = clock() + timedelta(hours=8, seconds=1)
    await browser.go(bot.url + "/")
    assert "Your session has expired" in await browser.text()
    assert not await browser.all("#health")
    await browser.shot("expired")


async def test_after_a_returning_customer_the_page_lists_the_handoff_and_charts_it(fake, start_bot, browser):
    maria, conv = returning(fake)
    bot = await start_bot()
    fake.customer_writes(maria, "Hi again, the parcel still has the old address")
    await wait_for(lambda: conv.status == "open", 5, "the handoff")
    await bot.idle()
    await signed_in(bot, browser)
    [row] = await browser.all("tr.decision")
    text = await browser.call(lambda: row.text)
    assert "Maria Lopez" in text and "handed to humans" in text and "Returning customer" in text and "Website" in text
    assert f"Returning customer: conversation #{conv.display_id}" in text
    link = await browser.find("tr.decision a")
    href = await browser.call(link.get_attribute, "href")
    assert href == f"{fake.url}/app/accounts/1/conversations/{conv.display_id}"
    bars = await browser.all("#activity svg rect.bar")
    found = [
        (await browser.call(b.get_attribute, "data-rule"), await browser.call(b.get_attribute, "data-count"))
        for b in bars
    ]
    assert found == [("returning", "1"), ("returning", "1")]  # the hour's bar and the day's bar
    height = await browser.call(bars[0].get_attribute, "height")
    assert float(height) > 50
    assert "Decisions, today: handed to humans 1" in await browser.text("#activity")
    await browser.shot("story")

    await browser.go(bot.url + "/?outcome=keep#decisions")
    assert await browser.all("tr.decision") == []
    await browser.go(bot.url + "/?inbox=3&outcome=handoff#decisions")
    assert len(await browser.all("tr.decision")) == 1


async def test_why_is_a_kept_conversation_pending_and_hand_it_off_now(fake, start_bot, browser):
    bot = await start_bot()
    kept = fake.customer_writes(fake.contact("Joao Silva"), "Hello, a question").conversation
    await bot.idle()
    await signed_in(bot, browser)
    await browser.fill("#why-number", f"#{kept.display_id}")
    await browser.click("#why-button")
    assert await browser.text("#why-status") == "pending"
    assert "1 customer message(s) in the current pending period" in await browser.text("#why-remembered")
    assert "kept pending: new customer: no rule fired" in await browser.text("#why-log")
    assert "keep: new customer: no rule fired, conversation stays pending" in await browser.text("#why-decision")
    await browser.shot("why-pending")
    await browser.click("#handoff-now")
    assert f"#{kept.display_id}: handoff queued" in await browser.text("#notice")
    await wait_for(lambda: kept.status == "open", 5, "the handoff from the page")
    await bot.idle()
    assert fake.opened_by(kept.display_id) == ["bot:7"]
    [note] = fake.notes(kept.display_id)
    assert note == "Sam Rivera handed the conversation to humans from the bot's page"
    await browser.go(bot.url + f"/?why={kept.display_id}#why")
    assert await browser.text("#why-status") == "open" and not await browser.all("#handoff-now")
    await browser.shot("handed-off")


async def test_a_dead_letters_retry_requeues_it_and_it_completes(fake, start_bot, browser):
    maria, conv = returning(fake)
    bot = await start_bot()
    fake.fail("toggle_status", status=422, times=1)  # final: a dead letter at once
    fake.customer_writes(maria, "Back again")
    await wait_for(lambda: bot.bot.store.dead_letters(), 5, "the dead letter")
    await signed_in(bot, browser)
    assert "Chatwoot refused to open the conversation: 422" in await browser.text("#failures")
    await browser.shot("dead-letter")
    await browser.click("#failures button.retry")
    assert "dead letter re-queued" in await browser.text("#notice")
    await wait_for(lambda: conv.status == "open", 5, "the re-queued handoff")
    await bot.idle()
    assert await bot.bot.store.dead_letters() == []
    assert len(fake.notes(conv.display_id)) == 1
    await browser.go(bot.url + "/")
    assert "Nobody is stuck" in await browser.text("#failures")


async def test_the_page_fits_a_phone(fake, start_bot, browser):
    maria, conv = returning(fake)
    bot = await start_bot()
    fake.customer_writes(maria, "Hi again")
    await wait_for(lambda: conv.status == "open", 5, "the handoff")
    await bot.idle()
    await browser.size(*browsers.PHONE)
    await signed_in(bot, browser)
    inner, page_width = await browser.script("return [window.innerWidth, document.documentElement.scrollWidth]")
    assert page_width <= inner  # nothing sticks out sideways; wide tables scroll inside their box
    chart = await browser.find("#activity svg")
    assert 0 < await browser.call(lambda: chart.size["width"]) <= inner
    await browser.script("window.scrollTo(0, 0)")
    await browser.shot("phone")


async def test_after_signing_out_the_browser_sees_only_the_sign_in_form(fake, start_bot, browser):
    maria, conv = returning(fake)
    bot = await start_bot()
    fake.customer_writes(maria, "Back again")
    await wait_for(lambda: conv.status == "open", 5, "the handoff")
    await signed_in(bot, browser)
    assert "Maria Lopez" in await browser.text("#decisions")
    await browser.click("#signout")
    assert "Signed out." in await browser.text("#message")
    for path in ("/", f"/?why={conv.display_id}", "/?outcome=handoff"):
        await browser.go(bot.url + path)
        page = await browser.text()
        assert "Sign in with Chatwoot" in page and "Maria" not in page and not await browser.all("#health")
    await browser.shot("signed-out")
