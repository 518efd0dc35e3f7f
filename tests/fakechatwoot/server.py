"""A fake Chatwoot on loopback that holds the bot to Chatwoot's rules (docs/chatwoot.md).

It plays both sides of Chatwoot: the API the bot calls (token checks with the exact error bodies,
the bot-token allow list, status rules, events echoed back) and the delivery of agent-bot webhooks
(signing, retries of 429/500, the failure fallback that opens a pending conversation).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import random
import re
import time
import uuid
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from .model import Bot, Contact, Conversation, Inbox, Message, User, iso, message_payload

SIGN_IN = {"errors": ["You need to sign in or sign up before continuing."]}
INVALID_TOKEN = {"error": "Invalid Access Token"}
NOT_FOR_BOTS = {"error": "Access to this endpoint is not authorized for bots"}
NOT_FOUND = {"error": "Resource could not be found"}
BOT_NOT_IN_ACCOUNT = {"error": "Bot is not authorized to access this account"}
NOT_ALLOWED = {"error": "You are not authorized to do this action"}
RATE_LIMIT = 3000  # rack-attack `req/ip`: requests per client IP per minute (fixed window), then 429
BOT_SECRET = "bot-secret-7-6Ybq3sWkT2vN"  # Chatwoot's `has_secure_token :secret`: 24 characters
FALLBACK_ACTIVITY = "Conversation was marked open by system due to an error with the agent bot."
MESSAGE_EVENTS = {"message_created", "message_updated"}
LIST_PAGE = 25  # conversations a page (Kaminari's default in ConversationFinder)


@dataclass
class Call:
    method: str
    path: str
    endpoint: str
    body: dict | None
    status: int
    caller: str  # "bot", "user" or "anonymous"
    at: float = field(default_factory=time.monotonic)
    wall: float = field(default_factory=time.time)  # the clock of the fake's rate-limit windows


@dataclass
class Delivery:
    event: str
    display_id: int | None
    payload: dict
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    answers: list[int | str] = field(default_factory=list)  # status codes, "timeout", "refused"
    seconds: list[float] = field(default_factory=list)
    done: bool = False


@dataclass
class Fault:
    endpoint: str  # route name or "*"
    times: int
    status: int | None = None
    hang: float = 0.0
    retry_after: int | None = None
    release: asyncio.Event | None = None
    waiting: int = 0  # calls being held right now
    applied: bool = False  # Chatwoot carries the call out, then hangs (`hang`) or drops the connection
    slept: int = 0  # calls that have waited out `hang`
    drop: bool = False
    garbled: bool = False  # answer 200 with a body that is not the endpoint's shape (a proxy's page, a bug)


@dataclass
class DeliveryHold:
    predicate: object
    event: asyncio.Event
    held: list = field(default_factory=list)

    def release(self) -> None:
        self.event.set()


# What changed between the Chatwoot versions the bot supports (docs/chatwoot.md, Versions).
FEATURES = {
    "fallback": (4, 7),  # a failed message delivery opens a pending conversation (#12379)
    "retries": (4, 11),  # 429 and 500 retried, 3 attempts (#13521)
    "signed": (4, 13),  # X-Chatwoot-Signature/-Timestamp/-Delivery (#13892)
    "change_events": (4, 13),  # conversation_status_changed and conversation_updated (#13975, #14002)
    "bot_typing": (4, 13),  # bots may toggle typing (#13705)
    "bot_reads": (4, 16),  # bots may GET a conversation and its labels (#14655)
    "bot_owned": (4, 16),  # new conversations owned by the bot; meta.assignee_type (#14870, #14875)
}
VERSIONS = ("4.6", "4.12", "4.16")


class FakeChatwoot:
    def __init__(
        self,
        *,
        version: str = "4.16",
        webhook_timeout: float = 5.0,
        retry_delay: float = 0.2,
        signed: bool | None = None,
        rate_limit: int | None = RATE_LIMIT,
    ):
        self.version = tuple(int(part) for part in version.split("."))
        self.webhook_timeout, self.retry_delay, self.rate_limit = webhook_timeout, retry_delay, rate_limit
        signed = self.has("signed") if signed is None else signed
        self.account = {"id": 1, "name": "Acme Support"}
        self.other_accounts = {2: "Other Shop"}  # exist in this Chatwoot; the bot is not in them
        self.users = {
            5: User(5, "Sam Rivera", "user-token-5", "administrator"),
            6: User(6, "Ana Costa", "user-token-6"),
        }
        self.evolution_user = User(9, "Evolution API", "evolution-token")
        self.users[9] = self.evolution_user
        self.users[8] = User(8, "Olga Berg", "user-token-8", roles={2: "administrator"})  # admin elsewhere only
        self.teams = {2: {"id": 2, "name": "Support", "description": "", "allow_auto_assign": True, "account_id": 1}}
        self.bots = {7: Bot(7, "Triage Bot", "bot-token-7", secret=BOT_SECRET if signed else None)}
        self.inboxes = {
            3: Inbox(3, "Website", bot_id=7),
            4: Inbox(4, "WhatsApp", "Channel::Api", bot_id=7),
            5: Inbox(5, "Instagram", "Channel::Instagram", bot_id=7, single_conversation=False),
            9: Inbox(9, "Email", "Channel::Email"),
        }
        self.contacts: dict[int, Contact] = {}
        self.conversations: dict[int, Conversation] = {}
        self._latest: dict[tuple[int, int], Conversation] = {}  # (contact, inbox) → newest conversation
        self.calls: list[Call] = []
        self.deliveries: list[Delivery] = []
        self.status_log: list[tuple[int, str, str, str]] = []  # display id, from, to, by
        self.history: list[tuple[str, int, object]] = []  # ("message", display id, Message) and ("status", …) in order
        self.faults: list[Fault] = []
        self.delivery_holds: list[DeliveryHold] = []
        self.bot_urls: list[str] = []  # round robin (a load balancer in front of several instances)
        self._ids = itertools.count(1000)
        self._display_ids = itertools.count(40)
        self._contact_ids = itertools.count(58)
        self._rr = itertools.count()
        self._tasks: set[asyncio.Task] = set()
        self._refusing = False
        self._wall = time.time()  # creation times: distinct and increasing, as in a real installation
        self.keep_alive = True  # False: every answer closes its connection (a proxy or server that keeps none)
        self._reorder = 0.0  # deliveries delayed by up to this many seconds each (Sidekiq: no order)
        self._random = random.Random(0)
        self._auto_assign = itertools.count()
        self._window: tuple[int, dict[str, int]] = (0, {})  # rate limit: (window, requests per client IP)
        self.rate_window = 60.0  # seconds; tests shorten Chatwoot's minute to see several windows
        self.lookups_in_flight = self.max_lookups_in_flight = 0  # contact_conversations calls at a time
        self.now = time.time  # Chatwoot's clock, for signatures; tests share an injected clock with the bot
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._api)

    def has(self, feature: str) -> bool:
        return self.version >= FEATURES[feature]

    def reorder(self, max_delay: float = 1.0, seed: int = 0) -> None:
        """Deliver out of order: every delivery waits a random time up to `max_delay` seconds."""
        self._reorder, self._random = max_delay, random.Random(seed)

    def _created(self) -> float:
        self._wall = max(time.time(), self._wall + 1.0)
        return self._wall

    # ---- running --------------------------------------------------------------------------
    async def start(self, port: int = 0) -> str:
        self.runner = web.AppRunner(self.app, handler_cancellation=False)
        await self.runner.setup()
        self.site = web.TCPSite(self.runner, "127.0.0.1", port)
        await self.site.start()
        self.port = self.site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # A new connection per delivery, as Chatwoot's HTTP clients make (RestClient, then SafeFetch): a pooled
        # keep-alive connection to a bot instance that was killed and restarted would fail as no real one does.
        # Every delivery its own connection, none waiting for another: Chatwoot's 5 s start with the request
        # (its Sidekiq jobs queue before, uncounted), not in a client's connection pool.
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0))
        return self.url

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.session.close()
        await self.runner.cleanup()

    async def refuse_connections(self, seconds: float) -> None:
        """Stop listening (connections are refused), then listen again on the same port."""
        await self.site.stop()
        self._refusing = True
        await asyncio.sleep(seconds)
        self.site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await self.site.start()
        self._refusing = False

    def connect_bot(self, *urls: str, bot_id: int = 7) -> None:
        self.bot_urls = list(urls)
        self.bots[bot_id].outgoing_url = urls[0]

    def fail(
        self,
        endpoint: str = "*",
        *,
        status: int | None = None,
        times: int = 1,
        hang: float = 0.0,
        retry_after: int | None = None,
        applied: bool = False,
        drop: bool = False,
        garbled: bool = False,
    ) -> Fault:
        """Make the next `times` calls to `endpoint` fail: answer `status`, hang `hang` seconds first,
        (`applied`) carry the call out and then hang or (`drop`) close the connection without an answer, or
        (`garbled`) carry it out and answer 200 with a body that is not the endpoint's shape."""
        fault = Fault(endpoint, times, status, hang, retry_after, applied=applied, drop=drop, garbled=garbled)
        self.faults.append(fault)
        return fault

    def hold(self, endpoint: str) -> Fault:
        """Hold calls to `endpoint` until `fault.release.set()` (they are processed after)."""
        fault = Fault(endpoint, 10**6, release=asyncio.Event())
        self.faults.append(fault)
        return fault

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    # ---- the world: customers, agents, the phone ------------------------------------------
    def contact(self, name: str = "Maria Lopez", **fields) -> Contact:
        c = Contact(next(self._contact_ids), name, **fields)
        self.contacts[c.id] = c
        return c

    def conversation(self, display_id: int) -> Conversation:
        return self.conversations[display_id]

    def customer_writes(self, contact: Contact, text: str, inbox: int = 3) -> Message:
        box = self.inboxes[inbox]
        conv = self._current(contact, box)
        if conv is None or (conv.status == "resolved" and not box.single_conversation):
            conv = self._create_conversation(contact, box)
        elif conv.status == "resolved" and not contact.blocked:
            self._set_status(conv, "pending" if self._bot_active(box) else "open", "reopen")
        elif conv.status == "snoozed":
            self._set_status(conv, "open", "reopen")
        message = self._add_message(conv, text, "incoming", contact.webhook(self.account), "Contact")
        if conv.waiting_since is None:
            conv.waiting_since = time.time()
            self._saved(conv, {"waiting_since": {"previous_value": None, "current_value": iso(conv.waiting_since)}})
        return message

    def agent_writes(self, display_id: int, text: str, user_id: int = 5, private: bool = False) -> Message:
        conv, user = self.conversations[display_id], self.users[user_id]
        sender = {"id": user.id, "name": user.name, "email": f"user{user.id}@acme.example", "type": "user"}
        message = self._add_message(conv, text, "outgoing", sender, "User", private=private)
        if not private and (conv.first_reply_at is None or conv.waiting_since is not None):
            changed = {
                "waiting_since": {
                    "previous_value": iso(conv.waiting_since) if conv.waiting_since else None,
                    "current_value": None,
                }
            }
            if conv.first_reply_at is None:
                conv.first_reply_at = time.time()
                changed["first_reply_created_at"] = {"previous_value": None, "current_value": iso(conv.first_reply_at)}
            conv.waiting_since = None
            self._saved(conv, changed)
        return message

    def phone_writes(self, display_id: int, text: str) -> Message:
        """A reply typed on the business's phone, posted by Evolution API with its user token."""
        u = self.evolution_user
        sender = {"id": u.id, "name": u.name, "email": "evolution@acme.example", "type": "user"}
        return self._add_message(
            self.conversations[display_id],
            text,
            "outgoing",
            sender,
            "User",
            source_id=f"WAID:{uuid.uuid4().hex[:20].upper()}",
        )

    def edit(self, message: Message, text: str) -> None:
        """Someone edits a message: `message_updated` with the whole payload again, not new input."""
        message.content = text
        self._dispatch(
            "message_updated",
            message_payload(message, self.account, self.teams, "message_updated"),
            message.conversation,
        )

    def resolve(self, display_id: int, user_id: int = 5) -> None:
        """An agent resolves the conversation (which assigns nobody; it clears waiting_since)."""
        conv = self.conversations[display_id]
        conv.waiting_since = None
        self._set_status(conv, "resolved", f"user:{user_id}")

    def label(self, display_id: int, *labels: str) -> None:
        conv = self.conversations[display_id]
        before = list(conv.labels)
        conv.labels = sorted(set(conv.labels) | set(labels))
        self._saved(conv, {"label_list": {"previous_value": before, "current_value": conv.labels}})

    def agent_routes(
        self, display_id: int, *, assignee: int | None = None, team: int | None = None, priority: str | None = None
    ) -> None:
        """An agent, in Chatwoot's UI, assigns the conversation, moves it to a team or sets its priority (each
        a save with its conversation_updated event)."""
        conv = self.conversations[display_id]
        if assignee is not None:
            before, conv.assignee, conv.bot_owner = conv.assignee, self.users[assignee], None
            self._saved(
                conv, {"assignee_id": {"previous_value": before.id if before else None, "current_value": assignee}}
            )
        if team is not None:
            before_team, conv.team_id = conv.team_id, team
            self._saved(conv, {"team_id": {"previous_value": before_team, "current_value": team}})
        if priority is not None:
            before_priority, conv.priority = conv.priority, priority
            self._saved(conv, {"priority": {"previous_value": before_priority, "current_value": priority}})

    def set_status(self, display_id: int, status: str, by: str = "user:5") -> None:
        self._set_status(self.conversations[display_id], status, by)

    def hold_deliveries(self, predicate) -> DeliveryHold:
        """Keep deliveries for which `predicate(delivery)` is true until `hold.release()` (Sidekiq lag)."""
        hold = DeliveryHold(predicate, asyncio.Event())
        self.delivery_holds.append(hold)
        return hold

    def assign_to_bot(self, display_id: int, bot_id: int = 7, user_id: int = 5) -> None:
        """An agent hands the conversation back by assigning the bot (v4.16+, #14870)."""
        self._assign_bot(self.conversations[display_id], self.bots[bot_id], f"user:{user_id}")

    def _assign_bot(self, conv: Conversation, bot: Bot, by: str) -> None:
        conv.assignee, conv.bot_owner = None, bot  # clears the human assignee, sets pending
        self._set_status(conv, "pending", by)
        self._conversation_event("conversation_updated", conv, [{"assignee_agent_bot_id": {"current_value": bot.id}}])

    def redeliver(self, delivery: Delivery) -> None:
        """Send a delivery again with the same X-Chatwoot-Delivery (as Chatwoot's retry does)."""
        self._spawn(self._deliver(delivery))

    # ---- what happened ----------------------------------------------------------------------
    def calls_to(self, endpoint: str, display_id: int | None = None, caller: str = "bot") -> list[Call]:
        return [
            c
            for c in self.calls
            if c.endpoint == endpoint
            and c.caller == caller
            and (display_id is None or f"/conversations/{display_id}/" in c.path + "/")
        ]

    def notes(self, display_id: int) -> list[str]:
        return [m.content for m in self.conversations[display_id].messages if m.private and m.sender_type == "AgentBot"]

    def bot_messages(self, display_id: int) -> list[str]:
        return [
            m.content for m in self.conversations[display_id].messages if not m.private and m.sender_type == "AgentBot"
        ]

    def opened_by(self, display_id: int) -> list[str]:
        return [by for d, _, to, by in self.status_log if d == display_id and to == "open"]

    @property
    def fallbacks(self) -> list[int]:
        return [d for d, _, to, by in self.status_log if by == "fallback"]

    # ---- conversations and events ---------------------------------------------------------
    def _bot_active(self, box: Inbox) -> bool:
        return box.bot_id is not None

    def _current(self, contact: Contact, box: Inbox) -> Conversation | None:
        return self._latest.get((contact.id, box.id))

    def _create_conversation(self, contact: Contact, box: Inbox) -> Conversation:
        status = "resolved" if contact.blocked else ("pending" if self._bot_active(box) else "open")
        owner = self.bots[box.bot_id] if box.bot_id and status == "pending" and self.has("bot_owned") else None
        conv = Conversation(
            1,
            next(self._display_ids),
            box,
            contact,
            status,
            bot_owner=owner,
            created_at=self._created(),
            bot_owned_shape=self.has("bot_owned"),
        )
        self.conversations[conv.display_id] = conv
        self._latest[(contact.id, box.id)] = conv
        return conv

    def _add_message(self, conv, text, kind, sender, sender_type, private=False, source_id=None) -> Message:
        m = Message(next(self._ids), conv, text, kind, private, sender, sender_type, source_id)
        conv.messages.append(m)
        self.history.append(("message", conv.display_id, m))
        self._dispatch("message_created", message_payload(m, self.account, self.teams, "message_created"), conv)
        if conv.inbox.channel == "Channel::Api" and kind == "outgoing" and not private:
            for _receipt in ("delivered", "read"):  # the channel's receipts: the same payload again, no diff
                self._dispatch("message_updated", message_payload(m, self.account, self.teams, "message_updated"), conv)
        return m

    def _set_status(self, conv: Conversation, status: str, by: str) -> None:
        before = conv.status
        if before == status:
            return
        conv.status = status
        conv.updated_at = time.time()
        self.status_log.append((conv.display_id, before, status, by))
        self.history.append(("status", conv.display_id, (before, status, by)))
        changed = [{"status": {"previous_value": before, "current_value": status}}]
        if status in ("open", "resolved"):
            self._conversation_event(f"conversation_{'opened' if status == 'open' else 'resolved'}", conv)
        if self.has("change_events"):
            self._conversation_event("conversation_status_changed", conv, changed)
            self._conversation_event("conversation_updated", conv, changed)
        if status == "open" and conv.assignee is None and conv.inbox.auto_assign:
            self._auto_assign_agent(conv)

    def _auto_assign_agent(self, conv: Conversation) -> None:
        """The inbox's round-robin auto-assignment, run when a conversation opens with nobody assigned."""
        online = [u for u in self.users.values() if u.availability == "online" and u is not self.evolution_user]
        if online:
            conv.assignee = online[next(self._auto_assign) % len(online)]
            self._saved(conv, {"assignee_id": {"previous_value": None, "current_value": conv.assignee.id}})

    def _saved(self, conv: Conversation, changed: dict) -> None:
        """A save of tracked attributes: conversation_updated with changed_attributes (4.13+)."""
        conv.updated_at = time.time()
        if self.has("change_events"):
            self._conversation_event("conversation_updated", conv, [{k: v} for k, v in changed.items()])

    def _conversation_event(self, event: str, conv: Conversation, changed: list | None = None) -> None:
        payload = {**conv.push(self.teams), "event": event}
        if event in ("conversation_status_changed", "conversation_updated"):
            payload["changed_attributes"] = changed
        self._dispatch(event, payload, conv)

    def _dispatch(self, event: str, payload: dict, conv: Conversation) -> None:
        bot = self.bots.get(conv.inbox.bot_id) if conv.inbox.bot_id else None
        if bot is None or not bot.outgoing_url:
            return
        d = Delivery(event, conv.display_id, payload)
        self.deliveries.append(d)
        self._spawn(self._deliver(d, self._random.uniform(0, self._reorder) if self._reorder else 0.0))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, d: Delivery, delay: float = 0.0) -> None:
        """Webhooks::Trigger: 429/500 retried (3 attempts, 4.11+), anything else non-2xx → fallback (4.7+)."""
        if delay:
            await asyncio.sleep(delay)
        conv = self.conversations.get(d.display_id)
        bot = self.bots[conv.inbox.bot_id]
        for hold in self.delivery_holds:
            if not hold.event.is_set() and hold.predicate(d):
                hold.held.append(d)
                await hold.event.wait()
        body = json.dumps(d.payload, separators=(",", ":")).encode()
        attempts = 3 if self.has("retries") else 1
        for attempt in range(attempts):
            answer = await self._post(bot, d, body)
            if isinstance(answer, int) and 200 <= answer < 300:
                d.done = True
                return
            if answer not in (429, 500) or attempt == attempts - 1:
                break
            await asyncio.sleep(self.retry_delay)
        d.done = True
        if d.event in MESSAGE_EVENTS and conv.status == "pending" and self.has("fallback"):
            self._add_activity(conv)
            self._set_status(conv, "open", "fallback")

    async def _post(self, bot: Bot, d: Delivery, body: bytes) -> int | str:
        """One attempt. Several bot URLs stand for instances behind a load balancer: round robin, and a
        connection an instance refuses (it is down) goes to the next one."""
        urls = self.bot_urls or [bot.outgoing_url]
        first = next(self._rr)
        for n in range(len(urls)):
            answer = await self._post_to(urls[(first + n) % len(urls)], bot, d, body)
            if answer != "refused":
                break
        return answer

    async def _post_to(self, url: str, bot: Bot, d: Delivery, body: bytes) -> int | str:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.has("signed"):
            headers["X-Chatwoot-Delivery"] = d.id
        if bot.secret and self.has("signed"):
            ts = str(int(self.now()))
            sig = hmac.new(bot.secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
            headers.update({"X-Chatwoot-Timestamp": ts, "X-Chatwoot-Signature": f"sha256={sig}"})
        started = time.perf_counter()
        try:
            async with self.session.post(
                url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=self.webhook_timeout)
            ) as resp:
                answer: int | str = resp.status
        except TimeoutError:
            answer = "timeout"
        except aiohttp.ClientError:
            answer = "refused"
        d.answers.append(answer)
        d.seconds.append(time.perf_counter() - started)
        return answer

    def _add_activity(self, conv: Conversation) -> None:
        conv.messages.append(Message(next(self._ids), conv, FALLBACK_ACTIVITY, "activity", False, None, None))

    # ---- the API ----------------------------------------------------------------------------
    async def _api(self, request: web.Request) -> web.StreamResponse:
        path, method = request.path, request.method
        route = next(
            (
                (name, rx, bot_ok, admin, fn)
                for m, rx, name, bot_ok, admin, fn in ROUTES
                if m == method and rx.fullmatch(path)
            ),
            None,
        )
        body = None
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                body = None
        name = route[0] if route else {"/api": "api", "/api/v1/profile": "profile"}.get(path, "unknown")
        token = request.headers.get("api_access_token")
        caller = "anonymous"
        if token:
            caller = (
                "bot"
                if any(b.token == token for b in self.bots.values())
                else ("user" if any(u.token == token for u in self.users.values()) else "anonymous")
            )

        def answer(status: int, data=None, text: str | None = None, headers=None) -> web.Response:
            self.calls.append(Call(method, path, name, body, status, caller))
            if text is not None:
                return web.Response(status=status, text=text, headers=headers)
            if data is None:
                return web.Response(status=status)
            return web.json_response(data, status=status, headers=headers)

        if self._throttled(request.remote or "?"):
            response: web.StreamResponse = answer(429, text="Retry later")  # rack-attack: text/plain, no Retry-After
        elif name == "contact_conversations":
            self.lookups_in_flight += 1
            self.max_lookups_in_flight = max(self.max_lookups_in_flight, self.lookups_in_flight)
            try:
                response = await self._api_call(request, route, name, body, token, answer)
            finally:
                self.lookups_in_flight -= 1
        else:
            response = await self._api_call(request, route, name, body, token, answer)
        if not self.keep_alive:
            response.force_close()
        return response

    def _throttled(self, client: str) -> bool:
        """rack-attack's `req/ip` throttle: every request counts (refused ones too), fixed windows of
        `rate_window` seconds aligned to the epoch (Chatwoot: one minute)."""
        if self.rate_limit is None:
            return False
        minute = int(time.time() // self.rate_window)
        if self._window[0] != minute:
            self._window = (minute, {})
        counts = self._window[1]
        counts[client] = counts.get(client, 0) + 1
        return counts[client] > self.rate_limit

    async def _api_call(self, request, route, name, body, token, answer) -> web.StreamResponse:
        path, method = request.path, request.method
        after = None  # a fault that strikes once the call has been carried out
        for fault in list(self.faults):
            if fault.times > 0 and fault.endpoint in ("*", name):
                fault.times -= 1
                if fault.applied:
                    after = fault
                    break
                if fault.release is not None:
                    fault.times += 1
                    fault.waiting += 1
                    await fault.release.wait()
                    fault.waiting -= 1
                    break
                if fault.hang:
                    await asyncio.sleep(fault.hang)
                    fault.slept += 1
                if fault.status == 429:  # rack-attack: plain text; Retry-After only where a proxy adds one
                    retry = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
                    return answer(429, text="Retry later", headers=retry)
                if fault.status:
                    return answer(
                        fault.status, {"error": "Internal Server Error"} if fault.status >= 500 else {"error": "fault"}
                    )
                break
        bot_token = token is not None and any(b.token == token for b in self.bots.values())
        if route is None and method == "GET" and name in ("api", "profile"):
            return self._global(path, token, answer)
        if route is None:  # the bot gate comes before routing to a controller action
            return answer(401, NOT_FOR_BOTS) if bot_token else answer(404, {"error": "Not Found"})
        name, rx, bot_ok, admin_only, fn = route
        bot_ok = bot_ok and (name not in BOT_SINCE or self.has(BOT_SINCE[name]))
        match = rx.fullmatch(request.path)
        if not token:
            return answer(401, SIGN_IN)
        bot = next((b for b in self.bots.values() if b.token == token), None)
        user = next((u for u in self.users.values() if u.token == token), None)
        if bot is None and user is None:
            return answer(401, INVALID_TOKEN)
        if bot is not None and not bot_ok:
            return answer(401, NOT_FOR_BOTS)
        if int(match["account"]) != self.account["id"]:
            if bot is not None and int(match["account"]) in self.other_accounts:  # exists, but not the bot's
                return answer(401, BOT_NOT_IN_ACCOUNT)
            return answer(404, NOT_FOUND)
        if (
            bot is not None
            and bot.account_id != self.account["id"]
            and not any(i.bot_id == bot.id for i in self.inboxes.values())
        ):
            return answer(401, BOT_NOT_IN_ACCOUNT)
        if admin_only and (user is None or user.role != "administrator"):
            return answer(401, NOT_ALLOWED)
        conv = None
        if "conv" in match.groupdict():
            conv = self.conversations.get(int(match["conv"]))
            if conv is None:
                return answer(404, NOT_FOUND)
        self.query = request.query
        status, data = fn(self, match, body or {}, bot or user, conv)
        if after is not None and after.garbled:
            return answer(200, text="<html><body>Bad gateway page from a proxy</body></html>")
        response = answer(status, data)
        if after is not None:
            if after.hang:
                await asyncio.sleep(after.hang)
            if after.drop:
                request.transport.close()
        return response

    def _global(self, path: str, token: str | None, answer) -> web.Response:
        """`GET /api` (public: the version) and `GET /api/v1/profile` (a user token's own profile)."""
        if path == "/api":
            return answer(
                200,
                {
                    "version": ".".join(map(str, self.version)) + ".0",
                    "timestamp": "2026-11-26 04:00:00",
                    "queue_services": "ok",
                    "data_services": "ok",
                },
            )
        if not token:
            return answer(401, SIGN_IN)
        if any(b.token == token for b in self.bots.values()):
            return answer(401, NOT_FOR_BOTS)
        user = next((u for u in self.users.values() if u.token == token), None)
        if user is None:
            return answer(401, INVALID_TOKEN)
        return answer(200, self._profile(user))

    def _profile(self, user: User) -> dict:
        """Chatwoot's api/v1/models/_user.json.jbuilder (it includes the user's own access token)."""
        names = {self.account["id"]: self.account["name"], **self.other_accounts}
        roles = user.roles or {self.account["id"]: user.role}
        first = next(iter(roles))
        return {
            "access_token": user.token,
            "account_id": first,
            "available_name": user.name,
            "avatar_url": "",
            "confirmed": True,
            "display_name": None,
            "message_signature": None,
            "email": f"user{user.id}@acme.example",
            "id": user.id,
            "inviter_id": None,
            "name": user.name,
            "provider": "email",
            "pubsub_token": f"pubsub-{user.id}",
            "role": roles[first],
            "ui_settings": {},
            "uid": f"user{user.id}@acme.example",
            "type": "User",
            "accounts": [
                {
                    "id": a,
                    "name": names[a],
                    "status": "active",
                    "active_at": "2026-11-26T04:00:00.000Z",
                    "role": role,
                    "permissions": [role],
                    "availability": user.availability,
                    "availability_status": user.availability,
                    "auto_offline": True,
                }
                for a, role in roles.items()
            ],
        }

    # handlers: (fake, match, body, actor, conversation) → (status, json or None)
    def _toggle_status(self, match, body, actor, conv):
        status = body.get("status") or ("resolved" if conv.status == "open" else "open")
        if status not in ("open", "resolved", "pending", "snoozed"):
            return 500, {"error": f"'{status}' is not a valid status"}
        success = True
        if isinstance(actor, Bot) and conv.status == "pending" and status == "open":
            conv.waiting_since = conv.waiting_since or time.time()  # bot_handoff!
            conv.bot_owner = None
            self._set_status(conv, "open", f"bot:{actor.id}")
            success = None
        else:
            self._set_status(conv, status, f"{'bot' if isinstance(actor, Bot) else 'user'}:{actor.id}")
        return 200, {
            "meta": {},
            "payload": {
                "success": success,
                "conversation_id": conv.display_id,
                "current_status": conv.status,
                "snoozed_until": None,
            },
        }

    def _toggle_priority(self, match, body, actor, conv):
        priority = body.get("priority")
        if priority not in (None, "low", "medium", "high", "urgent"):
            return 500, {"error": f"'{priority}' is not a valid priority"}
        before, conv.priority = conv.priority, priority
        self._saved(conv, {"priority": {"previous_value": before, "current_value": priority}})
        return 200, None

    def _typing(self, match, body, actor, conv):
        return 200, None

    def _create_message(self, match, body, actor, conv):
        kind = body.get("message_type", "outgoing")
        if kind == "incoming" and conv.inbox.channel != "Channel::Api":
            return 422, {"error": "Incoming messages are only allowed in Api inboxes"}
        if not isinstance(body.get("content"), str) or not body["content"]:
            return 422, {"error": "Content can't be blank"}
        sender, stype = (
            (actor.push(), "AgentBot")
            if isinstance(actor, Bot)
            else ({"id": actor.id, "name": actor.name, "type": "user"}, "User")
        )
        m = self._add_message(conv, body["content"], kind, sender, stype, private=bool(body.get("private")))
        return 200, {
            "id": m.id,
            "content": m.content,
            "inbox_id": conv.inbox.id,
            "conversation_id": conv.display_id,
            "message_type": 1,
            "content_type": "text",
            "status": "sent",
            "content_attributes": {},
            "created_at": int(m.created_at),
            "private": m.private,
            "source_id": None,
            "sender": sender,
        }

    def _assign(self, match, body, actor, conv):
        if body.get("assignee_type") == "AgentBot":
            bot = self.bots.get(body.get("assignee_id"))
            if bot is None:
                return 404, NOT_FOUND
            self._assign_bot(conv, bot, f"user:{actor.id}")
            return 200, bot.push()
        if "assignee_id" in body:
            user = self.users.get(body["assignee_id"]) if isinstance(body["assignee_id"], int) else None
            was_bot_owned = conv.bot_owner is not None
            before = conv.assignee.id if conv.assignee else None
            conv.assignee = user
            if user is not None:
                conv.bot_owner = None
                if was_bot_owned and conv.status == "pending":  # v4.16 human takeover (#14870)
                    self._set_status(conv, "open", f"assignment:{user.id}")
            self._saved(conv, {"assignee_id": {"previous_value": before, "current_value": user.id if user else None}})
            if user is None:
                return 200, None
            return 200, {
                "id": user.id,
                "account_id": 1,
                "availability_status": user.availability,
                "auto_offline": True,
                "confirmed": True,
                "email": f"user{user.id}@acme.example",
                "available_name": user.name,
                "name": user.name,
                "role": user.role,
                "thumbnail": "",
            }
        if "team_id" in body:
            team = self.teams.get(body["team_id"])
            before, conv.team_id = conv.team_id, team["id"] if team else None
            self._saved(conv, {"team_id": {"previous_value": before, "current_value": conv.team_id}})
            return 200, team
        return 200, None

    def _show(self, match, body, actor, conv):
        return 200, conv.partial(self.teams)

    def _labels(self, match, body, actor, conv):
        return 200, {"payload": list(conv.labels)}

    def _set_labels(self, match, body, actor, conv):
        """Api::V1::Accounts::Conversations::LabelsController#create: `params.permit(labels: [])` replaces the whole
        list; a body without a list of labels clears them all (the permitted value is nil)."""
        labels = body.get("labels")
        wanted = [str(x).strip().lower() for x in labels if isinstance(x, str)] if isinstance(labels, list) else []
        before = list(conv.labels)
        conv.labels = sorted(set(filter(None, wanted)))
        if conv.labels != before:
            self._saved(conv, {"label_list": {"previous_value": before, "current_value": conv.labels}})
        return 200, {"payload": list(conv.labels)}

    def _contact_conversations(self, match, body, actor, conv):
        cid = int(match["contact"])
        mine = [c.partial(self.teams) for c in self.conversations.values() if c.contact.id == cid]
        return 200, {"payload": list(reversed(mine))[:20]}

    def _list_conversations(self, match, body, actor, conv):
        """ConversationFinder + conversations/index.json.jbuilder: status (default open, "all"), inbox_id,
        assignee_type (me, unassigned, assigned, else all), 25 a page, latest activity first; the counts are
        taken before the assignee filter."""
        q = self.query
        status = q.get("status") or "open"
        found = [
            c
            for c in self.conversations.values()
            if c.account_id == int(match["account"]) and (status == "all" or c.status == status)
        ]
        if q.get("inbox_id"):
            found = [c for c in found if str(c.inbox.id) == q["inbox_id"]]
        counts = {
            "mine_count": sum(c.assignee is actor for c in found),
            "assigned_count": sum(c.assignee is not None for c in found),
            "unassigned_count": sum(c.assignee is None for c in found),
            "all_count": len(found),
        }
        kind = q.get("assignee_type")
        if kind == "me":
            found = [c for c in found if c.assignee is actor]
        elif kind in ("unassigned", "assigned"):
            found = [c for c in found if (c.assignee is None) == (kind == "unassigned")]
        found.sort(key=lambda c: (c.last_activity_at(), c.display_id), reverse=True)
        page = int(q["page"]) if q.get("page", "").isdigit() and int(q["page"]) > 0 else 1
        shown = found[(page - 1) * LIST_PAGE : page * LIST_PAGE]
        return 200, {"data": {"meta": counts, "payload": [c.partial(self.teams) for c in shown]}}

    def _messages_index(self, match, body, actor, conv):
        """MessageFinder: the latest 20 messages of any kind, oldest first, with the conversation's meta."""
        meta = {
            "labels": list(conv.labels),
            "additional_attributes": {"browser_language": conv.browser_language},
            "contact": conv.contact.push(),
            "assignee": conv.assignee.push() if conv.assignee else None,
            "agent_last_seen_at": None,
            "assignee_last_seen_at": None,
        }
        return 200, {"meta": meta, "payload": [conv._message_push(m) for m in conv.messages[-20:]]}

    def age(self, display_id: int, seconds: float) -> None:
        """Move a conversation and its messages `seconds` into the past (written while the bot was away)."""
        conv = self.conversations[display_id]
        conv.created_at -= seconds
        for m in conv.messages:
            m.created_at -= seconds
        conv.waiting_since = conv.waiting_since and conv.waiting_since - seconds
        conv.first_reply_at = conv.first_reply_at and conv.first_reply_at - seconds

    def _inboxes(self, match, body, actor, conv):
        return 200, {
            "payload": [{"id": i.id, "name": i.name, "channel_type": i.channel} for i in self.inboxes.values()]
        }

    def _inbox_bot(self, match, body, actor, conv):
        inbox = self.inboxes.get(int(match["inbox"]))
        if inbox is None:
            return 404, NOT_FOUND
        bot = self.bots.get(inbox.bot_id) if inbox.bot_id else None
        return 200, {"agent_bot": bot.json() if bot else {}}

    def _set_agent_bot(self, match, body, actor, conv):
        inbox = self.inboxes.get(int(match["inbox"]))
        if inbox is None:
            return 404, NOT_FOUND
        bot_id = body.get("agent_bot")
        if bot_id is not None and bot_id not in self.bots:
            return 404, NOT_FOUND
        inbox.bot_id = bot_id
        return 200, None

    def _teams(self, match, body, actor, conv):
        """api/v1/accounts/teams/index.json.jbuilder: a bare array of teams."""
        return 200, [{**t, "is_member": False} for t in self.teams.values()]

    def _agents(self, match, body, actor, conv):
        """api/v1/accounts/agents/index.json.jbuilder: a bare array of the account's users, with their role."""
        account = self.account["id"]
        return 200, [
            {**u.push(), "role": (u.roles or {account: u.role}).get(account), "email": f"user{u.id}@acme.example"}
            for u in self.users.values()
            if account in (u.roles or {account: u.role})
        ]

    def _agent_bots(self, match, body, actor, conv):
        return 200, [b.json() for b in self.bots.values()]

    def _create_bot(self, match, body, actor, conv):
        if not body.get("name"):
            return 422, {"message": "Name can't be blank", "attributes": ["name"]}
        bot_id = max(self.bots) + 1
        bot = Bot(
            bot_id,
            body["name"],
            f"bot-token-{bot_id}",
            outgoing_url=body.get("outgoing_url", ""),
            secret=f"bot-secret-{bot_id}-{uuid.uuid4().hex[:12]}",
            description=body.get("description", ""),
        )
        self.bots[bot_id] = bot
        return 200, bot.json()

    def _update_bot(self, match, body, actor, conv):
        bot = self.bots.get(int(match["bot"]))
        if bot is None:
            return 404, NOT_FOUND
        for key in ("name", "outgoing_url", "description"):
            if key in body:
                setattr(bot, key, body[key])
        return 200, bot.json()


def _rx(pattern: str) -> re.Pattern[str]:
    pattern = pattern.replace("{account}", r"(?P<account>\d+)").replace("{conv}", r"(?P<conv>\d+)")
    pattern = (
        pattern.replace("{contact}", r"(?P<contact>\d+)")
        .replace("{inbox}", r"(?P<inbox>\d+)")
        .replace("{bot}", r"(?P<bot>\d+)")
    )
    return re.compile("/api/v1/accounts/{account}".replace("{account}", r"(?P<account>\d+)") + pattern)


F = FakeChatwoot
BOT_SINCE = {
    "show": "bot_reads",
    "toggle_typing_status": "bot_typing",
    "labels": "bot_reads",
    "set_labels": "bot_reads",
}  # bot-token endpoints added later
# method, path, route name, allowed for bot tokens, administrators only, handler
ROUTES = [
    ("POST", _rx("/conversations/{conv}/toggle_status"), "toggle_status", True, False, F._toggle_status),
    ("POST", _rx("/conversations/{conv}/toggle_priority"), "toggle_priority", True, False, F._toggle_priority),
    ("POST", _rx("/conversations/{conv}/toggle_typing_status"), "toggle_typing_status", True, False, F._typing),
    ("POST", _rx("/conversations/{conv}/messages"), "messages", True, False, F._create_message),
    ("GET", _rx("/conversations/{conv}/messages"), "messages_index", False, False, F._messages_index),
    ("POST", _rx("/conversations/{conv}/assignments"), "assignments", True, False, F._assign),
    ("GET", _rx("/conversations/{conv}"), "show", True, False, F._show),
    ("GET", _rx("/conversations/{conv}/labels"), "labels", True, False, F._labels),
    ("POST", _rx("/conversations/{conv}/labels"), "set_labels", True, False, F._set_labels),
    ("GET", _rx("/conversations"), "conversations", False, False, F._list_conversations),
    ("GET", _rx("/contacts/{contact}/conversations"), "contact_conversations", False, False, F._contact_conversations),
    ("GET", _rx("/inboxes"), "inboxes", False, False, F._inboxes),
    ("GET", _rx("/inboxes/{inbox}/agent_bot"), "inbox_agent_bot", False, False, F._inbox_bot),
    ("POST", _rx("/inboxes/{inbox}/set_agent_bot"), "set_agent_bot", False, True, F._set_agent_bot),
    ("GET", _rx("/agent_bots"), "agent_bots", False, False, F._agent_bots),
    ("POST", _rx("/agent_bots"), "agent_bots_create", False, True, F._create_bot),
    ("PATCH", _rx("/agent_bots/{bot}"), "agent_bots_update", False, True, F._update_bot),
    # the operator page's names
    ("GET", _rx("/teams"), "teams", False, False, F._teams),
    ("GET", _rx("/agents"), "agents", False, False, F._agents),
]
