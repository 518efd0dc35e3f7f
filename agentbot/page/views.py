"""The operator page's routes: `GET /` (sign-in form or the page), sign-in/out, and the POST actions."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import aiohttp_jinja2
from aiohttp import web
from loguru import logger

from ..chatwoot import ChatwootError
from ..facts import Facts
from . import panels
from .auth import Refused, Session, Sessions, SignInLimiter, admit, client_of, csrf_ok

if TYPE_CHECKING:
    from ..app import Bot

HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
DONE = {
    "handoff": "Handoff queued: the outbox opens the conversation now.",
    "retried": "Dead letter re-queued.",
    "not-pending": "Chatwoot says the conversation is not pending any more; nothing was queued.",
    "gone": "That dead letter is not there any more.",
    "signed-out": "Signed out.",
}


class Page:
    """The page's per-instance state: sessions, the sign-in limiter, the inboxes read at the last sign-in."""

    def __init__(self, bot: Bot) -> None:
        self.bot = bot
        self.sessions = Sessions(bot.settings)
        self.limiter = SignInLimiter()
        self.inboxes = panels.Inboxes()


PAGE = web.AppKey("page", Page)


def render(request: web.Request, template: str, context: dict[str, Any], status: int = 200) -> web.Response:
    response = aiohttp_jinja2.render_template(template, request, context, status=status)
    response.headers.update(HEADERS)
    return response


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={**HEADERS, "Location": location})


def _now(page: Page) -> float:
    return page.bot.clock().timestamp()


def sign_in_form(request: web.Request, message: str = "", status: int = 200) -> web.Response:
    return render(request, "signin.html", {"message": message}, status)


async def index(request: web.Request) -> web.Response:
    page = request.app[PAGE]
    session, stale = page.sessions.read(request, _now(page))
    if session is None:
        done = request.query.get("done")
        return sign_in_form(request, "Your session has expired; sign in again." if stale else DONE.get(done or "", ""))
    bot, s = page.bot, page.bot.settings
    now, zone = bot.clock(), ZoneInfo(s.timezone)
    inbox, outcome = _int(request.query.get("inbox")), request.query.get("outcome") or None
    entries = [e for e in await bot.store.decisions(now.timestamp()) if e.account_id in session.accounts]
    checks, missing, version = await panels.health(bot, session.accounts)
    dead = [j for j in await bot.store.dead_letters() if j.account_id in session.accounts]
    context = {
        "session": session,
        "s": s,
        "zone": zone,
        "local": panels.local,
        "link": panels.link,
        "done": DONE.get(request.query.get("done", ""), ""),
        "checks": checks,
        "missing": missing,
        "version": version,
        "inboxes": _inboxes_of(page, session.accounts),
        "outbox_depth": await bot.store.depth(),
        "rules": panels.rules(s),
        "activity": panels.activity(entries, now, zone),
        "counts": panels.counts(bot),
        "decisions": panels.decisions(entries, inbox, outcome),
        "filter_inbox": inbox,
        "filter_outcome": outcome,
        "inbox_choices": sorted({e.inbox_id for e in entries if e.inbox_id is not None}),
        "outcome_choices": ["handoff", "defer", "keep", "pending"],
        "logged": len(entries),
        "dead": dead,
        "sweeper": getattr(bot, "sweeper", None),
        "sweep_rows": None,
        "why": await _why(page, session, request.query, now, zone),
    }
    return render(request, "index.html", context)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


async def _why(
    page: Page, session: Session, query: Mapping[str, str], now: datetime, zone: ZoneInfo
) -> dict[str, Any] | None:
    """ "Why is #N pending?": what the bot remembers, what Chatwoot says now, and today's decision."""
    number = (query.get("why") or "").strip().lstrip("#")
    if not number:
        return None
    display_id, account = _int(number), _int(query.get("account")) or session.accounts[0]
    if display_id is None or account not in session.accounts:
        return {"error": f"{number!r} is not a conversation number of your accounts (example: 123)", "number": number}
    bot, key = page.bot, f"{account}:{display_id}"
    assert bot.settings.chatwoot_url is not None  # the server runs only with it (config.REQUIRED)
    state, _ = await bot.store.load(key, None)
    why = {
        "number": display_id,
        "account": account,
        "link": panels.link(bot.settings.chatwoot_url, account, display_id),
        "remembered": panels.remembered(state, zone),
        "log": [
            e
            for e in await bot.store.decisions(now.timestamp())
            if e.account_id == account and e.display_id == display_id
        ][:10],
    }
    try:
        live = await bot.chatwoot.conversation(account, display_id)
    except ChatwootError as exc:
        why["error"] = (
            f"Chatwoot has no conversation #{display_id} in account {account}"
            if exc.status == 404
            else "this Chatwoot does not let bots read a conversation (Chatwoot 4.16+ does)"
            if exc.status == 401
            else f"Chatwoot did not answer: {exc}"
        )
        return why
    c = live.conversation
    decision = panels.decision_today(live, Facts(state, None), now, bot.settings)
    why.update(
        status=c.status,
        contact=c.contact.name,
        inbox=c.inbox_id,
        decision=decision.describe().splitlines(),
        can_hand_off=c.status == "pending",
    )
    return why


