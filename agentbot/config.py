"""Settings: every environment variable, parsed and validated once at start-up."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import string
from datetime import date
from functools import cached_property
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import regex
from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from .hours import EXAMPLE as HOURS_EXAMPLE
from .hours import Hours, parse_week
from .keywords import compile_keywords, fold

PLACEHOLDERS = {"name", "reason", "conversation_id"}
REQUIRED = ("chatwoot_url", "chatwoot_bot_token")  # to serve
CommaList = Annotated[list[str], NoDecode]
IdList = Annotated[list[Annotated[int, Field(gt=0)]], NoDecode]  # Chatwoot's ids start at 1
Priority = Literal["low", "medium", "high", "urgent"]

# A good value for each variable, shown when a value is refused.
EXAMPLES = {
    "chatwoot_url": "https://chat.example.com",
    "chatwoot_bot_token": "the agent bot's access token (Settings → Bots)",
    "chatwoot_bot_secret": "the agent bot's webhook secret (Chatwoot 4.13+)",
    "chatwoot_api_token": "an administrator's access token (Profile settings → Access token)",
    "webhook_token": "a random string of 16 or more characters; `python -m agentbot register` makes one",
    "store_url": "sqlite:///agentbot.sqlite3, redis://localhost:6379/0 or memory://",
    "redis_tls_verify": "false",
    "redis_max_connections": "20",
    "port": "8080",
    "log_level": "INFO",
    "log_format": "text or json",
    "action_max_age": "86400",
    "decision_log_size": "5000",
    "chatwoot_timeout": "10 (at most 20)",
    "chatwoot_account_id": "1",
    "chatwoot_account_ids": "1,2",
    "inbox_ids": "3,5",
    "ignore_inbox_ids": "4",
    "handoff_keywords": "human,agent,atendente,humano",
    "handoff_after_messages": "3",
    "handoff_after_seconds": "300",
    "business_hours": HOURS_EXAMPLE,
    "timezone": "Europe/Lisbon",
    "closed_dates": "2026-12-25,2027-01-01",
    "whatsapp_groups": "open, ignore or rules",
    "handoff_team_id": "2",
    "handoff_assignee_id": "5",
    "handoff_priority": "low, medium, high or urgent",
    "handoff_attributes": "plan=enterprise,tier=gold",
    "handoff_languages": "de,fr",
    "keep_languages": "en,pt",
    "bot_command": "#bot",
    "sweep_interval": "600 (0 = off)",
    "sweep_rate": "5 (0 = no limit)",
    "trusted_proxies": "10.0.0.0/8 (your proxy's addresses), or * when only the platform's router can reach the bot",
    # Evolution API (issue 24)
    "evolution_url": "https://evolution.example.com",
    "evolution_api_key": "Evolution's AUTHENTICATION_API_KEY, or the instance's token",
    "evolution_instance": "the instance's name in Evolution (default: the inbox's name)",
    "evolution_bots": "typebot,n8n",
    "evolution_on_resolve": "closed or keep",
    # forwarding to the team's own bot (forward.py)
    "forward_url": "https://n8n.example.com/webhook/chatwoot (your bot's webhook URL)",
    "forward_secret": "a random string of 16 or more characters your bot verifies signatures with",
    "forward_timeout": "30",
    "forward_max_age": "120 (at least 5)",
    "forward_fallback": "open or keep",
    "chatwoot_rate": "50 (0 = no cap)",
    "pending_expire_after": "604800 (7 days; 0 = off)",
    "pending_expire_action": "resolve or label",
    "pending_expire_label": "expired",
    "pending_expire_message": "We're closing this conversation, {name}; write again any time.",
}
SECRETS = {
    "chatwoot_bot_token",
    "chatwoot_bot_secret",
    "chatwoot_api_token",
    "webhook_token",
    "evolution_api_key",
    "forward_secret",
}
# Evolution API's chatbot integrations, as its routes spell them (`POST /{integration}/changeStatus/{instance}`).
EVOLUTION_BOTS = ("typebot", "openai", "dify", "n8n", "flowise", "evolutionBot", "evoai")
MIN_SECRET = 16  # characters; Chatwoot's bot secrets have 24
TEMPLATE_EXAMPLE = "Hi {name}, a person will answer you here shortly."


def normal_language(tag: str) -> str:
    """`pt_BR`, `pt-BR` and `PT-br` are one language tag: `pt-br`."""
    return tag.strip().lower().replace("_", "-")


class ConfigError(Exception):
    """A setting is missing or wrong; the message is the one line the operator sees."""


def _has_host_and_port(url: str) -> bool:
    """Whether `url` names a host and, if it has one, a port that is a number from 0 to 65535."""
    try:
        parts = urlsplit(url)
        return bool(parts.hostname) and (parts.port is None or parts.port >= 0)
    except ValueError:  # a port that is not a number, a broken [IPv6] host
        return False


def _lower(value: Any) -> Any:
    """A switch or a choice in any case, with stray spaces: `True `, `High`, `JSON`."""
    return value.strip().lower() if isinstance(value, str) else value


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _blank_is_unset(value: Any) -> Any:
    """`NAME=` means the setting is off (or, per inbox, that the global one is off there)."""
    return None if isinstance(value, str) and not value.strip() else value


def _zero_is_off(value: int | None) -> int | None:
    return value or None


def mask(url: str) -> str:
    """A store URL fit for a message: the password (in the authority or the query) becomes ***."""
    masked = re.sub(r"(//[^/@:]*:).*@", r"\1***@", url, count=1)  # to the last @: a password may hold / or #
    return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", masked)


def scrub(text: str, url: str) -> str:
    """`text` (an error about the store at `url`) with the URL's password replaced by ***."""
    found = re.search(r"//[^/@:]*:(.*)@", url)
    passwords = [found.group(1)] if found else []
    passwords += re.findall(r"(?i)[?&]password=([^&]*)", url)
    text = text.replace(url, mask(url))
    for password in filter(None, passwords):
        text = text.replace(password, "***")
    return text


