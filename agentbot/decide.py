"""The decision core: (delivery, facts, now, rules) → Decision, or the observation it needs first. Pure: no
I/O, clock passed in.

A decision that needs more than the store's memory says so (`Need`, gidgethub's way): the caller gathers it
into the facts and calls `decide` again. The conversation's life (its periods and their phases) is period.py's
machine; this module applies the handoff rules inside a period."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Literal

from msgspec.structs import replace

from .actions import (
    AssignAgent,
    AssignTeam,
    DecideAgain,
    Job,
    PrivateNote,
    PublicMessage,
    SetPriority,
    SetStatus,
    Step,
)
from .config import Rules, Settings
from .events import Conversation, Delivery, Message
from .evolution_jobs import evolution_jobs, transition_of
from .facts import ConversationState, Facts, Resolved
from .keywords import find_keyword, fold
from .period import CustomerWrote, Effect, GivenBack, HandoffDecided, PendingAgain, Phase, StatusShown, on_event
from .relay import forward_job

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


LOOKUP_UNKNOWN = "lookup"  # the rule of a sweep's decision that waits for a contact look-up that did not answer


class Need(StrEnum):
    """What a decision needs observed before it can be taken (Handoffs gathers it into the facts)."""

    QUEUE = "queue"  # whether a job still queued opens the conversation (Facts.queued)
    DEAD_LETTER = "dead letter"  # whether the conversation has a dead letter (Facts.dead_letter)
    CONVERSATION = "conversation"  # whether Chatwoot shows the conversation pending now (Facts.pending_now)
    CONTACT = "contact"  # the contact's last resolved conversation in Chatwoot (Facts.previous, Facts.looked_up)


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


def decide(
    d: Delivery,
    facts: Facts,
    now: datetime,
    settings: Settings,
    *,
    live: bool = True,
    counted: int | None = None,
    body: bytes | None = None,
) -> Decision | Need:
    """`live=False` is the sweep: the message was seen before (no greeting, no away message; the customer's
    messages in the period are `counted` from the listing), the contact is looked up only when the bot has not
    seen the customer write in this period, and HANDOFF_AFTER_SECONDS runs from the conversation's
    `waiting_since`. `body`: the delivery as Chatwoot sent it, forwarded to the team's bot when it is theirs."""
    decision = _decide(d, facts, now, settings, live, counted)
    m, c = d.message, d.conversation
    if isinstance(decision, Decision) and m and c and decision.state is not None:
        # private notes never show as the conversation's latest message
        decision.state = decision.state.saw(c.status, c.updated, None if m.private else m.id, c.bot_owned)
    if isinstance(decision, Decision) and c is not None:
        _switch_evolution(decision, c, facts.state, now, settings, m.id if m else c.last_message_id)
    if isinstance(decision, Decision) and body is not None:
        _forward(d, body, facts, decision, now, settings)
        _again(d, body, facts, decision, now)
    return decision


def _again(d: Delivery, body: bytes, facts: Facts, decision: Decision, now: datetime) -> None:
    """A customer's message that a queued handoff's open was to catch is decided again once that handoff has ended
    (queued behind it): its open may have landed already, and the conversation been resolved and reopened since,
    with those events still on their way; then the message began a new period (chaos seed 272)."""
    m, c = d.message, d.conversation
    if not (facts.queued and not facts.again and decision.outcome == "ignore" and m and c and c.status == "pending"):
        return
    # Only on 4.16+ (a read tells, later) and only where the open may have landed: it ends the bot's ownership, so a
    # conversation still the bot's has not been opened.
    if c.bot_owned is not False or not facts.state.opening(now.timestamp()):
        return
    period = (decision.state or facts.state).period
    step = DecideAgain(body.decode(), d.delivery_id)
    decision.jobs.append(_job(c, "the message came while a handoff was queued", [step], now, "again", m.id, period))


