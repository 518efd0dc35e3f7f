"""The operator page's routes: `GET /` (sign-in form or the page), sign-in/out, and the POST actions."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import jinja2
import msgspec
from aiohttp import web
from loguru import logger

from ..chatwoot import ChatwootError
from ..events import Conversation
from ..facts import Facts
from ..store.base import OPENED
from . import LATER, chart, panels, words
from . import names as names_
from .auth import (
    RECHECK_SECONDS,
    Ended,
    Refused,
    Session,
    Sessions,
    SignInLimiter,
    Unconfirmed,
    admit,
    client_of,
    csrf_ok,
    signed,
)

if TYPE_CHECKING:
    from ..app import Bot

HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
DONE = {"signed-out": "Signed out."}
FAVICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="7" fill="#1f6feb"/>'
    '<path d="M9 11h14v9h-7l-5 4v-4H9z" fill="#fff"/></svg>'
)


class Page:
    """The page's per-instance state: sessions, the sign-in limiter, the names read from Chatwoot."""

    def __init__(self, bot: Bot) -> None:
        self.bot = bot
        self.sessions = Sessions(bot.settings)
        self.ended = Ended(bot.store)
        self.limiter = SignInLimiter()
        self.names = names_.Names()


def page_of(request: web.Request) -> Page:
    """The page's state, made on its first request (page.setup imports none of this module)."""
    later = request.app[LATER]
    if later.page is None:
        later.page = Page(later.bot)
    return later.page


TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("agentbot.page", "templates"), autoescape=True)


def render(request: web.Request, template: str, context: dict[str, Any], status: int = 200) -> web.Response:
    html = TEMPLATES.get_template(template).render(context)
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8", headers=HEADERS)


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={**HEADERS, "Location": location})


def _now(page: Page) -> float:
    return page.bot.clock().timestamp()


def sign_in_form(request: web.Request, message: str = "", status: int = 200) -> web.Response:
    response = render(request, "signin.html", {"message": message}, status)
    if request.cookies.get("agentbot_session"):
        Sessions.clear(response)
    return response


async def current(request: web.Request, page: Page, *, action: bool) -> tuple[Session | None, str | None, str]:
    """(the session, a renewed cookie to set, why there is none). Chatwoot confirms the role and accounts again
    after RECHECK_SECONDS, and before every action."""
    now, s = _now(page), page.bot.settings
    session, stale = page.sessions.read(request, now)
    if session is None:
        return None, None, "Your session has expired; sign in again." if stale else ""
    if await page.ended.ended(session, now):
        return None, None, "This session was signed out; sign in again."
    accounts = [a for a in session.accounts if not s.chatwoot_account_ids or a in s.chatwoot_account_ids]
    if not action and accounts == session.accounts and now - session.checked < RECHECK_SECONDS:
        return session, None, ""
    try:
        _, name, accounts = await admit(page.bot.chatwoot, s, session.token)
    except Unconfirmed as exc:
        if action or not accounts:
            raise web.HTTPServiceUnavailable(text=f"Not done: {exc}; try again shortly.", headers=HEADERS) from None
        return msgspec.structs.replace(session, accounts=accounts), None, ""  # Chatwoot down: still show the page
    except Refused as exc:
        await page.ended.end(session, now)
        logger.warning("operator page: the session of {} (user {}) ended: {}", session.name, session.user_id, exc)
        return None, None, f"You were signed out: {exc}."
    session = msgspec.structs.replace(session, name=name, accounts=accounts, checked=now)
    if page.names.stale(accounts, now):
        await _read_names(page, session.token, accounts)
    return session, page.sessions.encode(session), ""


async def index(request: web.Request) -> web.Response:
    page = page_of(request)
    session, cookie, message = await current(request, page, action=False)
    if session is None:
        return sign_in_form(request, message or DONE.get(request.query.get("done", ""), ""))
    response = render(request, "index.html", await _context(request, page, session))
    if cookie:
        page.sessions.set_cookie(response, request, cookie, session.expires, _now(page))
    return response


