"""Which Evolution switches a decision queues: jobs in lane "evolution", beside the decision's Chatwoot jobs and
committed with them. Pure: no I/O (one DEBUG line when the contact has no WhatsApp JID).

A handoff pauses (now, and again SECOND_PAUSE seconds later: the message that caused it may start a new session
a moment after the first pause; a timer's handoff once the bot sees its open), a give-back opens, a resolve closes
(EVOLUTION_ON_RESOLVE). The guard drops a pause once its period ended and any switch once a later period began
(actions.EvolutionPause, EvolutionSwitch).
"""

from __future__ import annotations

from datetime import datetime
from itertools import groupby

from loguru import logger

from .actions import EvolutionPause, EvolutionSwitch, Job
from .config import Settings
from .events import Conversation
from .evolution import Switch, Transition, conversation_jid, switches
from .facts import ConversationState
from .period import Phase

LANE = "evolution"


def transition_of(outcome: str, rule: str, c: Conversation, before: ConversationState) -> Transition | None:
    """The lifecycle transition a decision (its outcome and rule) is, as far as Evolution's sessions care.
    `before` is what the bot remembered before the delivery."""
    if outcome == "handoff":
        return Transition.HANDOFF
    if outcome == "record" and c.status == "open" and before.in_period and before.phase is not Phase.HANDOFF:
        # A pending period ended open without a handoff queued at once: a timer's (HANDOFF_AFTER_SECONDS, the
        # next opening time: a timer holds its one Chatwoot job) or an agent's. Paused once the bot sees it open.
        return Transition.HANDOFF
    if outcome == "pending" and rule == "bot_command":
        return Transition.GIVE_BACK
    if outcome in ("keep", "defer") and c.bot_owned and before.human_owned and not before.given_back:
        return Transition.GIVE_BACK  # Chatwoot 4.16+: an agent assigned the bot; the bot hears of it now
    if outcome == "record" and c.status == "resolved" and before.status != "resolved":
        return Transition.RESOLVE  # once per resolve: Chatwoot sends two events for the same save
    return None


def evolution_jobs(
    transition: Transition | None,
    c: Conversation,
    settings: Settings,
    now: datetime,
    period: int,
    reason: str,
    rule: str,
    trigger: int | None,
) -> list[Job]:
    """The jobs `transition` queues for the conversation's contact: one per delay, a step per EVOLUTION_BOTS."""
    if transition is None or settings.evolution_url is None:
        return []
    jid = conversation_jid(c)
    if jid is None:
        logger.debug("conversation {}: the contact has no WhatsApp JID: nothing to switch in Evolution", c.key)
        return []
    at = now.timestamp()
    planned = switches(transition, jid, settings.evolution_bots, settings.evolution_on_resolve, True)
    return [
        Job(
            c.account_id,
            c.display_id,
            reason,
            [_step(s, c) for s in group],
            created_at=at,
            rule=rule,
            trigger=trigger,
            decided_at=at,
            period=period,
            lane=LANE,
            not_before=at + delay if delay else 0.0,
        )
        for delay, group in groupby(planned, key=lambda s: s.delay)
    ]


def _step(s: Switch, c: Conversation) -> EvolutionSwitch:
    kind = EvolutionPause if s.status == "paused" else EvolutionSwitch
    return kind(s.integration, s.status, s.remote_jid, c.inbox_id, c.inbox_name)
