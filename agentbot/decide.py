"""The decision core: (delivery, facts, now, rules) → Decision. Pure: no I/O, clock passed in."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Literal

from msgspec.structs import replace

from .actions import AssignAgent, AssignTeam, Job, PrivateNote, PublicMessage, SetPriority, SetStatus, Step
from .config import Rules, Settings
from .events import Conversation, Delivery, Message
from .facts import ConversationState, Facts, Resolved
from .keywords import find_keyword, fold

# What became of a delivery; "duplicate" is the service's: the store had the delivery already.
Outcome = Literal["handoff", "defer", "keep", "pending", "record", "ignore", "duplicate"]


@dataclass(slots=True)
class Decision:
    outcome: Outcome
    reason: str
    rule: str = ""  # the rule that fired, for metrics and notes
    state: ConversationState | None = None  # new state to store; None = unchanged
    jobs: list[Job] = field(default_factory=list)
    timer: tuple[float, Job] | None = None  # (due, job): the conversation's timer from now on
    cancel_timer: bool = False  # drop the conversation's timer
    resolved: Resolved | None = None  # remember this contact's resolved conversation

    @property
    def writes(self) -> bool:
        return bool(self.state or self.jobs or self.timer or self.cancel_timer or self.resolved)

    def describe(self) -> str:
        lines = [f"{self.outcome}: {self.reason}"]
        lines += [f"  then {job.describe()}" for job in self.jobs]
        if self.timer:
            due = datetime.fromtimestamp(self.timer[0], timezone.utc)
            lines.append(f"  timer at {due.isoformat(timespec='seconds')}: {self.timer[1].describe()}")
        elif self.cancel_timer:
            lines.append("  drop the conversation's timer")
        return "\n".join(lines)


# A customer message in a period whose handoff is still queued is remembered as seen: that handoff, unsure
# whether its open landed, waits for the messages Chatwoot shows it has not received (outbox.unheard), and the
# events of an earlier save delivered after it (an agent's resolve) are stale then. Once the handoff is done
# or dead, Handoffs._handle forgets it: before 4.16 those late events are what starts the next period.
HEARD = "handoff already decided for this pending conversation"


def ignore(reason: str) -> Decision:
    return Decision("ignore", reason)


def triage(d: Delivery, settings: Settings) -> str | None:
    """Why the delivery needs nothing, whatever the bot remembers; None when facts are needed."""
    c, m = d.conversation, d.message
    if c is None:
        return f"{d.event} is not an event the bot acts on"
    if not settings.acts_on(c.account_id, c.inbox_id):
        return f"account {c.account_id} / inbox {c.inbox_id} is not handled by this bot"
    if m is None:
        if c.status == "pending":
            return f"{d.event} with status pending needs nothing"
        # Chatwoot sends conversation_opened/resolved and conversation_status_changed for the same save.
        if d.event == "conversation_updated" and c.status_changed is False:
            return "conversation_updated without a status change needs nothing"
        return None
    if d.event != "message_created":
        return "message_updated (receipts and edits) is not new customer input"
    if m.sender.kind == "agent_bot":
        return "the bot's own message"
    rules = settings.rules_for(c.inbox_id)
    if c.is_group and rules.whatsapp_groups == "ignore":
        return "WhatsApp group (GROUPS=ignore)"
    if m.private:
        command = m.sender.kind == "user" and (m.content or "").strip() == rules.bot_command
        return None if command and c.status == "open" else "private note"
    if c.status != "pending":
        return f"conversation is {c.status}, not pending"
    if c.is_evolution_system or (c.is_group and rules.whatsapp_groups == "open") or m.kind == "incoming":
        return None
    if not (m.sender.kind == "user" or (m.source_id or "").startswith("WAID:")):
        return f"{m.kind} message not sent by a person"
    return None if rules.handoff_on_agent_reply else "agent reply (HANDOFF_ON_AGENT_REPLY is off)"


def decide(d: Delivery, facts: Facts, now: datetime, settings: Settings, *, live: bool = True) -> Decision:
    """`live=False` is the sweep: the message was seen before (no count, no greeting, no away message), and
    HANDOFF_AFTER_SECONDS runs from the conversation's `waiting_since`."""
    decision = _decide(d, facts, now, settings, live)
    m, c = d.message, d.conversation
    if m and c:
        if decision.state is not None:  # private notes never show as the conversation's latest message
            decision.state = decision.state.saw(c.status, c.updated, None if m.private else m.id, c.bot_owned)
    return decision


