"""What the operator page shows: failures, health, rules, activity, decisions, one conversation explained."""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, Protocol
from zoneinfo import ZoneInfo

from ..actions import Job
from ..chatwoot import ChatwootError
from ..config import Rules, Settings
from ..decide import Decision, decide_from_memory
from ..events import Delivery, Listed, Message, Person
from ..facts import ConversationState, Facts
from ..store import DecisionEntry
from ..store.base import OPENED
from . import chart, words
from .names import Names

if TYPE_CHECKING:
    from ..app import Bot

SHOWN_DECISIONS = 300
Level = Literal["ok", "warn", "bad"]


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
    level: Level  # green, amber or red by what it means for customers, not by whether something answered
    detail: str


@dataclass
class Failure:
    """A dead letter, as the banner, the decision list and the Why panel show it."""

    job: Job
    words: str  # the error in words
    at: float  # when it died (or was decided, when the store does not say)
    opens: bool  # the handoff itself failed: the customer is still waiting in pending
    contact: str  # from the decision log; "" when it has none


@dataclass
class Row:
    """One line of Recent decisions; a conversation's keeps are one row with their count."""

    entry: DecisionEntry
    outcome: str  # the entry's outcome, or "failed" for a handoff that became a dead letter
    inbox: str
    count: int = 1
    first_at: float = 0.0
    error: str = ""
    opened: str = ""  # when the bot's open of this handoff (or deferral) landed: "opened 4 s later"


@dataclass(frozen=True)
class Opened:
    """A conversation the bot opened (its open landed: store.base.OPENED), paired with its pending period."""

    at: float  # when Chatwoot opened it
    first: float  # the period's first customer message (its first decision)
    decision: DecisionEntry | None  # the period's handoff (or deferral) it carried out; None: a timer's (keep)

    @property
    def waited(self) -> float:
        return self.at - self.first


@dataclass
class Summary:
    today: int = 0
    median_open: str = "–"  # from a customer's first message to the bot's open, the last 7 days
    failed: int = 0
    pending: int = 0
    spans: list[tuple[str, list[tuple[str, int]]]] = field(default_factory=list)


def local(ts: float, zone: ZoneInfo) -> str:
    return datetime.fromtimestamp(ts, zone).strftime("%Y-%m-%d %H:%M")


def link(base: str, account: int, display_id: int) -> str:
    return f"{base}/app/accounts/{int(account)}/conversations/{int(display_id)}"


def failures(dead: list[Job], entries: list[DecisionEntry]) -> list[Failure]:
    contacts = {(e.account_id, e.display_id): e.contact for e in reversed(entries)}  # the newest name wins
    found = []
    for j in dead:
        at = j.dead_at or j.decided_at or j.created_at  # dead letters buried before dead_at existed have none
        contact = contacts.get((j.account_id, j.display_id), "")
        found.append(Failure(j, words.failure(j), at, j.status_target == "open", contact))
    return sorted(found, key=lambda f: f.at, reverse=True)


async def health(bot: Bot, accounts: list[int], dead: int) -> tuple[list[Check], list[str], str | None]:
    """(checks, what is not configured with the line to fix it, Chatwoot's version)."""
    s, cw = bot.settings, bot.chatwoot
    assert s.chatwoot_url is not None  # the server runs only with it (config.REQUIRED)
    version, *probes = await asyncio.gather(
        cw.version(), *(cw.probe_bot_token(a) for a in accounts), return_exceptions=True
    )
    checks = []
    if isinstance(version, ChatwootError) and version.status is None:
        checks.append(Check("Chatwoot reachable", "bad", f"no: {s.chatwoot_url}: {version.detail}"))
        version = None
    else:
        checks.append(Check("Chatwoot reachable", "ok", s.chatwoot_url))
        version = version if isinstance(version, str) else None
    for account, probe in zip(accounts, probes, strict=True):
        ok = not isinstance(probe, BaseException)
        detail = "yes" if ok else f"{probe}; copy the token again from Settings → Bots into CHATWOOT_BOT_TOKEN"
        checks.append(Check(f"Bot token accepted in account {account}", "ok" if ok else "bad", detail))
    checks.append(await _store(bot, dead))
    if bot.evolution is not None:  # Evolution API (issue 24): a refused switch stays red until one works again
        checks.append(Check("Evolution API", *bot.evolution.health()))
    if (forwarding := team_bot(bot)) is not None:
        checks.append(forwarding)
    return checks, missing(s), version


