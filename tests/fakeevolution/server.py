"""A fake Evolution API 2.x on loopback that holds the bot to Evolution's rules.

Built from Evolution's source (EvolutionAPI/evolution-api 2.3.6): `src/api/routes/index.router.ts` (the guards, in
the order instanceExistsGuard → instanceLoggedGuard → authGuard.apikey), `src/api/guards/*.ts`,
`src/api/abstract/abstract.router.ts` (routerPath, the JSON-schema check), `.../chatbot/*/validate/*.schema.ts`
(`…StatusSchema`), `base-chatbot.controller.ts` (`changeStatus`), `instance.controller.ts` (`fetchInstances`),
`src/exceptions/*` and the error handler in `src/main.ts` (the body of every error). Where it could differ from a
real Evolution it is the harsher one: paths are case-sensitive (Express's are not) and every call is recorded.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from urllib.parse import unquote

from aiohttp import web

# The route segment → the controller's `integrationName` (its "… is disabled" message).
INTEGRATIONS = {
    "typebot": "Typebot",
    "openai": "Openai",
    "dify": "Dify",
    "n8n": "N8n",
    "flowise": "Flowise",
    "evolutionBot": "EvolutionBot",
    "evoai": "Evoai",
}
ALWAYS_ENABLED = {"evolutionBot"}  # EvolutionBotController: `integrationEnabled = true`, no switch in the env
STATUSES = ("opened", "closed", "paused", "delete")  # the schema's enum, in its order
GLOBAL_KEY = "B6D711FCDE4D4FD5936544120E713976"  # AUTHENTICATION_API_KEY in Evolution's .env.example


def error_body(status: int, error: str, message: object) -> dict:
    """main.ts's error handler: `{status, error, response: {message}}`."""
    return {"status": status, "error": error, "response": {"message": message}}


UNAUTHORIZED = error_body(401, "Unauthorized", "Unauthorized")  # new UnauthorizedException(): a plain string


@dataclass
class Instance:
    name: str
    token: str
    connection: str = "open"  # InstanceConnectionStatus: open, close, connecting
    loaded: bool = True  # in waMonitor; a Typebot changeStatus of an unloaded instance fails (sendDataWebhook)
    keep_open: set[str] = field(default_factory=set)  # integrations whose settings have keepOpen on
    name_inbox: str | None = None  # its Chatwoot integration's nameInbox


@dataclass
class Session:
    """A row of IntegrationSession: one contact's conversation with one bot."""

    id: int
    instance: str
    remote_jid: str
    integration: str
    status: str = "opened"  # opened, paused, closed
    bot_id: str | None = "bot-1"


@dataclass
class Call:
    method: str
    path: str
    endpoint: str  # "changeStatus", "fetchSettings", "fetchInstances" or "unknown"
    integration: str | None
    instance: str | None
    body: dict | None
    status: int
    key: str  # "global", "instance", "wrong" or "none"
    at: float = field(default_factory=time.monotonic)


@dataclass
class Fault:
    endpoint: str  # "changeStatus", "fetchInstances" or "*"
    times: int
    status: int | None = None
    hang: float = 0.0
    applied: bool = False  # carry the call out, then hang `hang` or (`drop`) close the connection unanswered
    drop: bool = False
    slept: int = 0  # calls that waited out `hang`