def _decide(d: Delivery, facts: Facts, now: datetime, settings: Settings, live: bool = True) -> Decision:
    why_not = triage(d, settings)
    if why_not:
        return ignore(why_not)
    c, m = d.conversation, d.message
    assert c is not None
    rules = settings.rules_for(c.inbox_id)
    if m is None:
        return _conversation_event(d.event, c, facts.state, now)
    if m.private:
        return _give_back(c, m, facts.state, now)
    trigger = m.id
    if facts.state.handed_off:
        return Decision("ignore", HEARD, state=facts.state)
    if facts.state.left_pending_after is not None and m.id <= facts.state.left_pending_after:
        return ignore("late delivery: the conversation left pending after this message was written")
    if c.is_group and rules.whatsapp_groups == "open":
        return _handoff(c, facts, now, rules, "group", "WhatsApp group (GROUPS=open)", trigger, deferrable=False)
    if c.is_evolution_system:
        job = _job(c, "Evolution API system contact", [SetStatus("open")], now, "system", trigger)
        return Decision("handoff", job.reason, "system", replace(facts.state, handed_off=True), [job])
    if m.kind != "incoming":
        who = m.sender.name or "an agent (from the phone)"
        reason = f"{who} replied while the conversation was pending"
        return _handoff(c, facts, now, rules, "agent_reply", reason, trigger, deferrable=False, human_took_over=True)
    return _incoming(c, m, facts, now, rules, live)


def _conversation_event(event: str, c: Conversation, state: ConversationState, now: datetime) -> Decision:
    # Chatwoot delivers in no set order (Sidekiq): an event about an earlier save must not undo what the
    # bot decided since, e.g. a resolve delivered after the customer's next message.
    if state.is_older(c.updated, c.last_message_id):
        return ignore(f"{event} is older than what the bot already acted on")
    state = state.saw(c.status, c.updated, c.last_message_id, c.bot_owned)
    if c.status == "resolved":
        assignee = c.assignee.id if c.assignee and c.assignee.kind == "user" else None
        on = now.date().isoformat()
        record = Resolved(c.display_id, on, assignee) if c.contact.id is not None else None
        latest = _latest(c, state)
        new = state.new_period(resolved_on=on, left_pending_after=latest, closed_after=latest)
        return Decision("record", f"{event}: conversation resolved", state=new, cancel_timer=True, resolved=record)
    if c.status in ("open", "snoozed") and state.in_period:
        latest = _latest(c, state)
        closed = latest if c.status == "snoozed" else state.closed_after
        new = state.new_period(left_pending_after=latest, closed_after=closed)
        return Decision("record", f"{event}: conversation is {c.status}", state=new, cancel_timer=True)
    return ignore(f"{event} with status {c.status} needs nothing")


def _latest(c: Conversation, state: ConversationState) -> int | None:
    """Messages up to this id were written before the conversation left pending; their status is stale."""
    known = [i for i in (c.last_message_id, state.left_pending_after) if i is not None]
    return max(known, default=None)


def _give_back(c: Conversation, m: Message, state: ConversationState, now: datetime) -> Decision:
    job = _job(
        c,
        f"{m.sender.name or 'An agent'} gave the conversation back to the bot",
        [SetStatus("pending")],
        now,
        "bot_command",
        m.id,
    )
    return Decision("pending", job.reason, "bot_command", state.new_period(given_back=True), [job], cancel_timer=True)