def team_bot(bot: Bot) -> Check | None:
    """The team's own bot behind this one (forwarding, relay.py): its last success, failed attempts in the last
    hour, and how long the oldest forward waiting for a retry has waited."""
    relay = getattr(bot, "relay", None)
    if relay is None or not bot.settings.forwards:
        return None
    last, failures, oldest = relay.last_success, relay.failures_last_hour(), relay.oldest_waiting()
    said = [f"last success {_duration(time.time() - last)} ago" if last else "no success yet"]
    said.append(f"{failures} failed attempt{'s' if failures != 1 else ''} in the last hour")
    if oldest is not None:
        said.append(f"oldest forward waiting {_duration(oldest)} (FORWARD_MAX_AGE {bot.settings.forward_max_age} s)")
    level: Level = "bad" if oldest is not None and oldest > bot.settings.forward_max_age / 2 else "ok"
    return Check("Your bot (FORWARD_URL)", "warn" if level == "ok" and failures else level, ", ".join(said))


async def _store(bot: Bot, dead: int) -> Check:
    kind = bot.settings.store_url.split("://")[0]
    try:
        depth = await bot.store.depth()
    except Exception as exc:  # the page must still show what it can
        return Check("Store", "bad", f"{kind}: {type(exc).__name__}: {exc}")
    if dead:
        return Check("Store", "bad", f"{kind}: {dead} dead letter(s): Chatwoot calls given up (listed at the top)")
    level: Level = "warn" if depth > 100 else "ok"
    return Check("Store", level, f"{kind}: {depth} jobs waiting, no dead letters")


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


def inbox_level(s: Settings, row: Any) -> Level:
    """Green when this bot serves it; red when it should (listed in INBOX_IDS) but does not; else neutral."""
    if row.ours:
        return "ok"
    return "bad" if row.id in s.inbox_ids else "warn" if row.bot else "ok"


def rules(s: Settings, names: Names) -> list[tuple[str, list[str]]]:
    """The rules in words: every inbox's, then each overridden inbox's differences from them."""
    base = _lines(s, names)
    if not s.overrides:
        return [("Every inbox", base)]
    others = [r.name for r in names.inboxes if r.id not in s.overrides]
    title = "Every other inbox" + (f" ({', '.join(others)})" if others else "")
    groups = [(title, base)]
    for inbox, r in sorted(s.overrides.items()):
        differ = [line for line in _lines(r, names) if line not in base]
        groups.append((f"{names.inbox_anywhere(inbox)}: differs in", differ or ["nothing: the same rules"]))
    return groups


def _lines(r: Rules, names: Names) -> list[str]:
    lines = [line.removeprefix("- ") for line in r.describe()]
    if r.hours:
        lines = [line.replace(r.hours.describe(), words.hours(r.hours)) for line in lines]
    return [
        re.sub(
            r"\b(team|agent) (\d+)\b",
            lambda m: names.team(int(m[2])) if m[1] == "team" else names.agent(int(m[2])),
            line,
        )
        if line.startswith("at handoff")
        else line
        for line in lines
    ]


def counts(bot: Bot) -> dict[str, int]:
    """Deliveries by outcome since this instance started."""
    found: dict[str, int] = {}
    for metric in bot.metrics.deliveries.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                outcome = sample.labels["outcome"]
                found[outcome] = found.get(outcome, 0) + int(sample.value)
    return dict(sorted(found.items()))


