"""Gathers what guard.needs asks for before a step: the bot's memory, a conversation read, the step's echo, the
latest messages. I/O only: what the evidence means is guard.py's."""

from __future__ import annotations

from loguru import logger

from .actions import Job, PrivateNote, Step, echo_text, posted_text
from .chatwoot import Chatwoot, ChatwootError, Unreadable
from .events import Listed, Message
from .guard import Look, Seen, posted, posts_after, unheard
from .period import period_of
from .store import Store


class Observer:
    def __init__(self, store: Store, chatwoot: Chatwoot, reader_token: str | None):
        self.store, self.chatwoot = store, chatwoot
        self.reader_token = reader_token  # a user token (CHATWOOT_API_TOKEN): may read a conversation's messages

    async def observe(self, job: Job, step: Step, looks: frozenset[Look]) -> tuple[int, Seen]:
        """The job's period and what was seen; a ChatwootError when a read failed and is worth trying again."""
        view = await self._read(job) if Look.CONVERSATION in looks else None
        state, _ = await self.store.load(job.conversation_key, None)
        found = (
            await self._posted(job, step, looks, view, posts_after(job, state.period, state.first_message))
            if Look.ECHO in looks
            else False
        )
        seen = Seen(
            period=state.period,
            phase=state.phase,
            status=view.conversation.status if view else state.status,
            fresh=view is not None,
            unheard=view is not None and unheard(job, step, view, state.latest_message),
            customer_latest=_customers(view),
            incoming=state.incoming,
            posted=found,
        )
        return period_of(job.period, job.trigger, state), seen

    async def _posted(
        self, job: Job, step: Step, looks: frozenset[Look], view: Listed | None, after: int | None
    ) -> bool | None:
        """Whether the step's note or message is in the conversation after message `after`: its echo; with
        Look.MESSAGES also the conversation's last message and latest messages (guard.posted weighs them)."""
        text, private = posted_text(job, step), isinstance(step, PrivateNote)
        echoed = await self.store.echoed(job.conversation_key, echo_text(private, text), after)
        if Look.MESSAGES not in looks or echoed:
            return echoed
        return posted(text, private, after, echoed, view, await self._messages(job, view))

    async def _read(self, job: Job) -> Listed | None:
        try:
            return await self.chatwoot.conversation_if_readable(job.account_id, job.display_id)
        except Unreadable as exc:  # a read that failed for good: the bot's memory must do
            logger.warning(
                "conversation {}: could not read it ({}); going by the bot's memory", job.conversation_key, exc
            )
            return None

    async def _messages(self, job: Job, view: Listed | None) -> list[Message] | None:
        """The latest messages with the user token; None when there is none or it cannot read them."""
        if not self.reader_token:
            return None
        try:
            return await self.chatwoot.conversation_messages(job.account_id, job.display_id, self.reader_token)
        except ChatwootError as exc:
            if not (exc.final or isinstance(exc, Unreadable)):
                raise  # tried again later
            # the user may not see this inbox: what the bot token showed must do
            logger.warning(
                "conversation {}: could not read its messages with CHATWOOT_API_TOKEN ({})", job.conversation_key, exc
            )
            return None


def _customers(view: Listed | None) -> int | None:
    """The id of the conversation's last message when it is the customer's (a read's)."""
    last = view.last_message if view else None
    return last.id if last is not None and last.kind == "incoming" and not last.private else None
