"""Evolution API: the client for the endpoints the bot calls, the contact's WhatsApp JID, and which switches of
Evolution's own bot sessions a conversation's lifecycle needs (pause at a handoff, open at a give-back, close at a
resolve). Paths, bodies and answers follow Evolution 2.x (`base-chatbot.controller.ts`, its routers and guards)."""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import quote

import aiohttp
import msgspec

from .chatwoot import one_line
from .config import EVOLUTION_BOTS, Settings
from .events import Conversation
from .metrics import Metrics

TIMEOUT = 10.0  # seconds per call: one call per step, well inside the outbox's 60 s claim lease
SECOND_PAUSE = 10.0  # seconds after the handoff: the message that caused it may start a new session just after
STATUSES = ("opened", "paused", "closed", "delete")  # what changeStatus accepts (its JSON schema's enum)
JID_SUFFIXES = ("@s.whatsapp.net", "@g.us", "@lid")  # what Evolution's Chatwoot integration stores as identifier
EVOLUTION_SYSTEM_PHONE = "+123456"  # Evolution's own "EvolutionAPI" contact: no bot session to switch
T = TypeVar("T")


class EvolutionError(Exception):
    """A call to Evolution failed. `retry` says whether trying again later can help; `fix`, for a refusal, what the
    operator must set. The API key is never part of the message."""

    retry = True
    fix = ""

    def __init__(self, endpoint: str, status: int | None, detail: str):
        self.endpoint, self.status, self.detail = endpoint, status, detail
        super().__init__(f"Evolution {endpoint}: {status or 'no answer'} {detail}".strip())


class EvolutionUnreachable(EvolutionError):
    """No answer: refused connection, timeout, dropped connection (it may have been applied: switches are
    idempotent, so trying again is safe)."""


class EvolutionServerError(EvolutionError):
    """Evolution answered 5xx (its database or the instance's WhatsApp session misbehaved): try again later."""


class EvolutionRefused(EvolutionError):
    """Evolution refused the call for a reason trying again cannot fix: a configuration problem."""

    retry = False

    def __init__(self, endpoint: str, status: int | None, detail: str, fix: str):
        super().__init__(endpoint, status, detail)
        self.fix = fix


class WrongKey(EvolutionRefused):
    """401/403: EVOLUTION_API_KEY is neither Evolution's global key nor the instance's token."""


class UnknownInstance(EvolutionRefused):
    """404: Evolution has no instance of that name."""


class IntegrationDisabled(EvolutionRefused):
    """400 "<Integration> is disabled": the integration is switched off in Evolution's environment."""


class _ChatwootLink(msgspec.Struct, frozen=True):
    nameInbox: str | None = None  # noqa: N815 (Evolution's field name)


class Instance(msgspec.Struct, frozen=True):
    """An instance as `GET /instance/fetchInstances` lists it; only the name and the connection are decoded (the
    answer also holds the instance's token and its Chatwoot token: never log it)."""

    name: str
    connectionStatus: str | None = None  # noqa: N815 (Evolution's field name) open, close, connecting
    chatwoot: _ChatwootLink | None = msgspec.field(default=None, name="Chatwoot")

    @property
    def name_inbox(self) -> str | None:
        """The Chatwoot inbox this instance feeds (its Chatwoot integration's `nameInbox`; unset: its own name)."""
        if self.chatwoot is None:
            return None
        return self.chatwoot.nameInbox or self.name


class BotSettings(msgspec.Struct, frozen=True):
    """An integration's defaults on an instance (`GET /{integration}/fetchSettings/{instance}`), as far as the
    switches care: with `keepOpen`, `closed` keeps the session (closed: the bot stays silent for that contact)."""

    keepOpen: bool | None = None  # noqa: N815 (Evolution's field names)
    stopBotFromMe: bool | None = None  # noqa: N815


class _Answer(msgspec.Struct):
    """Evolution's error body: `{"status": 400, "error": "Bad Request", "response": {"message": […]}}`."""

    response: dict[str, object] = {}


_decode_instances = msgspec.json.Decoder(list[Instance]).decode
_decode_settings = msgspec.json.Decoder(BotSettings).decode


