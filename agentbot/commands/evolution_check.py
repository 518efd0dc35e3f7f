"""`check`'s Evolution API lines: the key is accepted, each inbox's instance exists, EVOLUTION_BOTS are switched on."""

from __future__ import annotations

from ..chatwoot import Chatwoot, ChatwootError, Inbox
from ..config import Settings, mask
from ..evolution import Evolution, EvolutionError, EvolutionRefused, Instance, IntegrationDisabled, instance_for
from .common import explain_error

Line = tuple[bool | None, str]  # None: information, not a failure


async def evolution_lines(settings: Settings, chatwoot: Chatwoot, account: int | None) -> list[Line]:
    """Nothing when EVOLUTION_URL is unset; else one line for the key, then one per inbox and integration."""
    if settings.evolution_url is None or settings.evolution_api_key is None:
        return []
    url = mask(settings.evolution_url)
    evolution = Evolution(chatwoot.session, settings.evolution_url, settings.evolution_api_key.get_secret_value())
    try:
        instances = {i.name: i for i in await evolution.fetch_instances()}
    except EvolutionError as exc:
        return [(False, f"Evolution at {url}: {_problem(exc, settings)}")]
    lines: list[Line] = [(True, f"Evolution at {url} accepts EVOLUTION_API_KEY (instances: {', '.join(instances)})")]
    inboxes, problem = await _inboxes(settings, chatwoot, account)
    if problem:
        lines.append(problem)
    for inbox_id, inbox_name in inboxes.items():
        lines += await _inbox_lines(settings, evolution, instances, inbox_id, inbox_name)
    return lines


def _problem(exc: EvolutionError, settings: Settings) -> str:
    if isinstance(exc, EvolutionRefused):
        return f"{exc.detail or exc.status} ({exc.fix})"
    return f"cannot reach EVOLUTION_URL={mask(settings.evolution_url or '')} ({exc.detail})"


async def _inboxes(
    settings: Settings, chatwoot: Chatwoot, account: int | None
) -> tuple[dict[int, str | None], Line | None]:
    """The inboxes to check, with their names: INBOX_IDS, else the account's API inboxes (Evolution's kind); the
    names come from Chatwoot's inbox list (CHATWOOT_API_TOKEN), without which only the set instances are checked."""
    wanted = set(settings.inbox_ids) | set(settings.overrides)
    if settings.chatwoot_api_token is None or account is None:
        names: dict[int, str | None] = {i: None for i in sorted(wanted or {0})}  # 0: no inbox known, the global one
        hint = "set CHATWOOT_API_TOKEN so check can match each inbox's name to an Evolution instance"
        return names, (None, hint)
    try:
        listed = await chatwoot.list_inboxes(account, settings.chatwoot_api_token.get_secret_value())
    except ChatwootError as exc:
        return {}, (False, f"Evolution: cannot list the inboxes: {explain_error(exc, settings)}")
    return {i.id: i.name for i in listed if _fed_by_evolution(settings, i, wanted)}, None


def _fed_by_evolution(settings: Settings, inbox: Inbox, wanted: set[int]) -> bool:
    """Whether to check `inbox`: one of INBOX_IDS, else an API inbox (what Evolution creates) or one with its own
    INBOX_<id>_ settings; never one of IGNORE_INBOX_IDS."""
    if inbox.id in settings.ignore_inbox_ids:
        return False
    return inbox.id in wanted or (not settings.inbox_ids and inbox.channel_type == "Channel::Api")


async def _inbox_lines(
    settings: Settings, evolution: Evolution, instances: dict[str, Instance], inbox_id: int, inbox_name: str | None
) -> list[Line]:
    where, variable = _names(inbox_id, inbox_name)
    name = instance_for(settings, inbox_id or None, inbox_name)
    if name is None:  # the inbox's name is unknown without CHATWOOT_API_TOKEN: the hint line says so
        return []
    if name not in instances:
        feeding = [i.name for i in instances.values() if inbox_name and i.name_inbox == inbox_name]
        hint = f"set {variable}={feeding[0]}" if feeding else f"set {variable} to one of: {', '.join(instances)}"
        return [(False, f"{where}: Evolution has no instance {name!r} ({hint})")]
    lines: list[Line] = [(True, f"{where}: Evolution instance {name!r} ({instances[name].connectionStatus})")]
    for bot in settings.evolution_bots:
        lines.append(await _bot_line(settings, evolution, name, bot))
    return lines


def _names(inbox_id: int, inbox_name: str | None) -> tuple[str, str]:
    """How the lines name the inbox, and the variable that sets its instance (inbox 0: the global one)."""
    if not inbox_id:
        return "EVOLUTION_INSTANCE", "EVOLUTION_INSTANCE"
    return f"inbox {inbox_id}" + (f" ({inbox_name})" if inbox_name else ""), f"INBOX_{inbox_id}_EVOLUTION_INSTANCE"


async def _bot_line(settings: Settings, evolution: Evolution, instance: str, bot: str) -> Line:
    try:
        found = await evolution.fetch_settings(instance, bot)
    except IntegrationDisabled as exc:
        return (False, f"Evolution instance {instance!r}: {exc.detail} ({exc.fix})")
    except EvolutionError as exc:
        return (False, f"Evolution instance {instance!r}, {bot}: {_problem(exc, settings)}")
    if found.keepOpen and settings.evolution_on_resolve == "closed":
        return (
            None,
            f"Evolution instance {instance!r}, {bot}: keepOpen is on, so a resolved conversation's session stays "
            "closed and this bot no longer answers that contact (switch keepOpen off, or EVOLUTION_ON_RESOLVE=keep)",
        )
    return (True, f"Evolution instance {instance!r}: {bot} is switched on")