async def _context(request: web.Request, page: Page, session: Session) -> dict[str, Any]:
    bot, s, q = page.bot, page.bot.settings, request.query
    now, zone = bot.clock(), ZoneInfo(s.timezone)
    names = page.names.of(session.accounts)
    inbox, shown = _int(q.get("inbox")), q.get("outcome") or "attention"
    logged = [e for e in await bot.store.decisions(now.timestamp()) if e.account_id in session.accounts]
    entries, opened = panels.split(logged)
    found = panels.failures([j for j in await bot.store.dead_letters() if j.account_id in session.accounts], entries)
    checks, missing, version = await panels.health(bot, session.accounts, len(found))
    failed = panels.failed_entries(entries, found)
    notice = _notice(session, q)
    why = await _why(page, session, names, q, now, zone, found)
    return {
        "session": session,
        "s": s,
        "zone": zone,
        "local": panels.local,
        "link": panels.link,
        "words": words,
        "notice": notice if why is None else None,
        "failures": found,
        "checks": checks,
        "missing": missing,
        "version": version,
        "names": names,
        "inbox_level": lambda row: panels.inbox_level(s, row),
        "read_at": panels.local(min(names.read_at.values()), zone) if names.read_at else "",
        "rules": panels.rules(s, names),
        "activity": panels.activity(entries, opened, now, zone, len(found)),
        "counts": panels.counts(bot),
        "decisions": panels.decisions(entries, names, inbox, shown, failed, opened),
        "filter_inbox": inbox,
        "filter_outcome": shown if shown in words.FILTERS else "attention",
        "inbox_choices": sorted(
            {(e.account_id, e.inbox_id) for e in entries if e.inbox_id is not None}, key=lambda k: names.inbox(*k)
        ),
        "logged": len(entries),
        "since": panels.local(chart.week_start(now, zone).timestamp(), zone)[:10],
        "last_sweep": panels.last_sweep(getattr(bot, "sweeper", None), zone),
        "sweeper": getattr(bot, "sweeper", None),
        "why": why,
        "why_notice": notice if why is not None else None,
    }


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def conversation_number(raw: object) -> tuple[int | None, str]:
    """(the number, or None and what is wrong with it in words): a positive integer, "#" allowed before it."""
    text = str(raw or "").strip()
    digits = text.removeprefix("#").strip()
    if not digits:
        return None, "Type the conversation's number, as Chatwoot shows it after # (example: 123)."
    if digits.lstrip("-").isdigit() and int(digits) <= 0:
        return None, f"{text!r} is not a conversation number: they start at 1 (example: 123)."
    if not digits.isdigit() or len(digits) > 12:
        return None, f"{text!r} is not a conversation number (example: 123)."
    return int(digits), ""


def _notice(session: Session, q: Mapping[str, str]) -> tuple[str, str] | None:
    """(level, text) of an action's result carried in the URL; shown only with this session's signature."""
    note, sig = q.get("note", ""), q.get("sig", "")
    level, _, text = note.partition(":")
    if not text or level not in ("ok", "warn", "bad") or sig != signed(session, note):
        return None
    return level, text


def _with_notice(session: Session, location: str, level: str, text: str, anchor: str) -> web.Response:
    note = f"{level}:{text}"
    joiner = "&" if "?" in location else "?"
    return redirect(f"{location}{joiner}{urlencode({'note': note, 'sig': signed(session, note)})}#{anchor}")


async def _why(
    page: Page,
    session: Session,
    names: names_.Names,
    query: Mapping[str, str],
    now: datetime,
    zone: ZoneInfo,
    found: list[panels.Failure],
) -> dict[str, Any] | None:
    """ "Why is #N pending?": what the bot remembers, what Chatwoot says now, and today's decision."""
    if "why" not in query:
        return None
    display_id, problem = conversation_number(query["why"])
    account = _int(query.get("account")) or session.accounts[0]
    if display_id is None or account not in session.accounts:
        return {"error": problem or f"Account {query.get('account')} is not one of yours.", "number": query["why"]}
    bot, key = page.bot, f"{account}:{display_id}"
    assert bot.settings.chatwoot_url is not None  # the server runs only with it (config.REQUIRED)
    state, _ = await bot.store.load(key, None)
    failure = next((f for f in found if (f.job.account_id, f.job.display_id) == (account, display_id)), None)
    why: dict[str, Any] = {
        "number": display_id,
        "account": account,
        "link": panels.link(bot.settings.chatwoot_url, account, display_id),
        "remembered": panels.remembered(state, zone, failure),
        "failure": failure,
        "log": [
            e
            for e in await bot.store.decisions(now.timestamp())
            if e.account_id == account and e.display_id == display_id and e.outcome != OPENED
        ][:10],
    }
    try:
        live = await bot.chatwoot.conversation(account, display_id)
    except ChatwootError as exc:
        why["error"] = _read_error(exc, display_id, account)
        if exc.status == 404:
            why["link"] = None  # no link to a conversation that does not exist
        return why
    c = live.conversation
    decision = panels.decision_today(live, Facts(state, None), now, bot.settings)
    opening = c.status == "pending" and await bot.store.opening(key)
    why.update(
        status=c.status,
        opening=opening,
        contact=c.contact.name,
        inbox=names.inbox(account, c.inbox_id),
        decision=decision.describe().splitlines(),
        refusal=_refusal(page, names, c),
        can_hand_off=c.status == "pending" and not opening,
    )
    return why


def _read_error(exc: ChatwootError, display_id: int, account: int) -> str:
    if exc.status == 404:
        return f"Chatwoot has no conversation #{display_id} in account {account}."
    if exc.refused_to_bots:
        return "This Chatwoot does not let bots read a conversation (Chatwoot 4.16+ does)."
    return f"Chatwoot did not answer about #{display_id}: {exc}"


def _refusal(page: Page, names: names_.Names, c: Conversation) -> str:
    """Why this page will not hand `c` off, or ""."""
    inbox = names.inbox(c.account_id, c.inbox_id)
    row = names.row(c.account_id, c.inbox_id) if c.inbox_id is not None else None
    if row is not None and row.bot and not row.ours:
        return f"{inbox} is connected to another bot ({row.bot}); this bot does not hand off there."
    if not page.bot.settings.acts_on(c.account_id, c.inbox_id):
        return f"This bot does not act in {inbox} (INBOX_IDS / IGNORE_INBOX_IDS)."
    return ""