async def _session_for_action(request: web.Request) -> tuple[Page, Session, Mapping[str, Any]]:
    page = request.app[PAGE]
    session, _ = page.sessions.read(request, _now(page))
    if session is None:
        raise web.HTTPUnauthorized(text="Sign in first.", headers=HEADERS)
    form = await request.post()
    if not csrf_ok(session, form.get("csrf")):
        logger.warning(
            "operator page: {} (user {}) sent a form without a valid CSRF token; refused", session.name, session.user_id
        )
        raise web.HTTPForbidden(
            text="This form has expired or did not come from the bot's page; reload the page.", headers=HEADERS
        )
    return page, session, form


async def sign_in(request: web.Request) -> web.Response:
    page = request.app[PAGE]
    client, now = client_of(request), _now(page)
    wait = page.limiter.retry_after(client, now)
    if wait is not None:
        logger.warning("operator page: too many failed sign-ins from {}; refused for {:.0f} s", client, wait)
        response = sign_in_form(request, f"Too many failed sign-ins; try again in {wait:.0f} s.", 429)
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    token = str((await request.post()).get("token") or "").strip()
    try:
        if not token:
            raise Refused("paste your Chatwoot access token (Profile settings → Access token)")
        user_id, name, accounts = await admit(page.bot.chatwoot, page.bot.settings, token)
        value, _ = page.sessions.issue(user_id, name, accounts, now)
    except Refused as exc:
        page.limiter.failed(client, now)
        logger.warning("operator page: sign-in refused from {}: {}", client, exc)
        return sign_in_form(request, f"Not signed in: {exc}.", 401)
    logger.info("operator page: {} (user {}) signed in from {} for accounts {}", name, user_id, client, accounts)
    await _read_inboxes(page, token, accounts)
    response = redirect("/")
    page.sessions.set_cookie(response, request, value)
    return response


def _inboxes_of(page: Page, accounts: list[int]) -> panels.Inboxes:
    """The inboxes read at sign-ins, only those of `accounts` (an operator sees only their own accounts')."""
    return panels.Inboxes([r for r in page.inboxes.rows if r["account"] in accounts], page.inboxes.read_at)


async def _read_inboxes(page: Page, token: str, accounts: list[int]) -> None:
    """Inbox names and bots, read once with the operator's token (a bot token may not list inboxes)."""
    bot, cw = page.bot, page.bot.chatwoot
    assert bot.settings.chatwoot_bot_token is not None  # the server runs only with it (config.REQUIRED)
    mine = bot.settings.chatwoot_bot_token.get_secret_value()
    rows = []
    try:
        async with asyncio.timeout(5):
            for account in accounts:
                bots = await cw.list_agent_bots(account, token)
                ours = next((b.id for b in bots if b.token == mine), None)
                inboxes = [i for i in await cw.list_inboxes(account, token) if bot.settings.acts_on(account, i.id)]
                attached = await asyncio.gather(*(cw.inbox_agent_bot(account, i.id, token) for i in inboxes))
                rows += [
                    {
                        "account": account,
                        "id": i.id,
                        "name": i.name or "?",
                        "channel": i.channel_type or "",
                        "bot": a.name or "",
                        "ours": ours is not None and a.id == ours,
                    }
                    for i, a in zip(inboxes, attached, strict=True)
                ]
    except (ChatwootError, TimeoutError) as exc:
        logger.warning("operator page: could not read the inboxes with the operator's token ({})", exc or "timed out")
        return
    kept = [r for r in page.inboxes.rows if r["account"] not in accounts]  # other operators' accounts
    page.inboxes = panels.Inboxes(kept + rows, panels.local(_now(page), ZoneInfo(bot.settings.timezone)))


async def sign_out(request: web.Request) -> web.Response:
    await _session_for_action(request)
    response = redirect("/?done=signed-out")
    Sessions.clear(response)
    return response