def split(logged: list[DecisionEntry]) -> tuple[list[DecisionEntry], list[Opened]]:
    """The decision log as (its decisions, the bot's opens paired with their periods): an open is no decision."""
    return [e for e in logged if e.outcome != OPENED], opens(logged)


def opens(logged: list[DecisionEntry]) -> list[Opened]:
    """Each open the bot logged, with its pending period's first decision (its first customer message, or when the
    customer began waiting, where the sweep knew) and the handoff or deferral it carried out; an open whose period
    began before the log does not count. Opens by an agent or by Chatwoot's failure fallback are not logged; a
    handoff whose open failed or is still on its way has none."""
    found: list[Opened] = []
    waiting: dict[tuple[int, int], _Period] = {}
    for e in reversed(logged):  # oldest first
        key = (e.account_id, e.display_id)
        period = waiting.get(key)
        if e.outcome in ("keep", "defer", "handoff"):
            if period is None or period.ended_by(e):
                period = waiting[key] = _Period(e.period, e.at)
            period.number = period.number if e.period is None else e.period
            period.first = min(period.first, e.began or e.at)
            if e.outcome != "keep":
                period.decision = e
            continue
        waiting.pop(key, None)  # an open, a give-back or an expiry ends the period
        if e.outcome == OPENED and period is not None and period.holds(e):
            found.append(Opened(e.at, period.first, period.decision))
    return found


@dataclass
class _Period:
    """A pending period of one conversation as the decision log shows it, while opens() reads the log."""

    number: int | None  # ConversationState.period; None in entries logged before periods were
    first: float  # its first decision, or when the customer began waiting (the sweep's), whichever is earlier
    decision: DecisionEntry | None = None  # its latest handoff or deferral

    def ended_by(self, e: DecisionEntry) -> bool:
        """Whether decision `e` begins a later period. Hand off now after a failed handoff carries on the period the
        customer is waiting in (the bot numbers it anew). A period that ended unlogged (resolved or opened by an
        agent, the team's bot, Chatwoot's fallback) is told by the numbers; without them (logged before they were),
        a decision after a handoff begins a new period (its open never landed, or was undone)."""
        after_handoff = self.decision is not None and self.decision.outcome == "handoff"
        if after_handoff and e.rule == "operator":
            return False
        if self.number is not None and e.period is not None:
            return e.period != self.number
        return after_handoff

    def holds(self, opened: DecisionEntry) -> bool:
        return self.number is None or opened.period is None or opened.period == self.number


def activity(
    entries: list[DecisionEntry], opened: list[Opened], now: datetime, zone: ZoneInfo, failed: int
) -> dict[str, Any]:
    week = chart.week_start(now, zone).timestamp()
    recent = [e for e in entries if e.at >= week]
    rules_seen = {e.rule or "other" for e in recent if e.outcome == "handoff"}
    return {
        "hourly": chart.per_hour(entries, now, zone),
        "daily": chart.per_day(entries, now, zone),
        "legend": [(words.rule(r), words.colour(r), r) for r in sorted(rules_seen, key=words.rule)],
        "summary": summary(entries, opened, now, zone, failed),
    }


def summary(entries: list[DecisionEntry], opened: list[Opened], now: datetime, zone: ZoneInfo, failed: int) -> Summary:
    """`entries`: decisions only (split); `opened`: the bot's opens, of which those of the last 7 days count."""
    today, week = chart.day_start(now, zone).timestamp(), chart.week_start(now, zone).timestamp()
    recent = [e for e in entries if e.at >= week]
    latest: dict[tuple[int, int], DecisionEntry] = {}
    for e in recent:  # newest first: the first seen is the conversation's latest decision
        latest.setdefault((e.account_id, e.display_id), e)
    return Summary(
        today=sum(1 for e in recent if e.outcome == "handoff" and e.at >= today),
        median_open=median_open(opened, week),
        failed=failed,
        pending=sum(1 for e in latest.values() if e.outcome in ("keep", "defer")),
        spans=[
            (span, sorted(Counter(words.outcome(e.outcome) for e in recent if e.at >= since).items()))
            for span, since in (("today", today), ("last 7 days", week))
        ],
    )