def _message(raw: bytes) -> str:
    """The message of Evolution's error body (a string, a list, or a list of lists), else the body's start."""
    try:
        message = msgspec.json.decode(raw, type=_Answer).response.get("message")
    except (msgspec.DecodeError, msgspec.ValidationError):
        return one_line(raw.decode(errors="replace"))
    flat: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, list):
            for item in value:
                walk(item)
        elif value is not None:
            flat.append(str(value))

    walk(message)
    return one_line("; ".join(flat))


def _refusal(endpoint: str, status: int, detail: str, instance: str | None, integration: str | None) -> EvolutionError:
    """The typed error for Evolution's answer `status` (>= 300) with message `detail`."""
    if status >= 500:
        return EvolutionServerError(endpoint, status, detail)
    kind, fix = _diagnosis(status, detail, instance, integration)
    return kind(endpoint, status, detail, fix)


def _diagnosis(
    status: int, detail: str, instance: str | None, integration: str | None
) -> tuple[type[EvolutionRefused], str]:
    """Which refusal, and what the operator must set."""
    if status in (401, 403):
        return WrongKey, "set EVOLUTION_API_KEY to Evolution's AUTHENTICATION_API_KEY (or the instance's token)"
    if status == 404 and instance is not None and "instance" in detail.lower():
        return (
            UnknownInstance,
            f"no instance {instance!r} in Evolution: set EVOLUTION_INSTANCE (or INBOX_<id>_EVOLUTION_INSTANCE)",
        )
    if status == 400 and integration is not None and detail.endswith("is disabled"):
        return IntegrationDisabled, (
            f"remove {integration} from EVOLUTION_BOTS, or switch the integration on in Evolution's environment"
        )
    if status < 400:
        return EvolutionRefused, "EVOLUTION_URL redirects: set it to the address it names"
    if status == 404:
        return EvolutionRefused, "EVOLUTION_URL does not look like Evolution API 2.x"
    return EvolutionRefused, "Evolution refused the call: see its message"


class Evolution:
    """Talks only to `base_url` (EVOLUTION_URL) with the `apikey` header; paths are built here and nowhere else."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        api_key: str,
        timeout: float = TIMEOUT,
        metrics: Metrics | None = None,
    ):
        self.session, self.base_url, self._key = session, base_url.rstrip("/"), api_key
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.metrics = metrics

    def __repr__(self) -> str:  # the key stays out of tracebacks and logs
        return f"Evolution({self.base_url!r})"

    async def _call(
        self,
        method: str,
        endpoint: str,
        path: str,
        body: object = None,
        instance: str | None = None,
        integration: str | None = None,
    ) -> bytes:
        """The answer's body; an EvolutionError for every failure."""
        headers = {"apikey": self._key, "Accept": "application/json"}
        started, status = time.perf_counter(), "error"
        try:
            async with self.session.request(
                method, self.base_url + path, json=body, headers=headers, timeout=self.timeout, allow_redirects=False
            ) as resp:
                status = str(resp.status)
                raw = await resp.read()
                if resp.status >= 300:
                    detail = resp.headers.get("Location", "") if resp.status < 400 else _message(raw)
                    raise _refusal(endpoint, resp.status, detail, instance, integration)
                return raw
        except TimeoutError:
            status = "timeout"
            raise EvolutionUnreachable(endpoint, None, "timed out") from None
        except aiohttp.ClientError as exc:
            raise EvolutionUnreachable(endpoint, None, f"{type(exc).__name__}: {exc}") from None
        finally:
            if self.metrics:
                self.metrics.observe_evolution_call(endpoint, status, time.perf_counter() - started)

    async def change_status(self, instance: str, integration: str, remote_jid: str, status: str) -> None:
        """Set every bot session of `remote_jid` on `instance` to `status` (`opened`, `paused`; `closed` and
        `delete` end them). Evolution switches the sessions of every integration, whichever route is called; a
        contact without a session is not an error (nothing changes)."""
        if integration not in EVOLUTION_BOTS or status not in STATUSES:
            raise ValueError(f"unknown integration {integration!r} or status {status!r}")
        path = f"/{integration}/changeStatus/{quote(instance, safe='')}"
        body = {"remoteJid": remote_jid, "status": status}
        await self._call("POST", "changeStatus", path, body, instance=instance, integration=integration)

    async def fetch_instances(self) -> list[Instance]:
        """The instances the key may see: all of them with the global key, the instance's own with its token."""
        raw = await self._call("GET", "fetchInstances", "/instance/fetchInstances")
        return _decoded("fetchInstances", raw, _decode_instances)

    async def fetch_settings(self, instance: str, integration: str) -> BotSettings:
        """The integration's settings on `instance`; read-only, so `check` learns whether the integration is
        switched on (IntegrationDisabled otherwise) without touching a session."""
        if integration not in EVOLUTION_BOTS:
            raise ValueError(f"unknown integration {integration!r}")
        path = f"/{integration}/fetchSettings/{quote(instance, safe='')}"
        raw = await self._call("GET", "fetchSettings", path, instance=instance, integration=integration)
        return _decoded("fetchSettings", raw, _decode_settings)