def _incoming(c: Conversation, m: Message, facts: Facts, now: datetime, rules: Rules, live: bool = True) -> Decision:
    state = replace(facts.state, incoming=facts.state.incoming + 1) if live else facts.state
    # After a give-back the customer's history has been seen by a human already: only other rules apply.
    returning = returning_reason(c, facts) if rules.handoff_returning and not given_back(c, state) else None
    fired = _first_rule(c, m, state, rules, returning)
    if fired:
        rule, reason = fired
        return _handoff(
            c,
            replace(facts, state=state),
            now,
            rules,
            rule,
            reason,
            m.id,
            returning=bool(returning and rule == "returning"),
            live=live,
        )
    jobs: list[Job] = []
    if live and rules.greeting_message and not state.greeted and not c.is_group:
        greeting = _render(rules.greeting_message, c, "new customer")
        jobs.append(_job(c, "greeting", [PublicMessage(greeting)], now, "", m.id))
        state = replace(state, greeted=True)
    timer: tuple[float, Job] | None = None
    if rules.handoff_after_seconds and state.timer_due is None:
        # Counted from the bot's clock at the first message (the delivery arrives within moments),
        # so `explain --at` and tests with an injected clock see the same timer; the sweep counts
        # from Chatwoot's waiting_since instead, as it comes late.
        start = now if live else datetime.fromtimestamp(c.waiting_since or now.timestamp(), timezone.utc)
        reason = f"Customer waited {rules.handoff_after_seconds} s in pending"
        if start + timedelta(seconds=rules.handoff_after_seconds) <= now:  # the sweep found it waiting longer
            return _handoff(c, replace(facts, state=state), now, rules, "wait", reason, m.id, live=live)
        due = start + timedelta(seconds=rules.handoff_after_seconds)
        due = due if c.is_group else _adjust_to_hours(due, rules)
        timer = (due.timestamp(), _handoff_job(c, facts, now, rules, reason, "wait", m.id, returning=False))
        state = replace(state, timer_due=timer[0])
    return Decision(
        "keep", "new customer: no rule fired, conversation stays pending", state=state, jobs=jobs, timer=timer
    )


def given_back(c: Conversation, state: ConversationState) -> bool:
    """An agent gave the conversation back to the bot: with `BOT_COMMAND`, or (Chatwoot 4.16+) by assigning it
    to the bot: bot-owned and pending now, where the bot last saw it owned by no bot (a human had it). A
    conversation bot-owned since its creation (an agent may have replied or resolved it meanwhile) is not given
    back: its customer is a returning one, who must not be kept waiting in pending."""
    return state.given_back or (c.bot_owned and state.human_owned)


def returning_reason(c: Conversation, facts: Facts) -> str | None:
    """Why this customer counts as returning, cheapest evidence first; None for a new customer."""
    if facts.state.resolved_on:
        return f"Returning customer: conversation #{c.display_id} was resolved on {facts.state.resolved_on}"
    if c.first_reply_at:
        return f"Returning customer: conversation #{c.display_id} had an agent reply on {c.first_reply_at[:10]}"
    if c.assignee and c.assignee.kind == "user":
        return f"Returning customer: conversation #{c.display_id} is assigned to {c.assignee.name or 'an agent'}"
    p = facts.previous
    if p:
        where = " (found in Chatwoot)" if p.source == "chatwoot" else ""
        return f"Returning customer: conversation #{p.display_id} was resolved on {p.on}{where}"
    return None


def _first_rule(
    c: Conversation, m: Message, state: ConversationState, rules: Rules, returning: str | None
) -> tuple[str, str] | None:
    if rules.handoff_all:
        return "all", "Every conversation goes to humans (HANDOFF_ALL)"
    if returning:
        return "returning", returning
    # Labels, attributes and language are decoded from the payload only when a rule asks for them.
    for label in c.labels if rules.labels else ():
        if fold(label) in rules.labels:
            return "label", f'Conversation has the label "{label}"'
    attributes = c.attributes if rules.attributes else {}
    for name, value in rules.attributes.items():
        if name in attributes and fold(str(attributes[name])) == value:
            return "attribute", f"Customer attribute {name}={attributes[name]}"
    language = c.language if rules.handoff_languages or rules.keep_languages else None
    if language:
        primary = language.split("-")[0]
        if language in rules.handoff_languages or primary in rules.handoff_languages:
            return "language", f'Customer language "{language}" goes to humans'
        if rules.keep_languages and not (language in rules.keep_languages or primary in rules.keep_languages):
            return (
                "language",
                f'Customer language "{language}" is not one the bot answers ({", ".join(rules.keep_languages)})',
            )
    word = find_keyword(rules.keyword_pattern, m.content)
    if word:
        return "keyword", f'Customer asked for a person ("{word}")'
    if rules.handoff_after_messages and state.incoming >= rules.handoff_after_messages:
        return "messages", f"Customer sent {state.incoming} messages while pending"
    return None


def operator_handoff(c: Conversation, facts: Facts, now: datetime, settings: Settings, who: str) -> Decision:
    """An administrator's "hand off now" from the operator page: the inbox's handoff, at once."""
    return _handoff(
        c,
        facts,
        now,
        settings.rules_for(c.inbox_id),
        "operator",
        f"{who} handed the conversation to humans from the bot's page",
        c.last_message_id,  # the trigger: only the bot's messages after it count as this handoff's
        deferrable=False,
    )