async def hand_off(request: web.Request) -> web.Response:
    page, session, form = await _session_for_action(request)
    account, display_id = _int(form.get("account")), _int(form.get("conversation"))
    if account not in session.accounts or display_id is None:
        raise web.HTTPBadRequest(text="account or conversation missing or not yours", headers=HEADERS)
    back = f"/?why={display_id}&account={account}"
    try:
        live = await page.bot.chatwoot.conversation(account, display_id)
    except ChatwootError as exc:
        raise web.HTTPBadGateway(text=f"Chatwoot did not answer: {exc}", headers=HEADERS) from None
    if live.conversation.status != "pending":
        return redirect(back + "&done=not-pending#why")
    await page.bot.handoffs.hand_off_now(live.conversation, session.name)
    return redirect(back + "&done=handoff#why")


async def retry(request: web.Request) -> web.Response:
    page, session, form = await _session_for_action(request)
    job_id = str(form.get("id") or "")
    job = next(
        (j for j in await page.bot.store.dead_letters() if j.id == job_id and j.account_id in session.accounts), None
    )
    if job is None or not await page.bot.store.requeue_one(job_id, _now(page)):
        return redirect("/?done=gone#dead")
    page.bot.outbox.wake(1)
    logger.info(
        "operator page: {} re-queued the dead letter of conversation {}: {}",
        session.name,
        job.conversation_key,
        job.reason,
    )
    return redirect("/?done=retried#dead")


# ---- the sweep, in the background (the `sweep` helper's block, issue 21) ----------------------------------
SWEEP_MODES = {"preview": "a dry run", "run": "a sweep", "these": "a dry run's conversations"}
SWEEP_SHOWN = ("opened", "deferred", "expired", "error")  # the rows of a result; the kept ones are counted only


async def sweep(request: web.Request) -> web.Response:
    """Start a sweep in the background and redirect to its progress (POST-redirect-GET: a reload never starts
    another); "these" runs the conversations of the dry run just shown."""
    page, session, form = await _session_for_action(request)
    sweeps = getattr(page.bot, "sweeper", None)  # a SweepLoop (page.panels.Sweeper)
    if sweeps is None:
        raise web.HTTPNotFound(text="This bot has no sweep.", headers=HEADERS)
    mode = str(form.get("mode") or "")
    if mode not in SWEEP_MODES:
        raise web.HTTPBadRequest(text=f"mode must be one of {', '.join(SWEEP_MODES)}", headers=HEADERS)
    only = None
    if mode == "these":
        shown = sweeps.current
        if shown is None or shown.id != form.get("run") or not shown.dry_run or shown.result is None:
            return redirect("/sweep?gone=1")
        only = shown.to_run()
    run, started = sweeps.begin(session.accounts, dry_run=mode == "preview", only=only)
    if not started:
        return redirect("/sweep?busy=1")
    logger.info("operator page: {} started {} in the background", session.name, SWEEP_MODES[mode])
    return redirect("/sweep")


async def sweep_progress(request: web.Request) -> web.Response:
    """The page's latest sweep: its progress while it runs, then its result with links to Chatwoot."""
    page = request.app[PAGE]
    session, _ = page.sessions.read(request, _now(page))
    if session is None:
        return redirect("/")
    sweeps = getattr(page.bot, "sweeper", None)  # a SweepLoop (page.panels.Sweeper)
    if sweeps is None:
        raise web.HTTPNotFound(text="This bot has no sweep.", headers=HEADERS)
    run = sweeps.current
    if run is not None and not set(run.accounts) <= set(session.accounts):
        run = None  # another operator's accounts
    base = page.bot.settings.chatwoot_url or ""
    rows = []
    if run is not None and run.result is not None:
        for x in run.result.conversations:
            if x.outcome in SWEEP_SHOWN:
                account, number = (int(part) for part in x.key.split(":"))
                link = panels.link(base, account, number)
                rows.append(
                    {"number": number, "link": link, **{k: getattr(x, k) for k in ("outcome", "label", "reason")}}
                )
    context = {
        "session": session,
        "run": run,
        "rows": rows,
        "to_run": len(run.to_run()) if run is not None and run.dry_run and run.result else 0,
        "busy": "busy" in request.query,
        "gone": "gone" in request.query,
    }
    return render(request, "sweep.html", context)


def setup(app: web.Application, bot: Bot) -> None:
    import jinja2

    aiohttp_jinja2.setup(app, loader=jinja2.PackageLoader("agentbot.page", "templates"), autoescape=True)
    app[PAGE] = Page(bot)
    app.router.add_get("/", index)
    app.router.add_post("/signin", sign_in)
    app.router.add_post("/signout", sign_out)
    app.router.add_post("/actions/handoff", hand_off)
    app.router.add_post("/actions/retry", retry)
    app.router.add_post("/actions/sweep", sweep)
    app.router.add_get("/sweep", sweep_progress)