def _switch_evolution(
    decision: Decision,
    c: Conversation,
    before: ConversationState,
    now: datetime,
    settings: Settings,
    trigger: int | None,
) -> None:
    """Evolution API's bot sessions follow the conversation's life (evolution_jobs.py): its jobs join the decision's."""
    transition = transition_of(decision.outcome, decision.rule, c, before)
    period = (decision.state or before).period
    decision.jobs += evolution_jobs(transition, c, settings, now, period, decision.reason, decision.rule, trigger)


# ---- forwarding to the team's own bot (relay.py) ----
def _forward(d: Delivery, body: bytes, facts: Facts, decision: Decision, now: datetime, settings: Settings) -> None:
    """The delivery's forward job, with the decision (and so in its commit), when it is the team's bot's."""
    job = forward_job(d, body, facts.state, decision.outcome, decision.state, now, settings)
    if job is not None:
        decision.jobs.append(job)


def forward_handoff(
    c: Conversation, facts: Facts, now: datetime, settings: Settings, period: int | None, reason: str
) -> Decision:
    """The team's bot asked for a person (or did not answer for FORWARD_MAX_AGE, FORWARD_FALLBACK=open): the inbox's
    handoff, like a rule's, while the conversation is still the bot's: in the period the forward was decided in,
    not handed off. An answer to an event of a conversation already with humans hands off nothing."""
    if not settings.acts_on(c.account_id, c.inbox_id):
        return ignore(f"inbox {c.inbox_id} is not one this bot handles (INBOX_IDS, IGNORE_INBOX_IDS)")
    state = facts.state
    if state.phase is not Phase.BOT or (period is not None and state.period != period):
        return ignore(f"the conversation is no longer the bot's ({state.phase}, period {state.period})")
    trigger = max(state.latest_message or 0, c.last_message_id or 0) or None
    decision = _handoff(c, facts, now, settings.rules_for(c.inbox_id), "forward", reason, trigger)
    _switch_evolution(decision, c, state, now, settings, trigger)  # Evolution's bot is paused at every handoff
    return decision


# ---- end of forwarding ----


def _decide(
    d: Delivery, facts: Facts, now: datetime, settings: Settings, live: bool, counted: int | None
) -> Decision | Need:
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
    state = _period_of(c, m, facts, now, live) if facts.state.handed_off else facts.state
    if not isinstance(state, ConversationState):
        return state
    t = on_event(state, CustomerWrote(m.id, c.status, c.updated, c.bot_owned, bool(facts.queued)), now)
    if not t.decide:
        return Decision("ignore", str(t.ignored), state=t.state if t.state != facts.state else None)
    state = t.state
    if (need := _look_up(c, m, replace(facts, state=state), settings, live)) is not None:
        return need
    if facts.lookup_failed and not live:  # the sweep never guesses: nothing is remembered, the next sweep asks
        return Decision("ignore", "the contact look-up did not answer; looked at again next sweep", LOOKUP_UNKNOWN)
    facts = replace(facts, state=replace(state, contact_known=state.contact_known or not facts.lookup_failed))
    trigger = m.id
    if c.is_group and rules.whatsapp_groups == "open":
        return _handoff(c, facts, now, rules, "group", "WhatsApp group (GROUPS=open)", trigger, deferrable=False)
    if c.is_evolution_system:
        decided = on_event(state, HandoffDecided(), now).state
        job = _job(c, "Evolution API system contact", [SetStatus("open")], now, "system", trigger, decided.period)
        return Decision("handoff", job.reason, "system", decided, [job])
    if m.kind != "incoming":
        who = m.sender.name or "an agent (from the phone)"
        reason = f"{who} replied while the conversation was pending"
        return _handoff(c, facts, now, rules, "agent_reply", reason, trigger, deferrable=False, human_took_over=True)
    return _incoming(c, m, facts, now, rules, live, counted)


def decide_from_memory(d: Delivery, facts: Facts, now: datetime, settings: Settings) -> Decision:
    """`decide` without observing anything: what a read or a look-up would tell counts as not shown (the
    operator page's "what the rules say now")."""
    while not isinstance(result := decide(d, facts, now, settings), Decision):
        facts = replace(facts, **_NOT_SHOWN[result])
    return result