def _handoff(
    c: Conversation,
    facts: Facts,
    now: datetime,
    rules: Rules,
    rule: str,
    reason: str,
    trigger: int | None,
    *,
    deferrable: bool = True,
    returning: bool = False,
    human_took_over: bool = False,
    live: bool = True,
) -> Decision:
    state = replace(facts.state, handed_off=True, timer_due=None)
    hours = rules.hours
    deferrable = deferrable and not c.is_group  # a group is only ever opened, at once
    opening = hours.next_open(now) if deferrable and hours and not hours.is_open(now) else None
    if opening is None:
        job = _handoff_job(c, facts, now, rules, reason, rule, trigger, returning, human_took_over)
        return Decision("handoff", reason, rule, state, [job], cancel_timer=bool(facts.state.timer_due))
    job = _handoff_job(c, facts, now, rules, f"{reason} (deferred from closed hours)", rule, trigger, returning)
    jobs: list[Job] = []
    period = opening.isoformat()
    if live and rules.away_message and facts.state.away_period != period:
        jobs.append(_job(c, "away message", [PublicMessage(_render(rules.away_message, c, reason))], now, "", trigger))
        state = replace(state, away_period=period)
    state = replace(state, timer_due=opening.timestamp())
    when = opening.strftime("%Y-%m-%d %H:%M %Z")
    return Decision(
        "defer", f"{reason}; outside business hours, deferred to {when}", rule, state, jobs, (opening.timestamp(), job)
    )


def _handoff_job(
    c: Conversation,
    facts: Facts,
    now: datetime,
    rules: Rules,
    reason: str,
    rule: str,
    trigger: int | None,
    returning: bool,
    human_took_over: bool = False,
) -> Job:
    if c.is_group:  # the whole group would read a message or a note: the status change is all it gets
        return _job(c, reason, [SetStatus("open")], now, rule, trigger)
    before: list[Step] = []
    agent: list[Step] = []
    remark = ""
    if not human_took_over:
        if rules.handoff_team_id is not None:
            before.append(AssignTeam(rules.handoff_team_id))
        if rules.handoff_assignee_id is not None:
            agent.append(AssignAgent(rules.handoff_assignee_id))
        elif returning:
            agent, remark = _keep_previous_agent(c, facts, rules)
        if rules.handoff_priority:
            before.append(SetPriority(rules.handoff_priority))
    # Assign before opening (Chatwoot auto-assigns on open), except on a bot-owned conversation
    # (v4.16+), where a human assignment would itself open it and bypass the bot handoff.
    bot_owned = c.bot_owned
    steps = before + ([] if bot_owned else agent) + [SetStatus("open")] + (agent if bot_owned else [])
    if rules.handoff_note:
        steps.append(PrivateNote(reason + remark))
    message = (rules.returning_message or rules.handoff_message) if returning else rules.handoff_message
    if message and not human_took_over:
        steps.append(PublicMessage(_render(message, c, reason)))
    return _job(c, reason, steps, now, rule, trigger)


def _keep_previous_agent(c: Conversation, facts: Facts, rules: Rules) -> tuple[list[Step], str]:
    """Returning customers keep their agent; an offline agent falls back to the team or auto-assignment."""
    fallback = f"team {rules.handoff_team_id}" if rules.handoff_team_id is not None else "Chatwoot's auto-assignment"
    if c.assignee and c.assignee.kind == "user":
        if c.assignee.availability in (None, "online"):
            return [], ""
        return [
            AssignAgent(None)
        ], f". {c.assignee.name or 'The previous agent'} is {c.assignee.availability}; handed to {fallback} instead."
    if facts.previous and facts.previous.assignee_id is not None:
        return [AssignAgent(facts.previous.assignee_id, fallback)], ""
    return [], ""


def _job(c: Conversation, reason: str, steps: list[Step], now: datetime, rule: str, trigger: int | None) -> Job:
    """`trigger`: the message that led to the job (None for the operator's button)."""
    return Job(
        c.account_id,
        c.display_id,
        reason,
        steps,
        created_at=now.timestamp(),
        rule=rule,
        trigger=trigger,
        decided_at=now.timestamp(),
    )


def _render(template: str, c: Conversation, reason: str) -> str:
    return template.format(name=c.contact.name, reason=reason, conversation_id=c.display_id)


def _adjust_to_hours(due: datetime, rules: Rules) -> datetime:
    hours = rules.hours
    if hours and not hours.is_open(due):
        return hours.next_open(due) or due
    return due