def _check_forward_url(value: Any) -> Any:
    """FORWARD_URL: an http(s) URL with a host; blank is off. Its path may hold the team's bot's own secret (an
    n8n webhook id), so the message names only what is wrong, never the URL."""
    value = _blank_is_unset(value)
    if not isinstance(value, str):
        return value
    if not (value.startswith(("http://", "https://")) and _has_host_and_port(value)) or re.search(r"\s", value):
        raise ValueError("not an http(s) URL with a host (and a numeric port, if any)")
    return value


def forward_host(url: str | None) -> str:
    """The team's bot's host (and port) for logs, notes and the page: the URL's path and query may be secret."""
    return urlsplit(url).netloc.rpartition("@")[2] if url else ""


def _check_template(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid template ({exc})") from None
    unknown = fields - PLACEHOLDERS
    if unknown:
        raise ValueError(
            f"unknown placeholder {{{sorted(unknown)[0]}}}; use {{name}}, {{reason}} or {{conversation_id}}"
        )
    return value


class Rules(BaseModel):
    """The handoff rules; every field may be overridden per inbox with `INBOX_<id>_<NAME>`."""

    model_config = ConfigDict(extra="forbid")

    handoff_returning: bool = True
    handoff_note: bool = True
    handoff_all: bool = False
    handoff_keywords: CommaList = Field(default_factory=list)
    handoff_after_messages: int | None = Field(default=None, ge=0)  # 0 or blank: off
    handoff_after_seconds: int | None = Field(default=None, ge=0)
    handoff_on_agent_reply: bool = True
    handoff_labels: CommaList = Field(default_factory=list)
    handoff_attributes: CommaList = Field(default_factory=list)
    handoff_languages: CommaList = Field(default_factory=list)
    keep_languages: CommaList = Field(default_factory=list)
    business_hours: str | None = None
    timezone: str = "UTC"
    closed_dates: Annotated[list[date], NoDecode] = Field(default_factory=list)
    away_message: str | None = None
    whatsapp_groups: Literal["open", "ignore", "rules"] = "rules"  # GROUPS too: bash drops assignments to GROUPS
    handoff_team_id: int | None = Field(default=None, gt=0)
    handoff_assignee_id: int | None = Field(default=None, gt=0)
    handoff_priority: Priority | None = None
    handoff_message: str | None = None
    returning_message: str | None = None
    greeting_message: str | None = None
    bot_command: str = "#bot"
    evolution_instance: str | None = None  # None: the inbox's name (Evolution names its Chatwoot inbox so)
    # Forwarding (forward.py): the team's own bot behind this one; blank per inbox: off there.
    forward_url: str | None = None
    # Stale pending conversations, expired by the sweep (issue 21): off unless PENDING_EXPIRE_AFTER is set.
    pending_expire_after: int | None = Field(default=None, ge=0)  # seconds since the customer's last message
    pending_expire_action: Literal["resolve", "label"] = "resolve"
    pending_expire_label: str = "expired"
    pending_expire_message: str | None = None  # public, just before resolving

    _split_lists = field_validator(
        "handoff_keywords",
        "handoff_labels",
        "handoff_attributes",
        "handoff_languages",
        "keep_languages",
        "closed_dates",
        mode="before",
    )(_split)
    _templates = field_validator(
        "away_message", "handoff_message", "returning_message", "greeting_message", "pending_expire_message"
    )(_check_template)
    _choices = field_validator(
        "handoff_returning",
        "handoff_note",
        "handoff_all",
        "handoff_on_agent_reply",
        "handoff_priority",
        "whatsapp_groups",
        "pending_expire_action",
        mode="before",
    )(_lower)
    _blank_optionals = field_validator(
        "handoff_after_messages",
        "handoff_after_seconds",
        "pending_expire_after",
        "handoff_team_id",
        "handoff_assignee_id",
        "handoff_priority",
        "evolution_instance",
        mode="before",
    )(_blank_is_unset)
    _forward_url = field_validator("forward_url", mode="before")(_check_forward_url)
    _zero_counts = field_validator("handoff_after_messages", "handoff_after_seconds", "pending_expire_after")(
        _zero_is_off
    )

    @field_validator("pending_expire_label", mode="before")
    @classmethod
    def _label(cls, value: Any) -> Any:
        # Chatwoot's label titles: letters, digits, - and _, stored lower-case (Label#ensure_title_is_downcased)
        if isinstance(value, str) and not regex.fullmatch(r"[\p{L}\p{N}_-]+", value.strip()):
            raise ValueError(f"{value!r} is not a Chatwoot label (letters, digits, - and _ only)")
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("bot_command")
    @classmethod
    def _command(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank (a blank command would match any note without text)")
        return value.strip()

    @field_validator("business_hours")
    @classmethod
    def _hours(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            parse_week(value)
            return value
        return None

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("handoff_attributes")
    @classmethod
    def _pairs(cls, value: list[str]) -> list[str]:
        for pair in value:
            if "=" not in pair or not pair.split("=", 1)[0].strip():
                raise ValueError(f"{pair!r} is not name=value")
        return value

    @field_validator("handoff_languages", "keep_languages")
    @classmethod
    def _languages(cls, value: list[str]) -> list[str]:
        for tag in value:  # what contacts carry: ISO 639 codes, with a script and a region (pt-BR, zh-Hant-TW)
            if not re.fullmatch(r"[a-z]{2,3}([-_][a-z0-9]{2,8}){0,3}", tag.strip(), re.I):
                raise ValueError(f"{tag!r} is not a language code")
        return [normal_language(v) for v in value]

    @cached_property
    def hours(self) -> Hours | None:
        if not self.business_hours:
            return None
        return Hours(parse_week(self.business_hours), ZoneInfo(self.timezone), frozenset(self.closed_dates))

    @cached_property
    def keyword_pattern(self) -> regex.Pattern[str] | None:
        return compile_keywords(self.handoff_keywords)

    @cached_property
    def attributes(self) -> dict[str, str]:
        pairs = (p.split("=", 1) for p in self.handoff_attributes)
        return {k.strip(): fold(v.strip()) for k, v in pairs}

    @cached_property
    def labels(self) -> set[str]:
        return {fold(label) for label in self.handoff_labels}

    def describe(self) -> list[str]:
        """The rules in words, one "- " line each: what the `rules` command and the operator page show."""
        r = self
        on = [
            (r.handoff_all, "every pending conversation is opened at the customer's first message"),
            (r.handoff_returning, "returning customers are opened at once"),
            (r.handoff_labels, f"conversations labelled {', '.join(r.handoff_labels)} are opened"),
            (r.handoff_attributes, f"customers with {', '.join(r.handoff_attributes)} are opened"),
            (r.handoff_languages, f"customers writing in {', '.join(r.handoff_languages)} are opened"),
            (r.keep_languages, f"customers in any language but {', '.join(r.keep_languages)} are opened"),
            (r.handoff_keywords, f"messages with the words {', '.join(r.handoff_keywords)} open the conversation"),
            (r.handoff_after_messages, f"the customer's message number {r.handoff_after_messages} opens it"),
            (
                r.handoff_after_seconds,
                f"a conversation still pending {r.handoff_after_seconds} s after the first message is opened",
            ),
            (r.handoff_on_agent_reply, "an agent's public reply in a pending conversation opens it"),
            (
                r.forward_url,
                f"the bot's conversations are forwarded to your bot at {forward_host(r.forward_url)}",
            ),
        ]
        lines = [f"- {text}" for cond, text in on if cond]
        if r.hours:
            away = f"; away message: {r.away_message!r}" if r.away_message else ""
            lines.append(f"- handoffs outside {r.hours.describe()} wait for the next opening time{away}")
        lines.append(f"- WhatsApp groups: {r.whatsapp_groups}")
        at = [
            f"team {r.handoff_team_id}" if r.handoff_team_id is not None else "",
            f"agent {r.handoff_assignee_id}" if r.handoff_assignee_id is not None else "",
            f"priority {r.handoff_priority}" if r.handoff_priority else "",
            "a private note with the reason" if r.handoff_note else "",
            f"message {r.handoff_message!r}" if r.handoff_message else "",
            f"returning customers get {r.returning_message!r}" if r.returning_message else "",
        ]
        lines.append(f"- at handoff: {', '.join(filter(None, at)) or 'only the status change'}")
        if r.greeting_message:
            lines.append(f"- new customers kept pending are greeted once: {r.greeting_message!r}")
        if r.pending_expire_after:
            lines.append(f"- {self._expiry_words()}")
        lines.append(f"- a private note {r.bot_command!r} in an open conversation gives it back to the bot")
        return lines

    def _expiry_words(self) -> str:
        r = self
        action = f"labelled {r.pending_expire_label!r}" if r.pending_expire_action == "label" else "resolved"
        told = f" after the message {r.pending_expire_message!r}" if r.pending_expire_message else ""
        quiet = f"{r.pending_expire_after} s"
        return f"the sweep expires pending conversations whose customer wrote nothing for {quiet}: {action}{told}"


RULE_FIELDS = set(Rules.model_fields)


class Settings(BaseSettings, Rules):
    """Connection settings plus the global rules, read from the environment and `.env`."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load() merges `.env` and the environment itself, so tests can pass their own mapping.
        return (init_settings,)

    chatwoot_url: str | None = None
    chatwoot_bot_token: SecretStr | None = None
    chatwoot_bot_secret: SecretStr | None = None
    chatwoot_api_token: SecretStr | None = None
    webhook_token: SecretStr | None = None
    chatwoot_account_id: int | None = Field(default=None, gt=0)
    chatwoot_account_ids: IdList = Field(default_factory=list)
    # At most a third of the 60 s claim lease: a step makes up to three calls (a read, an assignment and its fallback).
    chatwoot_timeout: float = Field(default=10.0, gt=0, le=20)
    store_url: str = "sqlite:///agentbot.sqlite3"
    redis_tls_verify: bool = True  # false: accept a managed Redis's self-signed certificate (Heroku)
    redis_max_connections: int = Field(default=50, ge=1)  # per instance; more commands wait for a free one
    port: int = Field(default=8080, ge=1, le=65535)
    log_level: Literal["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    action_max_age: int = Field(default=86400, ge=60)
    decision_log_size: int = Field(default=5000, ge=0, le=100_000)  # per account; 0 = no log
    inbox_ids: IdList = Field(default_factory=list)
    ignore_inbox_ids: IdList = Field(default_factory=list)
    sweep_interval: int | None = Field(default=None, ge=0)  # None: 600 with a user token, else off
    sweep_rate: float = Field(default=5.0, ge=0)
    # The operator page: proxies whose X-Forwarded-For names the client (addresses or networks; "*": any peer).
    trusted_proxies: CommaList = Field(default_factory=list)

    # Evolution API (issue 24): pause its own bots' sessions while a human has the conversation.
    evolution_url: str | None = None  # unset: nothing is switched in Evolution
    evolution_api_key: SecretStr | None = None
    evolution_bots: CommaList = Field(default_factory=lambda: ["typebot"])
    evolution_on_resolve: Literal["closed", "keep"] = "closed"
    # Forwarding to the team's own bot (forward.py); FORWARD_URL itself is a rule (per inbox).
    forward_secret: SecretStr | None = None
    forward_timeout: float = Field(default=30.0, gt=0, le=300)  # seconds per attempt: LLM bots are slow
    forward_max_age: int = Field(default=120, ge=5)  # seconds a delivery may take to reach the team's bot
    forward_fallback: Literal["open", "keep"] = "open"
    chatwoot_rate: float = Field(default=0.0, ge=0)  # calls a second to Chatwoot in all; 0: paced by its 429s only

    _split_ids = field_validator("chatwoot_account_ids", "inbox_ids", "ignore_inbox_ids", mode="before")(_split)
    _blank_connection = field_validator(
        "chatwoot_url", "chatwoot_bot_token", "chatwoot_api_token", "chatwoot_account_id", mode="before"
    )(_blank_is_unset)

    @field_validator("chatwoot_bot_secret", "webhook_token", mode="before")
    @classmethod
    def _shared_secret(cls, value: Any) -> Any:
        value = _blank_is_unset(value)
        if isinstance(value, str) and len(value) < MIN_SECRET:
            raise ValueError(f"shorter than {MIN_SECRET} characters, too easy to guess")
        return value

    @field_validator("forward_secret", mode="before")
    @classmethod
    def _forward_secret(cls, value: Any) -> Any:
        return cls._shared_secret(value)

    _forward_choices = field_validator("forward_fallback", mode="before")(_lower)

    @property
    def forwards(self) -> bool:
        """Whether any inbox forwards to a team's bot (FORWARD_URL or an INBOX_<id>_FORWARD_URL)."""
        return any(r.forward_url for r in (self, *self.overrides.values()))

    @field_validator("webhook_token")
    @classmethod
    def _url_safe(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9._~-]+", value.get_secret_value()):
            raise ValueError("use only letters, digits and - . _ ~ (it is part of the webhook URL)")
        return value

    _split_proxies = field_validator("trusted_proxies", mode="before")(_split)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            if item != "*":
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise ValueError(f"{item!r} is not an IP address or network") from None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    _settings_choices = field_validator("log_format", "redis_tls_verify", mode="before")(_lower)

    @field_validator("chatwoot_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not (value.startswith(("http://", "https://")) and _has_host_and_port(value)) or re.search(r"\s", value):
            raise ValueError(f"{value!r} is not an http(s) URL")
        if re.search(r"/(app|api)(/|$)", urlsplit(value).path):  # a page of Chatwoot, pasted from the browser
            raise ValueError(f"{value!r} is a page of Chatwoot (/app/…, /api/…), not its address")
        return value.rstrip("/")

    @field_validator("store_url")
    @classmethod
    def _store(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "redis://", "rediss://", "memory://")):
            raise ValueError(f"{mask(value)!r} is not sqlite:///…, redis://… or memory://")
        if value.startswith("sqlite:///") and not value.removeprefix("sqlite:///").strip():
            raise ValueError("sqlite:/// needs a file path (an empty one would be a temporary database)")
        if value.startswith("redis") and not _has_host_and_port(value):
            raise ValueError(
                f"{mask(value)!r} has no valid host and port (in a password, / # ? @ must be percent-encoded: "
                "%2F %23 %3F %40)"
            )
        return value

    # Evolution API (issue 24)
    _blank_evolution = field_validator("evolution_url", "evolution_api_key", mode="before")(_blank_is_unset)
    _evolution_choice = field_validator("evolution_on_resolve", mode="before")(_lower)

    @field_validator("evolution_url")
    @classmethod
    def _evolution_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not (value.startswith(("http://", "https://")) and _has_host_and_port(value)) or re.search(r"\s", value):
            raise ValueError(f"{value!r} is not an http(s) URL")
        if re.search(r"/manager(/|$)", urlsplit(value).path):  # Evolution's manager page, pasted from the browser
            raise ValueError(f"{value!r} is Evolution's manager page, not its address")
        return value.rstrip("/")

    @field_validator("evolution_bots", mode="before")
    @classmethod
    def _evolution_bots(cls, value: Any) -> Any:
        """Evolution's integration names in any case (`EvolutionBot`, `N8N`), spelled as its routes spell them."""
        names = _split(value)
        if not isinstance(names, list):
            return names
        known = {name.lower(): name for name in EVOLUTION_BOTS}
        for name in names:
            if name.lower() not in known:
                raise ValueError(f"{name!r} is not one of {', '.join(EVOLUTION_BOTS)}")
        if not names:
            raise ValueError(f"empty: name one or more of {', '.join(EVOLUTION_BOTS)} (or unset EVOLUTION_URL)")
        return list(dict.fromkeys(known[name.lower()] for name in names))

    _overrides: dict[int, Rules] = PrivateAttr(default_factory=dict)  # per-inbox rules, filled by load()
    _store_variable: str = PrivateAttr(default="STORE_URL")  # REDIS_URL when load() took the URL from there
    _unknown: list[tuple[str, str | None]] = PrivateAttr(default_factory=list)  # (variable, setting meant): load()

    @property
    def unknown(self) -> list[str]:
        """One line per variable that looks like a setting but is none (a typo), with the one probably meant."""
        return [
            f"{key} is not a setting" + (f" (did you mean {meant}?)" if meant else "") for key, meant in self._unknown
        ]

    @property
    def store_variable(self) -> str:
        """The variable the store's URL came from, for messages: REDIS_URL (a PaaS add-on) when STORE_URL is unset."""
        return self._store_variable

    @property
    def overrides(self) -> dict[int, Rules]:
        return self._overrides

    def rules_for(self, inbox_id: int | None) -> Rules:
        # plain dict access: this runs per delivery
        overrides: dict[int | None, Rules] = self.__pydantic_private__["_overrides"]  # type: ignore[index]
        return overrides.get(inbox_id, self) if overrides else self

    def acts_on(self, account_id: int, inbox_id: int | None) -> bool:
        if self.chatwoot_account_ids and account_id not in self.chatwoot_account_ids:
            return False
        if inbox_id in self.ignore_inbox_ids:
            return False
        return not self.inbox_ids or inbox_id in self.inbox_ids

    @property
    def sweep_every(self) -> int:
        """Seconds between the server's sweeps; 0 = no sweeps (the default without CHATWOOT_API_TOKEN)."""
        if self.chatwoot_api_token is None:
            return 0
        return 600 if self.sweep_interval is None else self.sweep_interval

    def require(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) is None:
                typo = next((key for key, meant in self._unknown if meant == name.upper()), None)
                hint = f"; {typo} is set: a typo?" if typo else ""
                raise ConfigError(f"{name.upper()}: missing (example: {EXAMPLES[name]}){hint}")


def _describe(exc: ValidationError, prefix: str = "") -> str:
    err = exc.errors()[0]
    field = str(err["loc"][0]) if err["loc"] else "?"
    message = err["msg"].removeprefix("Value error, ")
    secret = field in SECRETS | {"store_url"}
    if err["type"] != "value_error" and not secret and "input" in err:
        message = f"{message}: {err['input']!r}"
    example = EXAMPLES.get(field, TEMPLATE_EXAMPLE if field.endswith("_message") else None)
    if example is None and err["type"].startswith("bool"):
        example = "true or false"
    hint = f" (example: {example})" if example else ""
    return f"{prefix}{field.upper()}: {message}{hint}"


def _inbox_overrides(environ: dict[str, str]) -> dict[int, dict[str, str]]:
    found: dict[int, dict[str, str]] = {}
    for key, value in environ.items():
        head, _, rest = key.upper().partition("_")
        if head != "INBOX" or "_" not in rest:
            continue
        inbox, _, name = rest.partition("_")
        if not inbox.isdigit():
            continue
        if name.lower() not in RULE_FIELDS:
            raise ConfigError(
                f"{key}: {name} is not a rule that can be set per inbox (example: INBOX_{inbox}_HANDOFF_ALL=true)"
            )
        found.setdefault(int(inbox), {})[name.lower()] = value
    return found


def _legacy_groups(environ: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """`GROUPS` (and `INBOX_<id>_GROUPS`) is the old name of `WHATSAPP_GROUPS`, still read from `.env` files and
    PaaS settings (in bash, GROUPS is the shell's own variable and an assignment to it is lost). The new name wins.
    Returns the environment under the new names, and each new name → the old one the environment used."""

    def renamed(key: str) -> str | None:
        up = key.upper()
        old = up == "GROUPS" or (
            up.startswith("INBOX_") and up.endswith("_GROUPS") and not up.endswith("_WHATSAPP_GROUPS")
        )
        return up.removesuffix("GROUPS") + "WHATSAPP_GROUPS" if old else None

    old_names = {new: k for k in environ if (new := renamed(k)) and new not in environ}
    return {
        **{new: v for k, v in environ.items() if (new := renamed(k))},
        **{k: v for k, v in environ.items() if not renamed(k)},
    }, old_names


NAMES = {name.upper() for name in Settings.model_fields}
OUR_PREFIXES = tuple({name.split("_")[0] + "_" for name in NAMES if "_" in name} - {"INBOX_", "LOG_", "KEEP_", "BOT_"})
NOT_OURS = {"REDIS_URL", "REDIS_TLS_URL", "GROUPS"}  # set by PaaS add-ons and shells; REDIS_URL is read by load()
LINKS = re.compile(r"_SERVICE_(HOST|PORT)(_.*)?$|_PORT(_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?$|_NAME$|_ENV_")


def _unknown(environ: dict[str, str]) -> list[tuple[str, str | None]]:
    found = []
    for key in environ:
        name = key.upper()
        if name in NAMES or name in NOT_OURS or name.startswith("INBOX_"):  # INBOX_ names are checked when read
            continue
        if LINKS.search(name):  # Kubernetes service and Docker link variables (CHATWOOT_SERVICE_HOST, REDIS_PORT…)
            continue
        meant = difflib.get_close_matches(name, NAMES, n=1, cutoff=0.8)
        if meant or name.startswith(OUR_PREFIXES):
            found.append((key, meant[0] if meant else None))
    return found


def _require_evolution_key(settings: Settings) -> None:
    """EVOLUTION_URL without EVOLUTION_API_KEY: every switch would be refused (401), so refuse to start instead."""
    if settings.evolution_url is not None and settings.evolution_api_key is None:
        raise ConfigError(
            f"EVOLUTION_API_KEY: missing, needed with EVOLUTION_URL (example: {EXAMPLES['evolution_api_key']})"
        )


def _as_written(problem: str, names: dict[str, str]) -> str:
    """`problem` ("NAME: …") under the name the user wrote, when load() read the value under another one."""
    name, colon, rest = problem.partition(":")
    return names.get(name, name) + colon + rest


def load(environ: dict[str, str] | None = None, env_file: str | None = ".env") -> Settings:
    """Read and validate everything; raise ConfigError with one line naming the variable."""
    if environ is None:
        file_values = dotenv_values(env_file) if env_file and os.path.exists(env_file) else {}
        environ = {**{k: v for k, v in file_values.items() if v is not None}, **os.environ}
    environ, names = _legacy_groups(environ)
    if not environ.get("STORE_URL") and environ.get("REDIS_URL"):  # a PaaS Redis add-on (Heroku, Render)
        environ, names = {**environ, "STORE_URL": environ["REDIS_URL"]}, {**names, "STORE_URL": "REDIS_URL"}
    try:
        values: dict[str, Any] = {k.lower(): v for k, v in environ.items() if k.lower() in Settings.model_fields}
        settings = Settings(**values)
    except ValidationError as exc:
        raise ConfigError(_as_written(_describe(exc), names)) from None
    _require_evolution_key(settings)
    settings._store_variable = names.get("STORE_URL", "STORE_URL")
    settings._unknown = _unknown(environ)
    base = settings.model_dump(include=RULE_FIELDS)
    for inbox, values in _inbox_overrides(environ).items():
        try:
            settings._overrides[inbox] = Rules(**{**base, **values})
        except ValidationError as exc:
            raise ConfigError(_as_written(_describe(exc, f"INBOX_{inbox}_"), names)) from None
    _check_forward_timing(settings)
    return settings


def _check_forward_timing(settings: Settings) -> None:
    """One attempt must fit in the time a forward may take, or a slow bot would never get a second chance."""
    if settings.forwards and settings.forward_timeout > settings.forward_max_age:
        raise ConfigError(
            f"FORWARD_TIMEOUT: {settings.forward_timeout:g} s is longer than FORWARD_MAX_AGE "
            f"({settings.forward_max_age} s), so a slow bot could not be tried even once in time "
            f"(example: FORWARD_TIMEOUT={max(1, settings.forward_max_age // 4)})"
        )