_NOT_SHOWN: dict[Need, dict[str, bool]] = {
    Need.QUEUE: {"queued": True},
    Need.DEAD_LETTER: {"dead_letter": False},
    Need.CONVERSATION: {"pending_now": False},
    Need.CONTACT: {"looked_up": True},
}


def _period_of(
    c: Conversation, m: Message, facts: Facts, now: datetime, live: bool
) -> ConversationState | Decision | Need:
    """The state a customer's message in a handed-off period is decided on: that period's, or the next one's when
    the period ended unseen (_undone); or the decision that the message is a late one of the period."""
    undone = _undone(c, m, facts, live)
    if isinstance(undone, Need):
        return undone
    if not undone:
        return facts.state
    if (facts.newest_customer_message or 0) > m.id:
        # chaos seed 46: taken for the next period's first, it was handed off, and so was the real first
        return ignore("a late message of the handed-off period: Chatwoot shows a later one, which begins the next")
    return on_event(facts.state, PendingAgain(min(facts.state.latest_message or 0, m.id - 1)), now).state


def _undone(c: Conversation, m: Message, facts: Facts, live: bool) -> bool | Need:
    """Whether a customer's message in a handed-off period shows that period ended unseen: the handoff's open
    was undone since (an agent resolved it, the customer wrote again) with the events that say so still on their
    way (Chatwoot delivers in no set order), or it never landed (a dead letter). Never while a job still opens
    it. The sweep's listing shows the conversation pending already; a live message asks Chatwoot (4.16+), and
    not for a conversation the bot owns again (the open ended its ownership, so an agent gave it back: those
    events say so) unless the open never landed."""
    if facts.queued is None:
        return Need.QUEUE
    if facts.queued:
        return False
    if not live:
        return True
    fresh = c.updated > facts.state.updated or facts.again  # decided again: the bot remembered this delivery's save
    if not (m.kind == "incoming" and c.status == "pending" and fresh):
        return False
    if c.bot_owned:
        if facts.dead_letter is None:
            return Need.DEAD_LETTER
        if not facts.dead_letter:
            return False
    return Need.CONVERSATION if facts.pending_now is None else facts.pending_now


def _look_up(c: Conversation, m: Message, facts: Facts, settings: Settings, live: bool) -> Need | None:
    """Need.CONTACT when only Chatwoot can tell whether the customer is returning."""
    rules = settings.rules_for(c.inbox_id)
    worth = (
        not facts.looked_up
        and settings.chatwoot_api_token is not None
        and m.kind == "incoming"
        and rules.handoff_returning
        and c.contact.id is not None
        and not given_back(c, facts.state)
        and returning_reason(c, facts) is None
        and (live or not facts.state.contact_known)  # the sweep: unless a decision of this period knew the answer
    )
    return Need.CONTACT if worth else None


def _conversation_event(event: str, c: Conversation, state: ConversationState, now: datetime) -> Decision:
    t = on_event(state, StatusShown(event, c.status, c.updated, c.last_message_id, c.bot_owned), now)
    if t.ignored:
        return ignore(t.ignored)
    record = None
    if Effect.REMEMBER_RESOLVED in t.effects and c.contact.id is not None:
        assignee = c.assignee.id if c.assignee and c.assignee.kind == "user" else None
        record = Resolved(c.display_id, str(t.state.resolved_on), assignee)
    what = "conversation resolved" if c.status == "resolved" else f"conversation is {c.status}"
    return Decision(
        "record", f"{event}: {what}", state=t.state, cancel_timer=Effect.CANCEL_TIMER in t.effects, resolved=record
    )


def _give_back(c: Conversation, m: Message, state: ConversationState, now: datetime) -> Decision:
    t = on_event(state, GivenBack(), now)
    reason = f"{m.sender.name or 'An agent'} gave the conversation back to the bot"
    job = _job(c, reason, [SetStatus("pending")], now, "bot_command", m.id, t.state.period)
    return Decision("pending", job.reason, "bot_command", t.state, [job], cancel_timer=True)


