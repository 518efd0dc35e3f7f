"""The operator page's plain words: each rule's name and fixed colour, outcomes, a dead letter's error, and
business hours in a compact form."""

from __future__ import annotations

import zlib
from typing import Any

from ..actions import AssignAgent, AssignTeam, DecideAgain, PrivateNote, PublicMessage, SetPriority, SetStatus
from ..hours import Hours

# rule → (words, colour). Fixed, so a rule keeps its colour in every view, on every day, whatever else appears.
RULES: dict[str, tuple[str, str]] = {
    "returning": ("Returning customer", "#2563eb"),
    "keyword": ("Asked for a person", "#d97706"),
    "wait": ("Waited too long", "#059669"),
    "messages": ("Many messages", "#0891b2"),
    "agent_reply": ("Agent replied", "#7c3aed"),
    "label": ("Label", "#db2777"),
    "attribute": ("Customer attribute", "#65a30d"),
    "language": ("Language", "#ca8a04"),
    "all": ("Every conversation", "#475569"),
    "group": ("WhatsApp group", "#0d9488"),
    "operator": ("Hand off now (page)", "#9333ea"),
    "system": ("System contact", "#64748b"),
    "bot_command": ("Given back to the bot", "#94a3b8"),
}
SPARE = ("#be123c", "#4d7c0f", "#1d4ed8", "#a16207", "#0f766e", "#6d28d9")  # rules this table does not know yet

# outcome filter value → (words, outcomes it shows)
FILTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "attention": ("Needs attention: handoffs, deferrals, failures", ("handoff", "defer", "failed")),
    "handoff": ("Handed to humans", ("handoff",)),
    "defer": ("Deferred to opening hours", ("defer",)),
    "failed": ("Failed handoffs", ("failed",)),
    "keep": ("Kept pending by the bot", ("keep",)),
    "pending": ("Given back to the bot", ("pending",)),
    "all": ("Everything", ("handoff", "defer", "failed", "keep", "pending")),
}
OUTCOMES = {
    "handoff": "handed to humans",
    "defer": "deferred",
    "keep": "kept pending",
    "pending": "given back to the bot",
    "failed": "handoff failed",
}


def rule(name: str) -> str:
    return RULES.get(name or "other", (name.replace("_", " ") or "other", ""))[0]


def colour(name: str) -> str:
    known = RULES.get(name)
    return known[1] if known else SPARE[zlib.crc32(name.encode()) % len(SPARE)]


def outcome(name: str) -> str:
    return OUTCOMES.get(name, name)


def step(s: Any) -> str:
    """What a failed step was meant to do, as a sentence's subject."""
    match s:
        case SetStatus(status="open"):
            return "Chatwoot refused to open the conversation"
        case SetStatus(status="pending"):
            return "Chatwoot refused to give the conversation back to the bot"
        case SetStatus(status=status):
            return f"Chatwoot refused to set the conversation {status}"
        case PrivateNote():
            return "the private note failed"
        case PublicMessage():
            return "the message to the customer failed"
        case AssignTeam(team_id=team):
            return f"assigning team {team} failed"
        case AssignAgent(assignee_id=agent):
            return f"assigning agent {agent} failed"
        case SetPriority(priority=priority):
            return f"setting priority {priority} failed"
        case DecideAgain():
            return "deciding the customer's message again failed"
    return "a Chatwoot call failed"


def failure(job: Any) -> str:
    """A dead letter's error in words: what failed, then what Chatwoot said ("toggle_status: 422 …" → "422 …")."""
    steps = list(getattr(job, "steps", []))
    index = getattr(job, "step", 0)
    what = step(steps[index]) if 0 <= index < len(steps) else "a Chatwoot call failed"
    error = str(getattr(job, "error", "") or "")
    detail = error.split(": ", 1)[1] if ": " in error else error
    return f"{what}: {detail}" if detail else what


DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def hours(h: Hours) -> str:
    """ "Mon–Fri 09:00–18:00; Sat 09:00–13:00 (Europe/Lisbon)": days with the same hours in one range."""
    spans = [", ".join(f"{a:%H:%M}–{'24:00' if b is None else format(b, '%H:%M')}" for a, b in day) for day in h.week]
    groups: list[tuple[int, int, str]] = []  # (first day, last day, hours)
    for i, text in enumerate(spans):
        if text and groups and groups[-1][2] == text and groups[-1][1] == i - 1:
            groups[-1] = (groups[-1][0], i, text)
        elif text:
            groups.append((i, i, text))
    days = [
        f"{DAY_NAMES[a]}{'–' + DAY_NAMES[b] if b > a + 1 else ', ' + DAY_NAMES[b] if b == a + 1 else ''} {text}"
        for a, b, text in groups
    ]
    closed = f"; closed {', '.join(d.strftime('%d %b %Y') for d in sorted(h.closed))}" if h.closed else ""
    return f"{'; '.join(days) or 'never open'} ({h.zone.key}){closed}"