def _decoded(endpoint: str, raw: bytes, decode: Callable[[bytes], T]) -> T:
    try:
        return decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        fix = "EVOLUTION_URL does not look like Evolution API 2.x"
        raise EvolutionRefused(endpoint, 200, f"unexpected answer: {exc}", fix) from None


# The contact's WhatsApp JID.
def whatsapp_jid(identifier: str | None, phone_number: str | None) -> str | None:
    """The JID Evolution keys its sessions by: the contact's identifier when it is one (Evolution's Chatwoot
    integration stores the JID there: a person, a group, a LID), else the phone's digits at s.whatsapp.net, else
    None (a website contact)."""
    if identifier and identifier.strip().endswith(JID_SUFFIXES):
        return identifier.strip()
    digits = re.sub(r"\D", "", phone_number or "")
    return f"{digits}@s.whatsapp.net" if digits else None


def conversation_jid(conversation: Conversation) -> str | None:
    """The JID of the conversation's contact; None for Evolution's own `+123456` contact (no bot talks there)."""
    if conversation.contact_phone == EVOLUTION_SYSTEM_PHONE:
        return None
    return whatsapp_jid(conversation.contact_identifier, conversation.contact_phone)


def instance_for(settings: Settings, inbox_id: int | None, inbox_name: str | None) -> str | None:
    """The Evolution instance of an inbox: INBOX_<id>_EVOLUTION_INSTANCE, else EVOLUTION_INSTANCE, else the inbox's
    name (Evolution finds its Chatwoot inbox by name, `nameInbox`, which defaults to the instance's name). Message
    deliveries carry the inbox's name; elsewhere it comes from Chatwoot's inbox list (a user token). None: unknown."""
    return settings.rules_for(inbox_id).evolution_instance or inbox_name or None


# Which switches a lifecycle transition needs.
class Transition(enum.Enum):
    HANDOFF = "handoff"  # the conversation was opened for a human
    GIVE_BACK = "give_back"  # an agent gave it back to the bot (`#bot`, the bot assigned)
    RESOLVE = "resolve"  # resolved


class Switch(msgspec.Struct, frozen=True):
    """One `changeStatus` call: `status` for `remote_jid` through `integration`, `delay` seconds after the
    transition (the instance is the inbox's, resolved when the call is made)."""

    integration: str
    status: str
    remote_jid: str
    delay: float = 0.0


def switches(
    transition: Transition, jid: str | None, bots: list[str], on_resolve: str, enabled: bool
) -> tuple[Switch, ...]:
    """The calls `transition` needs for the contact `jid`, one per integration in `bots` (EVOLUTION_BOTS); none
    without a JID or without EVOLUTION_URL (`enabled`). A handoff pauses twice: the message that caused it may
    start a new, opened session a moment after the first pause."""
    if not enabled or jid is None:
        return ()
    if transition is Transition.HANDOFF:
        return tuple(Switch(bot, "paused", jid, delay) for delay in (0.0, SECOND_PAUSE) for bot in bots)
    if transition is Transition.GIVE_BACK:
        return tuple(Switch(bot, "opened", jid) for bot in bots)
    if on_resolve == "keep":
        return ()
    return tuple(Switch(bot, "closed", jid) for bot in bots)
