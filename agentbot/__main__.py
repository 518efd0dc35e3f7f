"""Command line: serve (default), rules, explain, outbox, register, inboxes, check, sweep.

Each subcommand names the function that runs it (`set_defaults(run=…)`): commands/show.py only reads,
commands/change.py writes, sweep_cli.py sweeps; `serve`, or no command, runs the server."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Awaitable, Callable

from .config import REQUIRED, ConfigError, Settings, load
from .serve import serve

Command = Callable[[Settings, argparse.Namespace], Awaitable[int]]
SHOW, CHANGE = ".commands.show", ".commands.change"  # commands that only read, and those that write


def _later(module: str, name: str) -> Command:
    """A subcommand's function, imported when it runs: serving, the default, needs none of them (cold start)."""

    async def run(settings: Settings, args: argparse.Namespace) -> int:
        command: Command = getattr(importlib.import_module(module, __package__), name)
        return await command(settings, args)

    return run


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m agentbot", description="Chatwoot agent bot that hands conversations to humans."
    )
    p.set_defaults(run=None)  # the server
    sub = p.add_subparsers(dest="command")

    def command(name: str, line: str) -> argparse.ArgumentParser:
        """A subcommand whose one line shows both in the list and at the top of its own --help."""
        return sub.add_parser(name, help=line, description=line[0].upper() + line[1:] + ".")

    command("serve", "run the web server (default)")
    command("rules", "print the effective rules per inbox").set_defaults(run=_later(SHOW, "rules"))
    ex = command("explain", "print the decision for one delivery without calling Chatwoot")
    ex.set_defaults(run=_later(SHOW, "explain"))
    ex.add_argument("payload", help="a delivery body as JSON file")
    ex.add_argument("--at", help="ISO time to decide at (default: now)")
    ob = command("outbox", "list dead letters")
    ob.set_defaults(run=_later(SHOW, "outbox"))
    ob.add_argument(
        "--retry", dest="run", action="store_const", const=_later(CHANGE, "retry"), help="re-queue every dead letter"
    )
    reg = command("register", "create or update the agent bot in Chatwoot and connect inboxes")
    reg.set_defaults(run=_later(CHANGE, "register"))
    reg.add_argument("--url", help="the bot's public webhook URL, e.g. https://bot.example.com/webhook")
    reg.add_argument("--inbox", type=int, action="append", default=[], help="inbox id (repeatable)")
    reg.add_argument("--name", default="Handoff bot", help="the agent bot's name in Chatwoot (default: %(default)s)")
    reg.add_argument("--detach", action="store_true", help="disconnect the bot from the given inboxes")
    reg.add_argument(
        "--replace", action="store_true", help="connect even an inbox that has another agent bot (which it replaces)"
    )
    command("inboxes", "list the account's inboxes and their bots").set_defaults(run=_later(SHOW, "inboxes"))
    command("check", "verify the configuration against Chatwoot (needs CHATWOOT_ACCOUNT_ID)").set_defaults(
        run=_later(SHOW, "check")
    )
    sw = command("sweep", "hand off the pending conversations the rules give to humans (user token)")
    sw.set_defaults(run=_later(".sweep_cli", "sweep"))
    sw.add_argument("--dry-run", action="store_true", help="print what would happen; change nothing")
    sw.add_argument("--json", action="store_true", help="print the result as JSON")
    sw.add_argument(
        "--inbox",
        type=int,
        action="append",
        default=[],
        help="inbox id (repeatable; default: INBOX_IDS, else every inbox connected to this bot, less IGNORE_INBOX_IDS)",
    )
    sw.add_argument(
        "--account",
        type=int,
        action="append",
        default=[],
        help="account id (repeatable; default: CHATWOOT_ACCOUNT_ID(S))",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load()
        if args.run is None:
            settings.require(*REQUIRED)
            serve(settings)
            return 0
        status: int = asyncio.run(args.run(settings, args))
        return status
    except ConfigError as exc:
        print(f"agentbot: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