class FakeEvolution:
    def __init__(self, *, key: str = GLOBAL_KEY, disabled: set[str] | None = None):
        self.key = key
        self.disabled = set(disabled or ())  # integrations switched off in the environment (TYPEBOT_ENABLED=false)
        self.instances = {"WhatsApp": Instance("WhatsApp", "instance-token-whatsapp", name_inbox="WhatsApp")}
        self.sessions: list[Session] = []
        self.calls: list[Call] = []
        self.faults: list[Fault] = []
        self.replies: list[tuple[str, str, str]] = []  # (instance, jid, integration): a bot answered the contact
        self._ids = itertools.count(1)
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    # ---- running ----------------------------------------------------------------------------
    async def start(self, port: int = 0) -> str:
        self.runner = web.AppRunner(self.app, handler_cancellation=False, shutdown_timeout=0.2)  # hanging calls end
        await self.runner.setup()
        self.site = web.TCPSite(self.runner, "127.0.0.1", port)
        await self.site.start()
        self.port = self.site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{self.port}"
        return self.url

    async def close(self) -> None:
        await self.runner.cleanup()

    async def down(self) -> None:
        """Stop listening: connections are refused until `up()`."""
        await self.site.stop()

    async def up(self) -> None:
        self.site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await self.site.start()

    def fail(
        self,
        endpoint: str = "*",
        *,
        status: int | None = None,
        times: int = 1,
        hang: float = 0.0,
        applied: bool = False,
        drop: bool = False,
    ) -> Fault:
        """Make the next `times` calls to `endpoint` answer `status` (500: Evolution's own error body), hang `hang`
        seconds first, or (`applied`) carry the call out and then hang or (`drop`) close the connection."""
        fault = Fault(endpoint, times, status, hang, applied, drop)
        self.faults.append(fault)
        return fault

    # ---- the world: WhatsApp contacts talking to Evolution's bots ---------------------------
    def add_instance(self, name: str, token: str | None = None, **fields) -> Instance:
        instance = Instance(name, token or f"instance-token-{name.lower()}", **fields)
        self.instances[name] = instance
        return instance

    def customer_writes(self, jid: str, instance: str = "WhatsApp", integration: str = "typebot") -> bool:
        """A WhatsApp message reaches Evolution's bots (base-chatbot.controller `emit`): the contact's newest session
        decides. Opened: the bot answers; paused or closed: silence; none: the trigger starts an opened session and
        the bot answers. Returns whether a bot answered."""
        session = self.session(jid, instance)
        if session is None:
            session = Session(next(self._ids), instance, jid, integration)
            self.sessions.append(session)
        if session.status != "opened":
            return False
        self.replies.append((instance, jid, session.integration))
        return True

    def session(self, jid: str, instance: str = "WhatsApp") -> Session | None:
        """The contact's newest session on `instance` (getSession: `orderBy createdAt desc`)."""
        mine = [s for s in self.sessions if s.remote_jid == jid and s.instance == instance]
        return mine[-1] if mine else None

    def statuses(self, jid: str) -> list[str]:
        """The statuses every changeStatus call that Evolution accepted asked for `jid`, in order."""
        return [c.body["status"] for c in self.calls_to("changeStatus") if c.body and c.body.get("remoteJid") == jid]

    def calls_to(self, endpoint: str, accepted: bool = True) -> list[Call]:
        return [c for c in self.calls if c.endpoint == endpoint and (c.status == 200 or not accepted)]

    # ---- the API ----------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        # Express matches the raw path, then decodes each parameter (an instance name may hold %2F)
        parts = [unquote(part) for part in request.raw_path.split("?")[0].strip("/").split("/")]
        raw = await request.read()
        body = _json(raw)
        endpoint, integration, instance = "unknown", None, None
        if request.method == "POST" and len(parts) == 3 and parts[1] == "changeStatus" and parts[0] in INTEGRATIONS:
            endpoint, integration, instance = "changeStatus", parts[0], parts[2]
        elif request.method == "GET" and len(parts) == 3 and parts[1] == "fetchSettings" and parts[0] in INTEGRATIONS:
            endpoint, integration, instance = "fetchSettings", parts[0], parts[2]
        elif request.method == "GET" and parts == ["instance", "fetchInstances"]:
            endpoint = "fetchInstances"
        key = request.headers.get("apikey")
        who = self._who(key, instance)

        def answer(status: int, data: object) -> web.Response:
            self.calls.append(Call(request.method, request.path, endpoint, integration, instance, body, status, who))
            return web.json_response(data, status=status)

        after = None
        for fault in self.faults:
            if fault.times > 0 and fault.endpoint in ("*", endpoint):
                fault.times -= 1
                if fault.applied:
                    after = fault
                    break
                if fault.hang:
                    await asyncio.sleep(fault.hang)
                    fault.slept += 1
                if fault.status:
                    return answer(fault.status, error_body(fault.status, "Internal Server Error", "fault"))
                break
        status, data = self._route(request, endpoint, integration, instance, key, who, raw, body)
        response = answer(status, data)
        if after is not None:
            if after.hang:
                await asyncio.sleep(after.hang)
                after.slept += 1
            if after.drop and request.transport is not None:
                request.transport.close()
        return response

    def _who(self, key: str | None, instance: str | None) -> str:
        if not key:
            return "none"
        if key == self.key:
            return "global"
        if instance is not None:
            found = self.instances.get(instance)
            return "instance" if found is not None and found.token == key else "wrong"
        return "instance" if any(i.token == key for i in self.instances.values()) else "wrong"

    def _route(self, request, endpoint, integration, instance, key, who, raw, body) -> tuple[int, object]:
        if endpoint == "unknown":  # Express's fall-through handler
            return 404, error_body(404, "Not Found", [f"Cannot {request.method} {request.path_qs}"])
        if instance is not None and instance not in self.instances:  # instanceExistsGuard comes first
            return 404, error_body(404, "Not Found", [f'The "{instance}" instance does not exist'])
        if who in ("none", "wrong"):  # authGuard.apikey
            return 401, UNAUTHORIZED
        if endpoint == "fetchInstances":
            return self._fetch_instances(key)
        if endpoint == "fetchSettings":
            return self._fetch_settings(integration, self.instances[instance])
        if raw and body is None:  # express.json(): body-parser's SyntaxError, status 400, no `error` field
            return 400, error_body(400, "Internal Server Error", "Unexpected token in JSON")
        problems = _validate(body or {})
        if problems:
            return 400, error_body(400, "Bad Request", [problems])  # new BadRequestException(message[])
        return self._change_status(integration, self.instances[instance], body)

    def _fetch_instances(self, key: str) -> tuple[int, object]:
        """instance.controller fetchInstances: every instance with the global key, else those with that token."""
        shown = [i for i in self.instances.values() if key == self.key or i.token == key]
        if not shown:
            return 401, UNAUTHORIZED
        return 200, [_instance_info(i) for i in shown]

    def _fetch_settings(self, integration: str, instance: Instance) -> tuple[int, object]:
        """base-chatbot.controller fetchSettings: Evolution's defaults when the instance has no settings row."""
        if integration in self.disabled and integration not in ALWAYS_ENABLED:
            return 400, error_body(400, "Bad Request", [f"{INTEGRATIONS[integration]} is disabled"])
        return 200, {
            "expire": 300,
            "keywordFinish": "bye",
            "delayMessage": 1000,
            "unknownMessage": "Sorry, I dont understand",
            "listeningFromMe": True,
            "stopBotFromMe": True,
            "keepOpen": integration in instance.keep_open,
            "debounceTime": 1,
            "ignoreJids": [],
            "fallback": None,
        }

    def _change_status(self, integration: str, instance: Instance, body: dict) -> tuple[int, object]:
        name = INTEGRATIONS[integration]
        if integration in self.disabled and integration not in ALWAYS_ENABLED:
            return 400, error_body(400, "Bad Request", [f"{name} is disabled"])
        if integration == "typebot" and not instance.loaded:  # waMonitor.waInstances[…] is undefined
            return 500, error_body(500, "Internal Server Error", f"Error changing {name} status")
        jid, status = body["remoteJid"], body["status"]
        # Every integration's sessions (the table is shared); closed and delete reach every instance (2.3.x).
        mine = [s for s in self.sessions if s.remote_jid == jid and s.bot_id is not None]
        if status == "delete" or (status == "closed" and integration not in instance.keep_open):
            self.sessions = [s for s in self.sessions if s not in mine]
        elif status == "closed":
            for s in mine:
                s.status = "closed"
        else:
            here = [s for s in mine if s.instance == instance.name]
            for s in here:
                s.status = status
            return 200, {
                "bot": {
                    "instanceName": instance.name,
                    "bot": {"remoteJid": jid, "status": status, "session": {"count": len(here)}},
                }
            }
        if status == "delete":
            return 200, {"bot": {"remoteJid": jid, "status": status}}
        return 200, {"bot": {"instanceName": instance.name, "bot": {"remoteJid": jid, "status": status}}}