def median_open(opened: list[Opened], since: float) -> str:
    """The median time from message to open of the opens since `since`, in words; "–" without any."""
    waits = [o.waited for o in opened if o.at >= since]
    return _duration(statistics.median(waits)) if waits else "–"


def _opened_later(opened: Sequence[Opened]) -> dict[str, str]:
    """Decision key → when the open that carried it out landed, in words."""
    return {o.decision.key: f"opened {_duration(o.at - o.decision.at)} later" for o in opened if o.decision}


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def failed_entries(entries: list[DecisionEntry], found: list[Failure]) -> dict[str, Failure]:
    """Entry key → its failure: for each dead letter, the conversation's handoff decided when the job was."""
    marked: dict[str, Failure] = {}
    for f in found:
        j = f.job
        mine = [
            e
            for e in entries
            if e.outcome == "handoff"
            and (e.account_id, e.display_id) == (j.account_id, j.display_id)
            and (not j.decided_at or e.at <= j.decided_at + 1)
        ]
        if mine:
            marked.setdefault(mine[0].key, f)
    return marked


def decisions(
    entries: list[DecisionEntry],
    names: Names,
    inbox: int | None,
    shown: str,
    failed: dict[str, Failure],
    opened: Sequence[Opened] = (),
) -> list[Row]:
    """The rows of Recent decisions: `shown` is a key of words.FILTERS; keeps collapse per conversation; a handoff
    or deferral the bot's open carried out says when it landed."""
    outcomes = words.FILTERS.get(shown, words.FILTERS["attention"])[1]
    later = _opened_later(opened)
    rows: list[Row] = []
    keeps: dict[tuple[int, int], Row] = {}
    for e in entries:
        if inbox is not None and e.inbox_id != inbox:
            continue
        f = failed.get(e.key)
        outcome = "failed" if f else e.outcome
        if outcome not in outcomes:
            continue
        if outcome == "keep":
            row = keeps.get((e.account_id, e.display_id))
            if row is not None:  # an older keep of a conversation already listed
                row.count, row.first_at = row.count + 1, e.at
                continue
        row = Row(e, outcome, names.inbox(e.account_id, e.inbox_id), first_at=e.at, error=f.words if f else "")
        row.opened = later.get(e.key, "")
        if outcome == "keep":
            keeps[(e.account_id, e.display_id)] = row
        rows.append(row)
        if len(rows) >= SHOWN_DECISIONS:
            break
    return rows


def remembered(state: ConversationState, zone: ZoneInfo, failure: Failure | None) -> list[str]:
    if state == ConversationState():
        return ["nothing: the bot has not seen this conversation (or forgot it after 90 days)"]
    lines = []
    if state.resolved_on:
        lines.append(f"saw it resolved on {state.resolved_on}")
    if state.handed_off:
        lines.append(
            "a handoff was decided in the current pending period, and FAILED: " + failure.words
            if failure and failure.opens
            else "a handoff was decided in the current pending period"
        )
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


_UTC_RUN = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d) UTC(.*)$", re.S)


def last_sweep(sweeper: Any, zone: ZoneInfo) -> str:
    """The last sweep in words, its time in TIMEZONE like the rest of the page."""
    if sweeper is None:
        return "sweep not available"
    at = getattr(sweeper, "last_at", None)  # unix seconds, where the sweep says it
    text = sweeper.last_run or ""
    if not text:
        return "not yet"
    if isinstance(at, (int, float)) and at:
        return f"{local(at, zone)} {zone.key}{text.split(' UTC', 1)[-1] if ' UTC' in text else ': ' + text}"
    m = _UTC_RUN.match(text)
    if m is None:
        return text
    when = datetime.strptime(m[1], "%Y-%m-%d %H:%M").replace(tzinfo=timezone.utc)
    return f"{local(when.timestamp(), zone)} {zone.key}{m[2]}"


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)
