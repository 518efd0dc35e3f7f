"""Commands that show what the bot would do: `rules`, `explain`, and `outbox` (dead letters)."""
from __future__ import annotations

from datetime import datetime, timezone

from .actions import Job
from .config import ConfigError, Rules, Settings
from .decide import decide
from .events import BadBody, PayloadError, parse
from .facts import Facts
from .metrics import Metrics
from .outbox import guarded, still_wanted
from .handoffs import Handoffs
from .store import Store, open_store


def describe_rules(r: Rules) -> list[str]:
    lines = []
    on = [
        (r.handoff_all, "every pending conversation is opened at the customer's first message"),
        (r.handoff_returning, "returning customers are opened at once"),
        (r.handoff_labels, f"conversations labelled {', '.join(r.handoff_labels)} are opened"),
        (r.handoff_attributes, f"customers with {', '.join(r.handoff_attributes)} are opened"),
        (r.handoff_languages, f"customers writing in {', '.join(r.handoff_languages)} are opened"),
        (r.keep_languages, f"customers in any language but {', '.join(r.keep_languages)} are opened"),
        (r.handoff_keywords, f"messages with the words {', '.join(r.handoff_keywords)} open the conversation"),
        (r.handoff_after_messages, f"the customer's message number {r.handoff_after_messages} opens it"),
        (r.handoff_after_seconds, f"a conversation still pending {r.handoff_after_seconds} s after the first message is opened"),
        (r.handoff_on_agent_reply, "an agent's public reply in a pending conversation opens it"),
    ]
    lines += [f"- {text}" for cond, text in on if cond]
    if r.hours:
        away = f"; away message: {r.away_message!r}" if r.away_message else ""
        lines.append(f"- handoffs outside {r.hours.describe()} wait for the next opening time{away}")
    lines.append(f"- WhatsApp groups: {r.whatsapp_groups}")
    at = [f"team {r.handoff_team_id}" if r.handoff_team_id is not None else "",
          f"agent {r.handoff_assignee_id}" if r.handoff_assignee_id is not None else "",
          f"priority {r.handoff_priority}" if r.handoff_priority else "",
          "a private note with the reason" if r.handoff_note else "",
          f"message {r.handoff_message!r}" if r.handoff_message else "",
          f"returning customers get {r.returning_message!r}" if r.returning_message else ""]
    lines.append(f"- at handoff: {', '.join(filter(None, at)) or 'only the status change'}")
    if r.greeting_message:
        lines.append(f"- new customers kept pending are greeted once: {r.greeting_message!r}")
    lines.append(f"- a private note {r.bot_command!r} in an open conversation gives it back to the bot")
    return lines


async def rules(settings: Settings, args) -> int:
    scope = "all accounts" if not settings.chatwoot_account_ids else f"accounts {settings.chatwoot_account_ids}"
    inboxes = f"inboxes {settings.inbox_ids}" if settings.inbox_ids else "all inboxes"
    if settings.ignore_inbox_ids:
        inboxes += f" except {settings.ignore_inbox_ids}"
    print(f"Acts on {scope}, {inboxes}.")
    print("\nEvery inbox:" if not settings.overrides else "\nEvery other inbox:")
    print("\n".join(describe_rules(settings)))
    for inbox, r in sorted(settings.overrides.items()):
        print(f"\nInbox {inbox}:")
        print("\n".join(describe_rules(r)))
    return 0


async def explain(settings: Settings, args) -> int:
    try:
        with open(args.payload, "rb") as f:
            body = f.read()
    except OSError as exc:
        raise ConfigError(f"payload: cannot read {args.payload} ({exc.strerror})") from None
    try:
        now = datetime.fromisoformat(args.at) if args.at else datetime.now(timezone.utc)
    except ValueError:
        raise ConfigError(f"--at: {args.at!r} is not an ISO time (example: --at 2026-11-28T20:00:00Z)") from None
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    try:
        delivery = parse(body)
    except (BadBody, PayloadError) as exc:
        print(f"ignore: {exc}")
        return 0
    store = open_store(settings.store_url, settings.redis_tls_verify)
    await store.open()
    try:
        handoffs = Handoffs(settings, store, None, Metrics(), lambda: now)
        facts = await handoffs.facts(delivery, look_up=False) if delivery.conversation else Facts()
        decision = decide(delivery, facts, now, settings)
    finally:
        await store.close()
    print(decision.describe())
    return 0


async def outbox(settings: Settings, args) -> int:
    store = open_store(settings.store_url, settings.redis_tls_verify)
    await store.open()
    try:
        if args.retry:
            print(f"re-queued {await store.requeue_dead(datetime.now(timezone.utc).timestamp())} dead letters")
            return 0
        dead = await store.dead_letters()
        for job in dead:
            print(f"{job.describe()} | attempts {job.attempts} | {job.error} | reason: {job.reason}{await _skip(store, job)}")
        print(f"{len(dead)} dead letters, {await store.depth()} jobs waiting")
    finally:
        await store.close()
    return 0


async def _skip(store: Store, job: Job) -> str:
    """What a re-queued dead letter would skip, by the bot's memory (the worker checks Chatwoot itself)."""
    state, _ = await store.load(job.conversation_key, None)
    step = job.steps[job.step]
    if state.status and guarded(step) and still_wanted(job, state.status, job.unsure) == "drop":
        return f" | --retry would skip it: the conversation is {state.status} now"
    return ""
