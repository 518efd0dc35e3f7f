"""Carries out an Evolution switch for the outbox: finds the inbox's instance, calls Evolution, maps its failures to
the outbox's retry policy, and keeps configuration problems (logged once each) for the operator page.

Evolution down (no answer, 5xx) is EvolutionDown, a ChatwootError the outbox retries with backoff and buries after
ACTION_MAX_AGE like any call. A refusal (wrong key, unknown instance, integration switched off) cannot be fixed by
trying again: the step is finished, the problem logged once with what to set, counted and shown until a switch on
the same instance works. Evolution not knowing an inbox's *default* instance (the inbox's name, nothing set) means
that inbox is not Evolution's (a website inbox whose contact left a phone number): skipped quietly, logged once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from loguru import logger

from .actions import EvolutionSwitch, Job
from .chatwoot import Chatwoot, ChatwootError
from .config import Settings, mask
from .evolution import (
    Evolution,
    EvolutionRefused,
    EvolutionServerError,
    EvolutionUnreachable,
    UnknownInstance,
    WrongKey,
    instance_for,
)
from .metrics import Metrics

NAMES_FOR = 600.0  # seconds the inbox names read from Chatwoot are trusted (a renamed inbox is seen after that)


class EvolutionDown(ChatwootError):
    """Evolution did not answer or failed (5xx): tried again by the outbox (switches are idempotent)."""

    maybe_applied = True


class Switcher:
    def __init__(
        self,
        settings: Settings,
        evolution: Evolution,
        chatwoot: Chatwoot,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings, self.evolution, self.chatwoot, self.metrics, self.clock = (
            settings,
            evolution,
            chatwoot,
            metrics,
            clock,
        )
        self.problems: dict[str, str] = {}  # what to fix, by what it is about ("key", "instance:x", …)
        self.skipped: dict[int | None, str] = {}  # inboxes taken as not Evolution's
        self.failing: str | None = None  # Evolution's failure while it is down
        self._names: dict[tuple[int, int], str] = {}  # (account, inbox) → the inbox's name
        self._listed: dict[int, float] = {}  # account → when its inboxes were read

    async def switch(self, job: Job, step: EvolutionSwitch) -> None:
        """The step's changeStatus call; EvolutionDown when it is worth trying again."""
        instance = await self._instance(job.account_id, step)
        if instance is None:
            return
        try:
            await self.evolution.change_status(instance, step.integration, step.remote_jid, step.status)
        except (EvolutionUnreachable, EvolutionServerError) as exc:
            self.failing = f"{exc.status or 'no answer'} {exc.detail}".strip()
            raise EvolutionDown(f"Evolution {exc.endpoint}", exc.status, exc.detail) from None
        except EvolutionRefused as exc:
            self._refused(job, step, instance, exc)
            return
        self.failing = None
        for key in ("key", f"instance:{instance}", f"{step.integration}:{instance}"):
            self.problems.pop(key, None)
        self.metrics.evolution_switches.labels(step.status, "done").inc()
        logger.info(
            "conversation {}: Evolution's bot sessions of the contact {} on instance {!r} ({})",
            job.conversation_key,
            step.status,
            instance,
            step.integration,
        )

    def health(self) -> tuple[Literal["ok", "warn", "bad"], str]:
        """(level, detail) for the operator page: "bad" while a refusal stands, "warn" while Evolution is down."""
        where = mask(self.settings.evolution_url or "")
        if self.problems:
            return "bad", f"{where}: " + "; ".join(self.problems.values())
        if self.failing:
            return "warn", f"{where} is not answering ({self.failing}); the switches are tried again"
        skipped = f"; not Evolution's: {', '.join(self.skipped.values())}" if self.skipped else ""
        return "ok", f"{where}: no problem seen{skipped}"

    def _refused(self, job: Job, step: EvolutionSwitch, instance: str, exc: EvolutionRefused) -> None:
        if isinstance(exc, UnknownInstance) and self.settings.rules_for(step.inbox_id).evolution_instance is None:
            self.metrics.evolution_switches.labels(step.status, "skipped").inc()
            inbox = f"inbox {step.inbox_id} ({instance})"
            if step.inbox_id not in self.skipped:
                self.skipped[step.inbox_id] = inbox
                logger.info(
                    "{}: Evolution has no instance of that name: taken as an inbox Evolution does not feed, nothing "
                    "is switched for its contacts (if it does, set INBOX_{}_EVOLUTION_INSTANCE)",
                    inbox,
                    step.inbox_id,
                )
            return
        key = (
            "key"
            if isinstance(exc, WrongKey)
            else f"instance:{instance}"
            if isinstance(exc, UnknownInstance)
            else f"{step.integration}:{instance}"
        )
        self._problem(key, f"{exc.detail or exc.status} on instance {instance!r} ({exc.fix})", step.status)
        logger.debug("conversation {}: Evolution {} not switched: {}", job.conversation_key, step.status, exc)

    def _problem(self, key: str, words: str, status: str) -> None:
        """A configuration problem: counted every time, logged once (until a switch shows it solved)."""
        self.metrics.evolution_switches.labels(status, "refused").inc()
        if key not in self.problems:
            logger.error("Evolution API: {}; not retried until that is fixed", words)
        self.problems[key] = words

    async def _instance(self, account: int, step: EvolutionSwitch) -> str | None:
        """The inbox's instance: INBOX_<id>_EVOLUTION_INSTANCE, EVOLUTION_INSTANCE, else the inbox's name (from the
        delivery, else Chatwoot's inbox list with CHATWOOT_API_TOKEN)."""
        name = step.inbox_name
        if step.inbox_id is not None:
            if name:
                self._names[account, step.inbox_id] = name
            elif self.settings.rules_for(step.inbox_id).evolution_instance is None:
                name = await self._inbox_name(account, step.inbox_id)
        found = instance_for(self.settings, step.inbox_id, name)
        if found is None:
            variable = (
                f"INBOX_{step.inbox_id}_EVOLUTION_INSTANCE" if step.inbox_id is not None else "EVOLUTION_INSTANCE"
            )
            self._problem(
                f"name:{step.inbox_id}",
                f"the name of inbox {step.inbox_id} (its instance's, by default) is unknown: set {variable} or "
                "EVOLUTION_INSTANCE, or CHATWOOT_API_TOKEN so the bot can read it",
                step.status,
            )
        return found

    async def _inbox_name(self, account: int, inbox_id: int) -> str | None:
        """From what deliveries showed, else from Chatwoot's inbox list (read again after NAMES_FOR)."""
        token = self.settings.chatwoot_api_token
        known = self._names.get((account, inbox_id))
        fresh = account in self._listed and self.clock() - self._listed[account] < NAMES_FOR
        if known or fresh or token is None:
            return known
        try:
            inboxes = await self.chatwoot.list_inboxes(account, token.get_secret_value())
        except ChatwootError as exc:
            if not exc.final:
                raise  # the outbox tries again
            words = f"CHATWOOT_API_TOKEN cannot list the inboxes ({exc}) to learn their names: set EVOLUTION_INSTANCE"
            self._problem("names", words, "-")
            return None
        self._listed[account] = self.clock()
        self._names.update({(account, i.id): i.name for i in inboxes if i.name})
        return self._names.get((account, inbox_id))
