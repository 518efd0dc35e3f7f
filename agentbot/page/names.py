"""Names for the ids the page shows (inboxes with their bot, teams, agents), read from Chatwoot with an
operator's token at sign-in and again when they are older than STALE_SECONDS."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from loguru import logger

from ..chatwoot import Chatwoot, ChatwootError
from ..config import Settings

STALE_SECONDS = 600.0


@dataclass(frozen=True)
class InboxRow:
    account: int
    id: int
    name: str
    channel: str
    bot: str  # the name of the inbox's agent bot; "" when it has none
    ours: bool  # that bot is this one

    @property
    def email(self) -> bool:
        return self.channel == "Channel::Email"


@dataclass
class Names:
    inboxes: list[InboxRow] = field(default_factory=list)
    teams: dict[tuple[int, int], str] = field(default_factory=dict)
    agents: dict[tuple[int, int], str] = field(default_factory=dict)
    read_at: dict[int, float] = field(default_factory=dict)  # account → when its names were read

    def of(self, accounts: list[int]) -> Names:
        """Only `accounts`' names: an operator sees only their own accounts'."""
        return Names(
            [r for r in self.inboxes if r.account in accounts],
            {k: v for k, v in self.teams.items() if k[0] in accounts},
            {k: v for k, v in self.agents.items() if k[0] in accounts},
            {a: t for a, t in self.read_at.items() if a in accounts},
        )

    def stale(self, accounts: list[int], now: float) -> bool:
        return any(now - self.read_at.get(a, 0.0) > STALE_SECONDS for a in accounts)

    def inbox(self, account: int, inbox_id: int | None) -> str:
        if inbox_id is None:
            return "no inbox"
        row = self.row(account, inbox_id)
        return row.name if row else f"inbox {inbox_id}"

    def inbox_anywhere(self, inbox_id: int) -> str:
        """An inbox's name where only its id is known (per-inbox settings name no account)."""
        return next((r.name for r in self.inboxes if r.id == inbox_id), f"inbox {inbox_id}")

    def row(self, account: int, inbox_id: int) -> InboxRow | None:
        return next((r for r in self.inboxes if r.account == account and r.id == inbox_id), None)

    def team(self, team_id: int) -> str:
        return next((n for (_, t), n in self.teams.items() if t == team_id), "") or f"team {team_id}"

    def agent(self, agent_id: int) -> str:
        return next((n for (_, a), n in self.agents.items() if a == agent_id), "") or f"agent {agent_id}"


async def read(chatwoot: Chatwoot, settings: Settings, token: str, accounts: list[int], now: float) -> Names | None:
    """The names of `accounts`, read with the operator's token (a bot token may not list them); None on failure."""
    assert settings.chatwoot_bot_token is not None  # the server runs only with it (config.REQUIRED)
    mine = settings.chatwoot_bot_token.get_secret_value()
    found = Names()
    try:
        async with asyncio.timeout(5):
            for account in accounts:
                bots, inboxes, teams, agents = await asyncio.gather(
                    chatwoot.list_agent_bots(account, token),
                    chatwoot.list_inboxes(account, token),
                    chatwoot.list_teams(account, token),
                    chatwoot.list_agents(account, token),
                )
                ours = next((b.id for b in bots if b.token == mine), None)
                inboxes = [i for i in inboxes if settings.acts_on(account, i.id)]
                attached = await asyncio.gather(*(chatwoot.inbox_agent_bot(account, i.id, token) for i in inboxes))
                found.inboxes += [
                    InboxRow(
                        account,
                        i.id,
                        i.name or "?",
                        i.channel_type or "",
                        a.name or "",
                        ours is not None and a.id == ours,
                    )
                    for i, a in zip(inboxes, attached, strict=True)
                ]
                found.teams.update({(account, t.id): t.name or "" for t in teams})
                found.agents.update({(account, a.id): a.name or "" for a in agents})
                found.read_at[account] = now
    except (ChatwootError, TimeoutError) as exc:
        logger.warning("operator page: could not read the names with the operator's token ({})", exc or "timed out")
        return None
    return found


def merge(old: Names, new: Names) -> Names:
    """`new`'s accounts replace theirs in `old`; other operators' accounts are kept."""
    accounts = set(new.read_at)
    return Names(
        [r for r in old.inboxes if r.account not in accounts] + new.inboxes,
        {**{k: v for k, v in old.teams.items() if k[0] not in accounts}, **new.teams},
        {**{k: v for k, v in old.agents.items() if k[0] not in accounts}, **new.agents},
        {**old.read_at, **new.read_at},
    )
