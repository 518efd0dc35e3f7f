"""The decision core as a function: payload fixture × facts × clock × settings → outcome, rule, steps.

One row per rule, ignore reason and give-back of agentbot/decide.py; a wrong decision fails with the
row's id and one line saying what differed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pytest
from msgspec.structs import replace

from agentbot.actions import (
    AssignAgent,
    AssignTeam,
    DecideAgain,
    EvolutionPause,
    EvolutionSwitch,
    PrivateNote,
    PublicMessage,
    SetPriority,
    SetStatus,
    Step,
)
from agentbot.config import Settings, load
from agentbot.decide import Decision, Need, decide, forward_handoff, operator_handoff
from agentbot.events import Delivery, parse
from agentbot.facts import ConversationState, Facts, Resolved
from agentbot.period import Phase
from tests.fakechatwoot.model import fixture

NOON = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)  # a Wednesday
SUNDAY_NIGHT = datetime(2026, 11, 29, 23, 0, tzinfo=timezone.utc)
MONDAY_9 = datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc).timestamp()
HOURS = {"BUSINESS_HOURS": "mon-fri 09:00-18:00"}
OPEN, PENDING = SetStatus("open"), SetStatus("pending")
AGENT = {"id": 5, "name": "Sam Rivera", "type": "user"}
SAM = {**AGENT, "availability_status": "online"}
BOT = {"id": 7, "name": "Triage Bot", "type": "agent_bot"}
PENDING_MSG = "message_created_incoming_pending"  # bot-owned (4.16+), new customer, message 4711 in #42
REOPENED = "message_created_incoming_reopened"  # not bot-owned, Sam replied before, message 4803
OUTGOING = "message_created_outgoing"  # the bot's own reply in a pending conversation, message 4712
NOTE = "message_created_private_note"  # Sam's private note in an open conversation, message 4715
EVENT_KEYS = {"content", "message_type", "private", "sender", "source_id"}


def settings(**env: str) -> Settings:
    return load(
        {"CHATWOOT_URL": "https://chat.example.com", "CHATWOOT_BOT_TOKEN": "t", "STORE_URL": "memory://", **env},
        env_file=None,
    )


@dataclass
class Case:
    payload: str
    outcome: str | Need  # a Need: the decision asks for that observation first
    rule: str = ""
    jobs: list[list[Step]] = field(default_factory=list)
    timer: tuple[float, list[Step]] | str | None = None  # (due, steps), "cancel" or None
    reason: str = ""  # a part of the decision's reason
    message: dict[str, Any] = field(default_factory=dict)  # changes to the message (or conversation event) body
    conversation: dict[str, Any] = field(default_factory=dict)  # changes to the conversation
    meta: dict[str, Any] = field(default_factory=dict)
    contact: dict[str, Any] = field(default_factory=dict)
    state: ConversationState = field(default_factory=ConversationState)
    previous: Resolved | None = None
    now: datetime = NOON
    env: dict[str, str] = field(default_factory=dict)
    live: bool = True
    waiting_since: float | None = None  # the sweep's
    observed: dict[str, Any] = field(default_factory=dict)  # what was observed (Facts' queued, pending_now, ...)


def delivery(case: Case) -> Delivery:
    body = fixture(case.payload)
    conversation = body.get("conversation", body)
    body.update(case.message)
    conversation.update(case.conversation)
    if "meta" in conversation:
        conversation["meta"].update(case.meta)
        conversation["meta"]["sender"].update(case.contact)
    d = parse(json.dumps(body).encode())
    if case.waiting_since is not None and d.conversation:
        d = replace(d, conversation=replace(d.conversation, waiting_since=case.waiting_since))
    return d


def row(
    case_id: str, payload: str, outcome: str | Need, rule: str = "", jobs: list[list[Step]] | None = None, **more: Any
) -> Any:
    return pytest.param(Case(payload, outcome, rule, jobs or [], **more), id=case_id)


def note(text: str) -> PrivateNote:
    return PrivateNote(text)


def waited(seconds: int) -> str:
    return f"Customer waited {seconds} s in pending"


KEYWORD = {"HANDOFF_KEYWORDS": "human"}
ASKED = 'Customer asked for a person ("human")'
HUMAN = {"content": "a human please"}
DEFERRED = f"{ASKED} (deferred from closed hours)"

# Evolution API (issue 24): the contact's WhatsApp sessions switched in lane "evolution" beside the decision's jobs.
EVOLUTION = {"EVOLUTION_URL": "https://evo.example.com", "EVOLUTION_API_KEY": "k"}
PHONE = {"phone_number": "+55 11 91234-5678"}
JID = "5511912345678@s.whatsapp.net"


N8N = EvolutionPause("n8n", "paused", JID, 3, "Website")


def evo(status: str, jid: str = JID, inbox: str | None = "Website") -> EvolutionSwitch:
    kind = EvolutionPause if status == "paused" else EvolutionSwitch
    return kind("typebot", status, jid, 3, inbox)


CASES = [
    # ---- why a delivery needs nothing, whatever the bot remembers (triage) ----
    row(
        "ignore-unknown-event",
        "webwidget_triggered",
        "ignore",
        reason="webwidget_triggered is not an event the bot acts on",
    ),
    row(
        "ignore-other-inbox", PENDING_MSG, "ignore", env={"INBOX_IDS": "9"}, reason="inbox 3 is not handled by this bot"
    ),
    row("ignore-ignored-inbox", PENDING_MSG, "ignore", env={"IGNORE_INBOX_IDS": "3"}, reason="inbox 3 is not handled"),
    row(
        "ignore-event-while-pending",
        "conversation_updated",
        "ignore",
        message={"status": "pending"},
        reason="conversation_updated with status pending needs nothing",
    ),
    row(
        "ignore-update-without-status-change",
        "conversation_updated",
        "ignore",
        message={"changed_attributes": [{"labels": {"previous_value": [], "current_value": ["vip"]}}]},
        reason="without a status change",
    ),
    row("ignore-message-updated", "message_updated", "ignore", reason="message_updated (receipts and edits)"),
    row("ignore-own-message", OUTGOING, "ignore", reason="the bot's own message"),
    row(
        "ignore-group",
        PENDING_MSG,
        "ignore",
        contact={"identifier": "120363041@g.us"},
        env={"WHATSAPP_GROUPS": "ignore", "HANDOFF_ALL": "true"},
        reason="WhatsApp group (GROUPS=ignore)",
    ),
    row("ignore-private-note", NOTE, "ignore", reason="private note"),
    row(
        "ignore-command-while-pending",
        NOTE,
        "ignore",
        message={"content": "#bot"},
        conversation={"status": "pending"},
        reason="private note",
    ),
    row(
        "ignore-command-from-the-bot", NOTE, "ignore", message={"content": "#bot", "sender": BOT}, reason="own message"
    ),
    row(
        "ignore-not-pending",
        PENDING_MSG,
        "ignore",
        conversation={"status": "open"},
        env={"HANDOFF_ALL": "true"},
        reason="conversation is open, not pending",
    ),
    row(
        "ignore-template-from-nobody",
        PENDING_MSG,
        "ignore",
        message={"message_type": "template", "sender": None},
        reason="template message not sent by a person",
    ),
    row(
        "ignore-agent-reply-when-off",
        OUTGOING,
        "ignore",
        message={"sender": AGENT},
        env={"HANDOFF_ON_AGENT_REPLY": "false"},
        reason="agent reply (HANDOFF_ON_AGENT_REPLY is off)",
    ),
    # ---- why a message needs nothing, by what the bot remembers ----
    row(
        "ignore-already-handed-off",
        PENDING_MSG,
        "ignore",
        state=ConversationState(phase=Phase.HANDOFF),
        observed={"queued": True},
        env=KEYWORD,
        message=HUMAN,
        reason="handoff already decided",
    ),
    row(
        "ignore-late-delivery",
        PENDING_MSG,
        "ignore",
        state=ConversationState(since=4711),
        env=KEYWORD,
        message=HUMAN,
        reason="late delivery",
    ),
    # ---- a message in a handed-off period: what the decision needs observed first ----
    row(
        "handed-off-asks-whether-a-queued-job-still-opens-it",
        PENDING_MSG,
        Need.QUEUE,
        state=ConversationState(phase=Phase.HANDOFF),
        env=KEYWORD,
        message=HUMAN,
    ),
    row(
        "handed-off-nothing-queued-bot-owned-asks-for-a-dead-letter",
        PENDING_MSG,
        Need.DEAD_LETTER,
        state=ConversationState(phase=Phase.HANDOFF),
        observed={"queued": False},
        env=KEYWORD,
        message=HUMAN,
    ),
    row(
        "handed-off-nothing-queued-bot-owned-no-dead-letter-is-heard",
        PENDING_MSG,
        "ignore",
        state=ConversationState(phase=Phase.HANDOFF),
        observed={"queued": False, "dead_letter": False},
        env=KEYWORD,
        message=HUMAN,
        reason="handoff already decided",
    ),
    row(
        "handed-off-nothing-queued-asks-chatwoot-whether-it-is-pending",
        REOPENED,
        Need.CONVERSATION,
        state=ConversationState(phase=Phase.HANDOFF),
        observed={"queued": False},
        env=KEYWORD,
        message=HUMAN,
    ),
    row(
        "handed-off-pending-again-begins-a-period-and-decides",
        REOPENED,
        "handoff",
        "returning",
        [[OPEN, note("Returning customer: conversation #42 had an agent reply on 2026-09-30")]],
        state=ConversationState(phase=Phase.HANDOFF),
        observed={"queued": False, "pending_now": True},
        env=KEYWORD,
        message=HUMAN,
    ),
    row(
        "handed-off-pending-again-with-a-later-customer-message-shown-is-a-late-one-of-the-period",  # chaos seed 46
        REOPENED,
        "ignore",
        state=ConversationState(phase=Phase.HANDOFF),
        observed={"queued": False, "pending_now": True, "newest_customer_message": 4804},
        env=KEYWORD,
        message=HUMAN,
        reason="a late message of the handed-off period",
    ),
    row(
        "handed-off-pending-again-showing-this-message-as-the-latest-begins-a-period",
        REOPENED,
        "handoff",
        "returning",
        [[OPEN, note("Returning customer: conversation #42 had an agent reply on 2026-09-30")]],
        state=ConversationState(phase=Phase.HANDOFF),
        observed={"queued": False, "pending_now": True, "newest_customer_message": 4803},  # this very message
        env=KEYWORD,
        message=HUMAN,
    ),
    row(
        "returning-asks-for-a-look-up-with-a-user-token",
        PENDING_MSG,
        Need.CONTACT,
        env={"CHATWOOT_API_TOKEN": "u"},
    ),
    # ---- conversation events: bookkeeping ----
    row(
        "ignore-older-event",
        "conversation_opened",
        "ignore",
        state=ConversationState(updated=2e9, incoming=1),
        reason="older than what the bot already acted on",
    ),
    row("ignore-open-outside-a-period", "conversation_opened", "ignore", reason="with status open needs nothing"),
    row("record-resolved", "conversation_resolved", "record", timer="cancel", reason="conversation resolved"),
    row(
        "record-opened-in-a-period",
        "conversation_opened",
        "record",
        timer="cancel",
        state=ConversationState(incoming=1),
        reason="conversation is open",
    ),
    row(
        "record-snoozed-in-a-period",
        "conversation_status_changed",
        "record",
        message={"status": "snoozed"},
        timer="cancel",
        state=ConversationState(timer_due=1.0),
        reason="conversation is snoozed",
    ),
    # ---- give-backs ----
    row(
        "giveback-bot-command",
        NOTE,
        "pending",
        "bot_command",
        [[PENDING]],
        message={"content": " #bot "},
        timer="cancel",
        reason="Sam Rivera gave the conversation back to the bot",
    ),
    row(
        "giveback-custom-command",
        NOTE,
        "pending",
        "bot_command",
        [[PENDING]],
        message={"content": "!robot"},
        env={"BOT_COMMAND": "!robot"},
        timer="cancel",
    ),
    row(
        "giveback-by-assignment-is-not-returning",
        REOPENED,
        "keep",
        meta={"assignee": BOT, "assignee_type": "AgentBot"},
        state=ConversationState(human_owned=True),
    ),
    row("giveback-by-command-is-not-returning", REOPENED, "keep", state=ConversationState(given_back=True)),
    row(
        "giveback-other-rules-still-apply",
        REOPENED,
        "handoff",
        "keyword",
        [[OPEN, note(ASKED)]],
        state=ConversationState(given_back=True),
        env=KEYWORD,
        message=HUMAN,
    ),
    row(
        "bot-owned-since-creation-is-returning",
        REOPENED,
        "handoff",
        "returning",
        meta={"assignee": BOT, "assignee_type": "AgentBot"},
        reason="had an agent reply on 2026-09-30",
        jobs=[[OPEN, note("Returning customer: conversation #42 had an agent reply on 2026-09-30")]],
    ),
    # ---- rules that hand off ----
    row(
        "all",
        PENDING_MSG,
        "handoff",
        "all",
        [[OPEN, note("Every conversation goes to humans (HANDOFF_ALL)")]],
        env={"HANDOFF_ALL": "true"},
    ),
    row(
        "returning-resolved-before",
        PENDING_MSG,
        "handoff",
        "returning",
        [[OPEN, note("Returning customer: conversation #42 was resolved on 2026-11-20")]],
        state=ConversationState(resolved_on="2026-11-20"),
    ),
    row(
        "returning-agent-replied",
        REOPENED,
        "handoff",
        "returning",
        [[OPEN, note("Returning customer: conversation #42 had an agent reply on 2026-09-30")]],
    ),
    row(
        "returning-assigned",
        PENDING_MSG,
        "handoff",
        "returning",
        [[OPEN, note("Returning customer: conversation #42 is assigned to Sam Rivera")]],
        meta={"assignee": SAM, "assignee_type": "User"},
    ),
    row(
        "returning-previous-conversation",
        PENDING_MSG,
        "handoff",
        "returning",
        [
            [
                OPEN,
                AssignAgent(6, "Chatwoot's auto-assignment"),
                note("Returning customer: conversation #30 was resolved on 2026-11-01"),
            ]
        ],
        previous=Resolved(30, "2026-11-01", 6),
    ),
    row(
        "returning-found-in-chatwoot",
        PENDING_MSG,
        "handoff",
        "returning",
        [
            [
                AssignTeam(2),
                OPEN,
                AssignAgent(6, "team 2"),
                note("Returning customer: conversation #30 was resolved on 2026-11-01 (found in Chatwoot)"),
            ]
        ],
        previous=Resolved(30, "2026-11-01", 6, "chatwoot"),
        env={"HANDOFF_TEAM_ID": "2"},
    ),
    row(
        "returning-agent-offline",
        REOPENED,
        "handoff",
        "returning",
        [
            [
                AssignAgent(None),
                OPEN,
                note(
                    "Returning customer: conversation #42 had an agent reply on 2026-09-30. "
                    "Sam Rivera is offline; handed to Chatwoot's auto-assignment instead."
                ),
            ]
        ],
        meta={"assignee": {**SAM, "availability_status": "offline"}},
    ),
    row(
        "returning-message",
        REOPENED,
        "handoff",
        "returning",
        [[OPEN, PublicMessage("Welcome back Maria Lopez")]],
        env={"RETURNING_MESSAGE": "Welcome back {name}", "HANDOFF_MESSAGE": "Hello", "HANDOFF_NOTE": "false"},
    ),
    row("returning-off", REOPENED, "keep", env={"HANDOFF_RETURNING": "false"}),
    row(
        "label",
        PENDING_MSG,
        "handoff",
        "label",
        [[OPEN, note('Conversation has the label "VIP"')]],
        conversation={"labels": ["VIP"]},
        env={"HANDOFF_LABELS": "vip"},
    ),
    row(
        "attribute",
        PENDING_MSG,
        "handoff",
        "attribute",
        [[OPEN, note("Customer attribute plan=Gold")]],
        contact={"custom_attributes": {"plan": "Gold"}},
        env={"HANDOFF_ATTRIBUTES": "plan=gold"},
    ),
    row(
        "language-handed-off",
        PENDING_MSG,
        "handoff",
        "language",
        [[OPEN, note('Customer language "en" goes to humans')]],
        env={"HANDOFF_LANGUAGES": "en"},
    ),
    row(
        "language-not-kept",
        PENDING_MSG,
        "handoff",
        "language",
        [[OPEN, note('Customer language "en" is not one the bot answers (pt, es)')]],
        env={"KEEP_LANGUAGES": "pt,es"},
    ),
    row("language-kept", PENDING_MSG, "keep", env={"KEEP_LANGUAGES": "en"}),
    row("keyword", PENDING_MSG, "handoff", "keyword", [[OPEN, note(ASKED)]], env=KEYWORD, message=HUMAN),
    row(
        "keyword-every-step",
        PENDING_MSG,
        "handoff",
        "keyword",
        [[AssignTeam(2), SetPriority("high"), OPEN, AssignAgent(5), note(ASKED), PublicMessage("Thanks Maria Lopez")]],
        env={
            **KEYWORD,
            "HANDOFF_TEAM_ID": "2",
            "HANDOFF_PRIORITY": "high",
            "HANDOFF_ASSIGNEE_ID": "5",
            "HANDOFF_MESSAGE": "Thanks {name}",
        },
        message=HUMAN,
    ),
    row(
        "keyword-assigns-before-opening-when-not-bot-owned",
        PENDING_MSG,
        "handoff",
        "keyword",
        [[AssignAgent(5), OPEN]],
        meta={"assignee": None, "assignee_type": None},
        env={**KEYWORD, "HANDOFF_ASSIGNEE_ID": "5", "HANDOFF_NOTE": "false"},
        message=HUMAN,
    ),
    row(
        "keyword-cancels-the-timer",
        PENDING_MSG,
        "handoff",
        "keyword",
        [[OPEN, note(ASKED)]],
        env=KEYWORD,
        message=HUMAN,
        state=ConversationState(timer_due=NOON.timestamp() + 60),
        timer="cancel",
    ),
    row(
        "messages",
        PENDING_MSG,
        "handoff",
        "messages",
        [[OPEN, note("Customer sent 3 messages while pending")]],
        state=ConversationState(incoming=2),
        env={"HANDOFF_AFTER_MESSAGES": "3"},
    ),
    row(
        "messages-not-yet",
        PENDING_MSG,
        "keep",
        state=ConversationState(incoming=1),
        env={"HANDOFF_AFTER_MESSAGES": "3"},
    ),
    row(
        "group-opened",
        PENDING_MSG,
        "handoff",
        "group",
        [[OPEN]],
        contact={"identifier": "120363041@g.us"},
        env={"WHATSAPP_GROUPS": "open", "HANDOFF_MESSAGE": "Hi", "HANDOFF_TEAM_ID": "2", **HOURS},
        now=SUNDAY_NIGHT,
    ),
    row(
        "group-by-the-rules-gets-the-status-only",
        PENDING_MSG,
        "handoff",
        "keyword",
        [[OPEN]],
        contact={"identifier": "120363041@g.us"},
        env={**KEYWORD, "HANDOFF_MESSAGE": "Hi"},
        message=HUMAN,
    ),
    row(
        "evolution-system-contact",
        PENDING_MSG,
        "handoff",
        "system",
        [[OPEN]],
        contact={"phone_number": "+123456"},
        reason="Evolution API system contact",
    ),
    row(
        "agent-reply",
        OUTGOING,
        "handoff",
        "agent_reply",
        [[OPEN, note("Sam Rivera replied while the conversation was pending")]],
        message={"sender": AGENT},
        env={"HANDOFF_MESSAGE": "Hi", "HANDOFF_TEAM_ID": "2", **HOURS},
        now=SUNDAY_NIGHT,
    ),
    row(
        "agent-reply-from-the-phone",
        OUTGOING,
        "handoff",
        "agent_reply",
        [[OPEN, note("an agent (from the phone) replied while the conversation was pending")]],
        message={"sender": None, "source_id": "WAID:3EB0C767D26A1D5B"},
    ),
    row(
        "wait-found-by-the-sweep",
        PENDING_MSG,
        "handoff",
        "wait",
        [[OPEN, note(waited(300))]],
        live=False,
        waiting_since=NOON.timestamp() - 301,
        env={"HANDOFF_AFTER_SECONDS": "300"},
    ),
    # ---- closed hours ----
    row(
        "defer-with-away-message",
        PENDING_MSG,
        "defer",
        "keyword",
        [[PublicMessage("Closed, Maria Lopez")]],
        timer=(MONDAY_9, [OPEN, note(DEFERRED)]),
        env={**KEYWORD, **HOURS, "AWAY_MESSAGE": "Closed, {name}"},
        message=HUMAN,
        now=SUNDAY_NIGHT,
        reason="outside business hours, deferred to 2026-11-30 09:00 UTC",
    ),
    row(
        "defer-away-message-once-per-closing",
        PENDING_MSG,
        "defer",
        "keyword",
        timer=(MONDAY_9, [OPEN, note(DEFERRED)]),
        env={**KEYWORD, **HOURS, "AWAY_MESSAGE": "Closed"},
        message=HUMAN,
        now=SUNDAY_NIGHT,
        state=ConversationState(away_period="2026-11-30T09:00:00+00:00"),
    ),
    row(
        "defer-no-away-message-from-the-sweep",
        PENDING_MSG,
        "defer",
        "keyword",
        timer=(MONDAY_9, [OPEN, note(DEFERRED)]),
        env={**KEYWORD, **HOURS, "AWAY_MESSAGE": "Closed"},
        message=HUMAN,
        now=SUNDAY_NIGHT,
        live=False,
    ),
    # ---- Evolution's bot sessions (EVOLUTION_URL): paused at a handoff, twice; opened at a give-back; closed ----
    row(
        "evolution-handoff-pauses-now-and-again",
        PENDING_MSG,
        "handoff",
        "keyword",
        [[OPEN, note(ASKED)], [evo("paused")], [evo("paused")]],
        env={**KEYWORD, **EVOLUTION},
        message=HUMAN,
        contact=PHONE,
    ),
    row(
        "evolution-each-integration",
        PENDING_MSG,
        "handoff",
        "keyword",
        [[OPEN, note(ASKED)], [evo("paused"), N8N], [evo("paused"), N8N]],
        env={**KEYWORD, **EVOLUTION, "EVOLUTION_BOTS": "typebot,N8N"},
        message=HUMAN,
        contact=PHONE,
    ),
    row(
        "evolution-group-jid",
        PENDING_MSG,
        "handoff",
        "group",
        [[OPEN], [evo("paused", "120363041@g.us")], [evo("paused", "120363041@g.us")]],
        env={"WHATSAPP_GROUPS": "open", **EVOLUTION},
        contact={"identifier": "120363041@g.us"},
    ),
    row(
        "evolution-agent-reply-pauses",
        OUTGOING,
        "handoff",
        "agent_reply",
        [[OPEN, note("Sam Rivera replied while the conversation was pending")], [evo("paused")], [evo("paused")]],
        message={"sender": AGENT},
        env=EVOLUTION,
        contact=PHONE,
    ),
    row(
        "evolution-unset-pauses-nothing",
        PENDING_MSG,
        "handoff",
        "keyword",
        [[OPEN, note(ASKED)]],
        env=KEYWORD,
        message=HUMAN,
        contact=PHONE,
    ),
    row(
        "evolution-website-contact-has-no-jid",
        PENDING_MSG,
        "handoff",
        "keyword",
        [[OPEN, note(ASKED)]],
        env={**KEYWORD, **EVOLUTION},
        message=HUMAN,
    ),
    row(
        "evolution-system-contact-is-not-switched",
        PENDING_MSG,
        "handoff",
        "system",
        [[OPEN]],
        env=EVOLUTION,
        contact={"phone_number": "+123456"},
    ),
    row("evolution-keep-switches-nothing", PENDING_MSG, "keep", env=EVOLUTION, contact=PHONE),
    row(
        "evolution-deferred-handoff-pauses-nothing-yet",
        PENDING_MSG,
        "defer",
        "keyword",
        timer=(MONDAY_9, [OPEN, note(DEFERRED)]),
        env={**KEYWORD, **HOURS, **EVOLUTION},
        message=HUMAN,
        now=SUNDAY_NIGHT,
        contact=PHONE,
    ),
    row(
        "evolution-timers-open-pauses-when-seen",
        "conversation_opened",
        "record",
        jobs=[[evo("paused", inbox=None)], [evo("paused", inbox=None)]],
        timer="cancel",
        state=ConversationState(phase=Phase.DEFERRED, timer_due=MONDAY_9),
        env=EVOLUTION,
        contact=PHONE,
    ),
    row(
        "evolution-an-agent-opening-a-pending-period-pauses",
        "conversation_opened",
        "record",
        jobs=[[evo("paused", inbox=None)], [evo("paused", inbox=None)]],
        timer="cancel",
        state=ConversationState(incoming=1),
        env=EVOLUTION,
        contact=PHONE,
    ),
    row(
        "evolution-the-handoffs-own-open-pauses-nothing-more",
        "conversation_opened",
        "record",
        timer="cancel",
        state=ConversationState(phase=Phase.HANDOFF),
        env=EVOLUTION,
        contact=PHONE,
    ),
    row(
        "evolution-giveback-opens",
        NOTE,
        "pending",
        "bot_command",
        [[PENDING], [evo("opened")]],
        message={"content": "#bot"},
        timer="cancel",
        env=EVOLUTION,
        contact=PHONE,
    ),
    row(
        "evolution-giveback-by-assignment-opens",
        REOPENED,
        "keep",
        jobs=[[evo("opened")]],
        meta={"assignee": BOT, "assignee_type": "AgentBot"},
        state=ConversationState(human_owned=True),
        env=EVOLUTION,
        contact=PHONE,
    ),
    row(
        "evolution-resolve-closes",
        "conversation_resolved",
        "record",
        jobs=[[evo("closed", inbox=None)]],
        timer="cancel",
        env=EVOLUTION,
        contact=PHONE,
    ),
    row(
        "evolution-resolve-seen-already-closes-nothing",
        "conversation_status_changed",
        "record",
        message={"status": "resolved"},
        timer="cancel",
        state=ConversationState(status="resolved"),
        env=EVOLUTION,
        contact=PHONE,
    ),
    row(
        "evolution-resolve-keep",
        "conversation_resolved",
        "record",
        timer="cancel",
        env={**EVOLUTION, "EVOLUTION_ON_RESOLVE": "keep"},
        contact=PHONE,
    ),
    row(
        "evolution-snooze-switches-nothing",
        "conversation_status_changed",
        "record",
        message={"status": "snoozed"},
        timer="cancel",
        state=ConversationState(timer_due=1.0),
        env=EVOLUTION,
        contact=PHONE,
    ),
    # ---- no rule fired: the conversation stays pending ----
    row("keep", PENDING_MSG, "keep", reason="no rule fired"),
    row(
        "keep-greets",
        PENDING_MSG,
        "keep",
        jobs=[[PublicMessage("Hi Maria Lopez")]],
        env={"GREETING_MESSAGE": "Hi {name}"},
    ),
    row("keep-greets-once", PENDING_MSG, "keep", state=ConversationState(greeted=True), env={"GREETING_MESSAGE": "Hi"}),
    row("keep-sweep-does-not-greet", PENDING_MSG, "keep", live=False, env={"GREETING_MESSAGE": "Hi"}),
    row(
        "keep-sets-a-timer",
        PENDING_MSG,
        "keep",
        timer=(NOON.timestamp() + 300, [OPEN, note(waited(300))]),
        env={"HANDOFF_AFTER_SECONDS": "300"},
    ),
    row(
        "keep-timer-waits-for-opening-hours",
        PENDING_MSG,
        "keep",
        timer=(MONDAY_9, [OPEN, note(waited(300))]),
        env={"HANDOFF_AFTER_SECONDS": "300", **HOURS},
        now=SUNDAY_NIGHT,
    ),
    row(
        "keep-timer-already-set",
        PENDING_MSG,
        "keep",
        state=ConversationState(timer_due=NOON.timestamp() + 10),
        env={"HANDOFF_AFTER_SECONDS": "300"},
    ),
    row(
        "keep-sweep-timer-from-waiting-since",
        PENDING_MSG,
        "keep",
        live=False,
        waiting_since=NOON.timestamp() - 100,
        timer=(NOON.timestamp() + 200, [OPEN, note(waited(300))]),
        env={"HANDOFF_AFTER_SECONDS": "300"},
    ),
]


def outcome(decision: Decision) -> tuple[Any, ...]:
    timer: tuple[float, list[Step]] | str | None = None
    if decision.timer:
        timer = (decision.timer[0], decision.timer[1].steps)
    elif decision.cancel_timer:
        timer = "cancel"
    return decision.outcome, decision.rule, [job.steps for job in decision.jobs], timer


@pytest.mark.parametrize("case", CASES)
def test_decision(case: Case) -> None:
    facts = Facts(case.state, case.previous, **case.observed)
    decision = decide(delivery(case), facts, case.now, settings(**case.env), live=case.live)
    if isinstance(decision, Need):
        assert decision == case.outcome, f"needs {decision}, want {case.outcome}"
        return
    got, want = outcome(decision), (case.outcome, case.rule, case.jobs, case.timer)
    assert got == want, f"got {got}, want {want} ({decision.reason})"
    assert case.reason in decision.reason, f"reason {decision.reason!r} lacks {case.reason!r}"


def test_every_job_names_the_message_that_led_to_it() -> None:
    case = Case(PENDING_MSG, "keep", env={"GREETING_MESSAGE": "Hi", "HANDOFF_AFTER_SECONDS": "60"})
    decision = decide(delivery(case), Facts(), NOON, settings(**case.env))
    assert decision.timer is not None
    assert [job.trigger for job in [*decision.jobs, decision.timer[1]]] == [4711, 4711]
    assert all(job.reason and job.decided_at == NOON.timestamp() for job in decision.jobs)


def test_the_operators_button_hands_off_at_once_after_the_latest_message() -> None:
    c = delivery(Case(PENDING_MSG, "")).conversation
    assert c is not None
    decision = operator_handoff(c, Facts(), SUNDAY_NIGHT, settings(**HOURS, HANDOFF_TEAM_ID="2"), "Ana")
    reason = "Ana handed the conversation to humans from the bot's page"
    assert outcome(decision) == ("handoff", "operator", [[AssignTeam(2), OPEN, note(reason)]], None)
    assert decision.jobs[0].trigger == c.last_message_id is not None  # only later echoes count as its messages


def test_a_resolve_remembers_the_contacts_conversation_and_its_agent() -> None:
    decision = decide(delivery(Case("conversation_resolved", "")), Facts(), NOON, settings())
    assert decision.resolved == Resolved(42, "2026-11-25", 5)
    assert decision.state is not None and decision.state.resolved_on == "2026-11-25"


def test_evolution_jobs_queue_in_their_lane_and_the_second_pause_waits() -> None:
    case = Case(PENDING_MSG, "handoff", env={**KEYWORD, **EVOLUTION}, message=HUMAN, contact=PHONE)
    decision = decide(delivery(case), Facts(), NOON, settings(**case.env))
    assert isinstance(decision, Decision)
    chatwoot, first, second = decision.jobs
    assert (chatwoot.lane, first.lane, second.lane) == ("", "evolution", "evolution")
    assert first.not_before == 0 and second.not_before == NOON.timestamp() + 10
    assert first.period == second.period == decision.state.period and first.trigger == 4711
    assert "Evolution typebot paused 5511912345678@s.whatsapp.net, 10 s after the decision" in decision.describe()


def test_the_operators_button_pauses_evolutions_bot_too() -> None:
    case = Case(PENDING_MSG, "", contact=PHONE)
    c = delivery(case).conversation
    assert c is not None
    decision = operator_handoff(c, Facts(), NOON, settings(**EVOLUTION), "Ana")
    assert outcome(decision)[2][1:] == [[evo("paused")], [evo("paused")]]


def test_a_give_back_opens_in_the_new_period_and_a_resolve_closes_in_its_own() -> None:
    before = ConversationState(period=4, phase=Phase.HUMANS, status="open")
    back = decide(
        delivery(Case(NOTE, "", message={"content": "#bot"}, contact=PHONE)), Facts(before), NOON, settings(**EVOLUTION)
    )
    assert isinstance(back, Decision) and [j.period for j in back.jobs] == [5, 5]
    resolved = decide(
        delivery(Case("conversation_resolved", "", contact=PHONE)), Facts(before), NOON, settings(**EVOLUTION)
    )
    assert isinstance(resolved, Decision) and [j.period for j in resolved.jobs] == [4]


# ---- forwarding to the team's own bot (relay.py): which deliveries are queued for it, where, and when ----
FORWARD = {"FORWARD_URL": "https://n8n.example.com/webhook/secret-path"}
LATER = 1_790_770_000.0  # after every fixture's updated_at


@dataclass
class Forwarded:
    payload: str
    kind: str | None  # the step's op ("forward": a message's; "forward_event": an event's), None: not forwarded
    outcome: str = ""  # the decision's, unchanged by forwarding
    lane: str = "forward"
    order: float = 0.0
    period: int = 0
    state: ConversationState = field(default_factory=ConversationState)
    observed: dict[str, Any] = field(default_factory=dict)
    message: dict[str, Any] = field(default_factory=dict)
    conversation: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=lambda: FORWARD)


def fwd(case_id: str, payload: str, kind: str | None, outcome: str = "", **more: Any) -> Any:
    return pytest.param(Forwarded(payload, kind, outcome, **more), id=case_id)


FORWARDS = [
    fwd("a-customer-message-the-rules-keep", PENDING_MSG, "forward", "keep", order=4711),
    fwd("the-message-that-hands-off-is-not", PENDING_MSG, None, "handoff", message=HUMAN, env={**FORWARD, **KEYWORD}),
    fwd(
        "a-message-after-the-handoff-was-decided-is-not",
        PENDING_MSG,
        None,
        "ignore",
        state=ConversationState(phase=Phase.HANDOFF),
        observed={"queued": True},
    ),
    fwd(
        "a-message-while-a-handoff-waits-for-the-opening-time-is-not",
        PENDING_MSG,
        None,
        "ignore",
        state=ConversationState(phase=Phase.DEFERRED, timer_due=MONDAY_9),
        observed={"queued": True},
    ),
    fwd("a-message-in-an-open-conversation-is-not", PENDING_MSG, None, "ignore", conversation={"status": "open"}),
    fwd(
        "a-late-message-of-a-conversation-the-bot-saw-opened-since-is-not",
        PENDING_MSG,
        None,
        "ignore",
        state=ConversationState(phase=Phase.HUMANS, status="open", updated=LATER, since=4711),
    ),
    fwd(
        "the-first-message-of-a-new-period-carries-that-period",
        PENDING_MSG,
        "forward",
        "keep",
        order=4711,
        period=3,
        state=ConversationState(period=2, phase=Phase.CLOSED, status="resolved", since=4700),
    ),
    fwd("the-bots-own-reply-the-rules-ignore", OUTGOING, "forward", "ignore", order=4712),
    fwd("a-receipt-while-pending", "message_updated", "forward", "ignore", order=4713),
    fwd(
        "a-resolve-goes-after-the-message-it-followed", "conversation_resolved", "forward_event", "record", order=4720.5
    ),
    fwd(
        "an-update-while-pending",
        "conversation_updated",
        "forward_event",
        "ignore",
        message={"status": "pending"},
        order=4714.5,
    ),
    fwd(
        "a-widget-event-queues-in-its-contacts-lane",
        "webwidget_triggered",
        "forward_event",
        "ignore",
        lane="forward-contact-58",
    ),
    fwd("nothing-without-a-forward-url", PENDING_MSG, None, "keep", env={}),
]


@pytest.mark.parametrize("case", FORWARDS)
def test_where_forwards_are_queued(case: Forwarded) -> None:
    c = Case(case.payload, "", message=case.message, conversation=case.conversation)
    body = json.dumps(_body(c)).encode()
    facts = Facts(case.state, **case.observed)
    decision = decide(parse(body), facts, NOON, settings(**case.env), body=body)
    assert isinstance(decision, Decision) and decision.outcome == case.outcome, decision
    forwards = [job for job in decision.jobs if job.lane.startswith("forward")]
    if case.kind is None:
        assert forwards == [], forwards
        return
    [job] = forwards
    [step] = job.steps
    assert (step.op, job.lane, job.order, job.period) == (case.kind, case.lane, case.order, case.period)
    assert step.body == body.decode() and job.not_before == NOON.timestamp() + 0.5  # held for an earlier message


def _body(case: Case) -> dict[str, Any]:
    body = fixture(case.payload)
    body.update(case.message)
    body.get("conversation", body).update(case.conversation)
    return body


HANDED = "Your bot asked for a person: wants a refund"


@pytest.mark.parametrize(
    "state, period, want",
    [
        pytest.param(ConversationState(period=2), 2, "handoff", id="still-the-bots-hands-off"),
        pytest.param(ConversationState(period=2, phase=Phase.HUMANS), 2, "ignore", id="already-with-humans"),
        pytest.param(ConversationState(period=2, phase=Phase.HANDOFF), 2, "ignore", id="a-handoff-already-decided"),
        pytest.param(ConversationState(period=2, phase=Phase.DEFERRED), 2, "ignore", id="a-handoff-deferred"),
        pytest.param(ConversationState(period=3), 2, "ignore", id="a-later-period-began"),
    ],
)
def test_the_team_bots_handoff_only_while_the_conversation_is_the_bots(state, period, want) -> None:
    c = delivery(Case(PENDING_MSG, "")).conversation
    assert c is not None
    decision = forward_handoff(c, Facts(state), NOON, settings(HANDOFF_TEAM_ID="2"), period, HANDED)
    assert decision.outcome == want, decision.reason
    if want == "handoff":
        assert outcome(decision) == ("handoff", "forward", [[AssignTeam(2), OPEN, note(HANDED)]], None)


# ---- a message swallowed while a handoff was queued is decided again once it ended (chaos seed 272) ----
H, D = Phase.HANDOFF, Phase.DEFERRED
FIRED = "deferred, its timer fired"  # a deferred handoff whose open job is queued now (a review's case)


@pytest.mark.parametrize(
    "payload, phase, observed, again",
    [
        pytest.param(
            REOPENED, H, {"queued": True}, True, id="swallowed-while-an-open-is-queued-is-decided-again-later"
        ),
        pytest.param(REOPENED, H, {"queued": True, "again": True}, False, id="decided-again-not-queued-a-third-time"),
        pytest.param(REOPENED, H, {"queued": False, "pending_now": False}, False, id="swallowed-with-nothing-queued"),
        pytest.param(PENDING_MSG, H, {"queued": True}, False, id="still-the-bots-so-its-open-has-not-landed"),
        pytest.param(REOPENED, D, {"queued": True}, False, id="a-deferred-handoffs-timer-has-opened-nothing"),
        pytest.param(REOPENED, FIRED, {"queued": True}, True, id="a-deferred-handoffs-fired-timer-may-have-opened-it"),
    ],
)
def test_a_message_a_queued_handoff_was_to_catch_is_decided_again(
    payload: str, phase: Phase | str, observed: dict, again: bool
) -> None:
    timer_due = {D: MONDAY_9, FIRED: NOON.timestamp() - 60}.get(phase)
    state = ConversationState(phase=D if phase == FIRED else Phase(phase), timer_due=timer_due)
    case = Case(payload, "ignore", state=state, env=KEYWORD, message=HUMAN)
    d = delivery(case)
    decision = decide(d, Facts(case.state, **observed), NOON, settings(**KEYWORD), body=b'{"event": "message_created"}')
    assert decision.outcome == "ignore" and "handoff" in decision.reason, decision.reason
    steps = [job.steps for job in decision.jobs]
    assert steps == ([[DecideAgain('{"event": "message_created"}', d.delivery_id)]] if again else [])


@pytest.mark.parametrize(
    "observed, outcome",
    [
        pytest.param({"queued": False}, Need.CONVERSATION, id="decided-again-asks-chatwoot-though-the-save-is-known"),
        pytest.param({"queued": False, "pending_now": True}, "handoff", id="decided-again-pending-begins-a-period"),
        pytest.param({"queued": False, "pending_now": False}, "ignore", id="decided-again-open-is-the-handoffs"),
    ],
)
def test_a_message_decided_again_asks_chatwoot_whether_it_began_a_period(observed: dict, outcome: Any) -> None:
    case = Case(REOPENED, "", env=KEYWORD, message=HUMAN)
    d = delivery(case)
    assert d.conversation is not None
    state = ConversationState(phase=Phase.HANDOFF, updated=d.conversation.updated)  # this delivery's save, heard
    decision = decide(d, Facts(state, again=True, **observed), NOON, settings(**KEYWORD))
    assert (decision if isinstance(decision, Need) else decision.outcome) == outcome
