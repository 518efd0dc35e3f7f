"""What the operator page shows: health, rules, activity, decisions, one conversation explained, dead letters."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

from ..chatwoot import ChatwootError
from ..config import Settings
from ..decide import Decision, decide_from_memory
from ..events import Delivery, Listed, Message, Person
from ..facts import ConversationState, Facts
from ..store import DecisionEntry
from . import chart

if TYPE_CHECKING:
    from ..app import Bot

SHOWN_DECISIONS = 300


class Sweeper(Protocol):
    """What the page needs from a sweep (when the app has one: `Bot.sweeper`)."""

    last_run: str | None  # when and what the last sweep did, in words

    async def preview(self, accounts: list[int]) -> list[dict[str, str]]:
        """One row per conversation of `accounts` the sweep would change (column → text); changes nothing."""

    async def run(self, accounts: list[int]) -> str:
        """Sweep `accounts` now; what it did, in words."""


@dataclass
class Check:
    what: str
    ok: bool
    detail: str


@dataclass
class Inboxes:
    """Inbox names and whether this bot is attached, as read with the operator's token at sign-in."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    read_at: str = ""


def local(ts: float, zone: ZoneInfo) -> str:
    return datetime.fromtimestamp(ts, zone).strftime("%Y-%m-%d %H:%M")


def link(base: str, account: int, display_id: int) -> str:
    return f"{base}/app/accounts/{int(account)}/conversations/{int(display_id)}"


async def health(bot: Bot, accounts: list[int]) -> tuple[list[Check], list[str], str | None]:
    """(checks, what is not configured with the line to fix it, Chatwoot's version)."""
    s, cw = bot.settings, bot.chatwoot
    assert s.chatwoot_url is not None  # the server runs only with it (config.REQUIRED)
    version, *probes = await asyncio.gather(
        cw.version(), *(cw.probe_bot_token(a) for a in accounts), return_exceptions=True
    )
    checks = []
    if isinstance(version, ChatwootError) and version.status is None:
        checks.append(Check("Chatwoot reachable", False, f"{s.chatwoot_url}: {version.detail}"))
        version = None
    else:
        checks.append(Check("Chatwoot reachable", True, s.chatwoot_url))
        version = version if isinstance(version, str) else None
    for account, probe in zip(accounts, probes, strict=True):
        ok = not isinstance(probe, BaseException)
        checks.append(
            Check(
                f"Bot token accepted in account {account}",
                ok,
                "yes" if ok else f"{probe}; copy the token again from Settings → Bots into CHATWOOT_BOT_TOKEN",
            )
        )
    try:
        depth, dead = await bot.store.depth(), len(await bot.store.dead_letters())
        checks.append(
            Check("Store", True, s.store_url.split("://")[0] + f": {depth} jobs waiting, {dead} dead letters")
        )
    except Exception as exc:  # the page must still show what it can
        checks.append(Check("Store", False, f"{type(exc).__name__}: {exc}"))
    return checks, missing(s), version


def missing(s: Settings) -> list[str]:
    lines = []
    if not s.chatwoot_bot_secret:
        lines.append(
            "Deliveries are not verified: set CHATWOOT_BOT_SECRET=<the bot's secret from Settings → Bots> "
            "(Chatwoot 4.13+)."
        )
    if not s.chatwoot_api_token:
        lines.append(
            "Returning customers in a new conversation are known only from the bot's memory: "
            "set CHATWOOT_API_TOKEN=<an administrator's access token>."
        )
    if s.store_url == "memory://":
        lines.append(
            "The memory store forgets everything at restart: set STORE_URL=sqlite:///agentbot.sqlite3 or redis://…."
        )
    return lines


def rules(s: Settings) -> list[tuple[str, list[str]]]:
    groups = [("Every inbox" if not s.overrides else "Every other inbox", s.describe())]
    groups += [(f"Inbox {inbox}", r.describe()) for inbox, r in sorted(s.overrides.items())]
    return [(title, [line.removeprefix("- ") for line in lines]) for title, lines in groups]


def counts(bot: Bot) -> dict[str, int]:
    """Deliveries by outcome since this instance started."""
    found: dict[str, int] = {}
    for metric in bot.metrics.deliveries.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                outcome = sample.labels["outcome"]
                found[outcome] = found.get(outcome, 0) + int(sample.value)
    return dict(sorted(found.items()))


def activity(entries: list[DecisionEntry], now: datetime, zone: ZoneInfo) -> dict[str, Any]:
    palette = chart.colours(entries)
    day, week = now.timestamp() - 86400, now.timestamp() - 7 * 86400
    return {
        "hourly": chart.per_hour(entries, now, zone, palette),
        "daily": chart.per_day(entries, now, zone, palette),
        "legend": list(palette.items()),
        "outcomes": [
            (span, sorted(Counter(e.outcome for e in entries if e.at > since).items()))
            for span, since in (("last 24 hours", day), ("last 7 days", week))
        ],
    }


def decisions(entries: list[DecisionEntry], inbox: int | None, outcome: str | None) -> list[DecisionEntry]:
    chosen = [e for e in entries if (inbox is None or e.inbox_id == inbox) and (not outcome or e.outcome == outcome)]
    return chosen[:SHOWN_DECISIONS]


def remembered(state: ConversationState, zone: ZoneInfo) -> list[str]:
    if state == ConversationState():
        return ["nothing: the bot has not seen this conversation (or forgot it after 90 days)"]
    lines = []
    if state.resolved_on:
        lines.append(f"saw it resolved on {state.resolved_on}")
    if state.handed_off:
        lines.append("a handoff was decided in the current pending period")
    lines.append(f"{state.incoming} customer message(s) in the current pending period")
    if state.greeted:
        lines.append("the customer was greeted")
    if state.timer_due:
        lines.append(f"a timer opens it at {local(state.timer_due, zone)}")
    if state.away_period:
        lines.append(f"the away message was sent for the closed period until {state.away_period[:16]}")
    if state.given_back:
        lines.append("an agent gave it back to the bot")
    return lines


def decision_today(live: Listed, facts: Facts, now: datetime, settings: Settings) -> Decision:
    """The decision the rules give if the customer wrote into the conversation now."""
    c, latest = live.conversation, live.messages[-1] if live.messages else None
    last = latest if latest and latest.kind == "incoming" else None
    message = Message(
        last.id if last else 0,
        "incoming",
        False,
        (last.content if last else None) or "",
        Person(c.contact.id, "contact", c.contact.name),
        None,
    )
    return decide_from_memory(Delivery("message_created", None, c, message), facts, now, settings)


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)