async def _session_for_action(request: web.Request) -> tuple[Page, Session, Mapping[str, Any]]:
    page = page_of(request)
    form = await request.post()
    session, _ = page.sessions.read(request, _now(page))
    if session is not None and not csrf_ok(session, form.get("csrf")):
        logger.warning(
            "operator page: {} (user {}) sent a form without a valid CSRF token; refused", session.name, session.user_id
        )
        raise web.HTTPForbidden(
            text="This form has expired or did not come from the bot's page; reload the page.", headers=HEADERS
        )
    session, _, message = await current(request, page, action=True)  # the next page view renews the cookie
    if session is None:
        raise web.HTTPUnauthorized(text=message or "Sign in first.", headers=HEADERS)
    return page, session, form


async def sign_in(request: web.Request) -> web.Response:
    page = page_of(request)
    client, now = client_of(request, page.bot.settings.trusted_proxies), _now(page)
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
        value, session = page.sessions.issue(user_id, name, accounts, token, now)
    except Refused as exc:
        page.limiter.failed(client, now)
        logger.warning("operator page: sign-in refused from {}: {}", client, exc)
        return sign_in_form(request, f"Not signed in: {exc}.", 401)
    logger.info("operator page: {} (user {}) signed in from {} for accounts {}", name, user_id, client, accounts)
    await _read_names(page, token, accounts)
    response = redirect("/")
    page.sessions.set_cookie(response, request, value, session.expires, now)
    return response


async def _read_names(page: Page, token: str, accounts: list[int]) -> None:
    found = await names_.read(page.bot.chatwoot, page.bot.settings, token, accounts, _now(page))
    if found is not None:
        page.names = names_.merge(page.names, found)


async def sign_out(request: web.Request) -> web.Response:
    page = page_of(request)
    form = await request.post()
    session, _ = page.sessions.read(request, _now(page))
    if session is None:
        raise web.HTTPUnauthorized(text="Sign in first.", headers=HEADERS)
    if not csrf_ok(session, form.get("csrf")):
        raise web.HTTPForbidden(text="This form did not come from the bot's page; reload the page.", headers=HEADERS)
    await page.ended.end(session, _now(page))  # every copy of the cookie stops working, on every instance
    logger.info("operator page: {} (user {}) signed out", session.name, session.user_id)
    response = redirect("/?done=signed-out")
    Sessions.clear(response)
    return response


async def hand_off(request: web.Request) -> web.Response:
    page, session, form = await _session_for_action(request)
    account = _int(str(form.get("account") or ""))
    if account not in session.accounts:
        raise web.HTTPBadRequest(text="That account is missing or not yours.", headers=HEADERS)
    raw = str(form.get("conversation") or "")
    display_id, problem = conversation_number(raw)
    back = f"/?why={quote(raw)}&account={account}"
    if display_id is None:
        return _with_notice(session, back, "bad", problem, "why")
    try:
        live = await page.bot.chatwoot.conversation(account, display_id)
    except ChatwootError as exc:
        return _with_notice(session, back, "bad", f"Nothing was queued: {_read_error(exc, display_id, account)}", "why")
    c = live.conversation
    refusal = _refusal(page, page.names.of(session.accounts), c)
    if refusal:
        return _with_notice(session, back, "bad", f"Nothing was queued: {refusal}", "why")
    if c.status != "pending":
        text = f"Chatwoot says #{display_id} is {c.status} now, not pending; nothing was queued."
        return _with_notice(session, back, "warn", text, "why")
    decision = await page.bot.handoffs.hand_off_now(c, session.name)
    level, text = {
        "handoff": ("ok", f"#{display_id}: handoff queued; the outbox opens it now."),
        "defer": ("warn", f"#{display_id}: handoff deferred: {decision.reason}."),
    }.get(decision.outcome, ("warn", f"#{display_id}: nothing was queued: {decision.reason}."))
    return _with_notice(session, back, level, text, "why")


async def retry(request: web.Request) -> web.Response:
    page, session, form = await _session_for_action(request)
    job_id = str(form.get("id") or "")
    job = next(
        (j for j in await page.bot.store.dead_letters() if j.id == job_id and j.account_id in session.accounts), None
    )
    if job is None or not await page.bot.store.requeue_one(job_id, _now(page)):
        return _with_notice(session, "/", "warn", "That dead letter is not there any more.", "top")
    page.bot.outbox.wake(1)
    logger.info(
        "operator page: {} re-queued the dead letter of conversation {}: {}",
        session.name,
        job.conversation_key,
        job.reason,
    )
    return _with_notice(session, "/", "ok", f"#{job.display_id}: dead letter re-queued; the outbox runs it now.", "top")


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
    page = page_of(request)
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


async def favicon(request: web.Request) -> web.Response:
    return web.Response(text=FAVICON, content_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})