def _json(raw: bytes) -> dict | None:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _validate(body: dict) -> list[str]:
    """The `…StatusSchema` check with jsonschema's messages, as abstract.router's dataValidate words them."""
    problems = [f'instance requires property "{name}"' for name in ("remoteJid", "status") if name not in body]
    for name in ("remoteJid", "status"):
        if name in body and not isinstance(body[name], str):
            problems.append(f"{name} is not of a type(s) string")
        elif name in body and body[name] == "":
            problems.append(f'The "{name}" cannot be empty')
    if isinstance(body.get("status"), str) and body["status"] and body["status"] not in STATUSES:
        problems.append(f"status is not one of enum values: {','.join(STATUSES)}")
    return problems


def _instance_info(i: Instance) -> dict:
    """waMonitor.instanceInfo: the Instance row with its relations (tokens included, as Evolution sends them)."""
    return {
        "id": f"id-{i.name}",
        "name": i.name,
        "connectionStatus": i.connection,
        "ownerJid": "5511999990000@s.whatsapp.net",
        "profileName": i.name,
        "integration": "WHATSAPP-BAILEYS",
        "token": i.token,
        "clientName": "evolution_exchange",
        "Chatwoot": {"enabled": True, "nameInbox": i.name_inbox, "token": "chatwoot-user-token"},
        "Setting": {"groupsIgnore": False},
        "_count": {"Message": 0, "Contact": 0, "Chat": 0},
    }