def _incoming(
    c: Conversation, m: Message, facts: Facts, now: datetime, rules: Rules, live: bool, counted: int | None
) -> Decision:
    seen = facts.state.incoming + 1 if live else max(facts.state.incoming, counted or 1)
    state = replace(facts.state, incoming=seen)
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
        jobs.append(_job(c, "greeting", [PublicMessage(greeting)], now, "", m.id, state.period))
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


def operator_handoff(c: Conversation, facts: Facts, now: datetime, settings: Settings, who: str) -> Decision | Need:
    """An administrator's "hand off now" from the operator page, for a conversation Chatwoot shows pending: the
    inbox's handoff, at once, where the webhook would act at all. A handoff waiting for the opening time is
    brought forward; one already queued is not repeated."""
    if not settings.acts_on(c.account_id, c.inbox_id):
        return ignore(f"inbox {c.inbox_id} is not one this bot handles (INBOX_IDS, IGNORE_INBOX_IDS)")
    state = facts.state
    if state.phase is Phase.HANDOFF:
        if facts.queued is None:
            return Need.QUEUE
        if facts.queued:
            return ignore("a handoff is already queued for this conversation")
    if state.phase not in (Phase.BOT, Phase.DEFERRED):  # pending in Chatwoot: a period the bot did not see begin
        state = on_event(state, PendingAgain(state.latest_message), now).state
    reason = f"{who} handed the conversation to humans from the bot's page"
    if state.phase is Phase.DEFERRED:
        reason += " (a handoff waiting for the opening time, brought forward)"
    rules = settings.rules_for(c.inbox_id)
    # the trigger: only the bot's messages after the conversation's last one count as this handoff's
    decision = _handoff(
        c, replace(facts, state=state), now, rules, "operator", reason, c.last_message_id, deferrable=False
    )
    _switch_evolution(decision, c, facts.state, now, settings, c.last_message_id)
    return decision


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
    hours = rules.hours
    deferrable = deferrable and not c.is_group  # a group is only ever opened, at once
    opening = hours.next_open(now) if deferrable and hours and not hours.is_open(now) else None
    t = on_event(facts.state, HandoffDecided(opening.timestamp() if opening else None), now)
    state, cancel = t.state, Effect.CANCEL_TIMER in t.effects
    if opening is None:
        job = _handoff_job(c, facts, now, rules, reason, rule, trigger, returning, human_took_over)
        return Decision("handoff", reason, rule, state, [job], cancel_timer=cancel)
    job = _handoff_job(c, facts, now, rules, f"{reason} (deferred from closed hours)", rule, trigger, returning)
    jobs: list[Job] = []
    period = opening.isoformat()
    if live and rules.away_message and facts.state.away_period != period:
        away = _render(rules.away_message, c, reason)
        jobs.append(_job(c, "away message", [PublicMessage(away)], now, "", trigger, state.period))
        state = replace(state, away_period=period)
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
    period = facts.state.period
    if c.is_group:  # the whole group would read a message or a note: the status change is all it gets
        return _job(c, reason, [SetStatus("open")], now, rule, trigger, period)
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
    return _job(c, reason, steps, now, rule, trigger, period)


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


def _job(
    c: Conversation, reason: str, steps: list[Step], now: datetime, rule: str, trigger: int | None, period: int
) -> Job:
    """`trigger`: the message that led to the job (None for the operator's button); `period`: the conversation's
    pending period the decision was taken in."""
    return Job(
        c.account_id,
        c.display_id,
        reason,
        steps,
        created_at=now.timestamp(),
        rule=rule,
        trigger=trigger,
        decided_at=now.timestamp(),
        period=period,
    )


def _render(template: str, c: Conversation, reason: str) -> str:
    return template.format(name=c.contact.name, reason=reason, conversation_id=c.display_id)


def _adjust_to_hours(due: datetime, rules: Rules) -> datetime:
    hours = rules.hours
    if hours and not hours.is_open(due):
        return hours.next_open(due) or due
    return due
