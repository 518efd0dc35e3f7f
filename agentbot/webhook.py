"""POST /webhook: token, size limit, signature, JSON → Delivery, then the decision; always a quick answer.

Only a delivery proven to come from Chatwoot (the WEBHOOK_TOKEN in its path, or a valid signature)
gets the decision in its answer; any other gets `{"ok": true}`, so an outsider learns nothing."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

import msgspec
from aiohttp import web
from loguru import logger
from pydantic import SecretStr

from .eager import within
from .events import BadBody, PayloadError, event_label, parse
from .handoffs import RELEASE_WITHIN, Busy, Handoffs
from .store import Lapsed, store_failure

MAX_BODY = 1024 * 1024
MAX_SKEW = 300  # seconds; older signed deliveries are refused as replays
ANSWER_WITHIN = 4.5  # seconds: Chatwoot gives up on a delivery after 5 s and does not retry a timeout
# A delivery cut short still releases its conversation's lock (for RELEASE_WITHIN at most) before the answer.
DECIDE_WITHIN = ANSWER_WITHIN - RELEASE_WITHIN
JSON = {"Content-Type": "application/json"}
OK = b'{"ok":true}'


def answer(data: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, headers=JSON)


def error(status: int, message: str) -> web.Response:
    return answer({"error": message}, status)


def signature_problem(secret: str, headers: Mapping[str, str], body: bytes, now: float) -> str | None:
    """None when `X-Chatwoot-Signature` is HMAC-SHA256("<timestamp>.<body>") and fresh."""
    timestamp, given = headers.get("X-Chatwoot-Timestamp", ""), headers.get("X-Chatwoot-Signature", "")
    if not timestamp or not given:
        return "missing X-Chatwoot-Signature or X-Chatwoot-Timestamp"
    try:
        age = now - int(timestamp)
    except ValueError:
        return "X-Chatwoot-Timestamp is not a unix time"
    if abs(age) > MAX_SKEW:
        return "X-Chatwoot-Timestamp is outside the 5 minute window"
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), given.encode()):
        return "signature does not match"
    return None


def token_matches(expected: SecretStr | None, request: web.Request) -> bool:
    """Constant-time comparison of the path's token with WEBHOOK_TOKEN (None: no token configured)."""
    if expected is None:
        return False
    given = request.match_info.get("token", "")
    return hmac.compare_digest(given.encode(), expected.get_secret_value().encode())


async def receive(handoffs: Handoffs, request: web.Request) -> web.Response:
    """The handler; app.py passes the running app's Handoffs."""
    settings = handoffs.settings
    verified = token_matches(settings.webhook_token, request)
    if settings.webhook_token is not None and not verified:
        raise web.HTTPNotFound()  # the same answer as any unknown path; the path is not echoed
    if request.method != "POST":
        raise web.HTTPMethodNotAllowed(request.method, ["POST"])
    if (request.content_length or 0) > MAX_BODY:
        return error(413, f"body larger than {MAX_BODY} bytes")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return error(413, f"body larger than {MAX_BODY} bytes")
    secret = settings.chatwoot_bot_secret
    if secret is not None:
        problem = signature_problem(secret.get_secret_value(), request.headers, body, handoffs.clock().timestamp())
        if problem:
            logger.warning("webhook refused: {}", problem)
            return error(401, problem)
        verified = True
    delivery_id = request.headers.get("X-Chatwoot-Delivery")
    try:
        delivery = parse(body, delivery_id)
    except BadBody as exc:
        return error(400, str(exc))
    except PayloadError as exc:
        logger.warning(
            "{} delivery {} acknowledged without acting: {}", exc.event or "unnamed", delivery_id or "-", exc
        )
        handoffs.metrics.delivered(event_label(exc.event), "invalid")
        return answer({"outcome": "ignore", "reason": str(exc)}) if verified else _ok()
    try:
        # the body as sent: forwarded if it is the team's bot's
        decision = handoffs.ignored(delivery, body)  # most deliveries: no coroutine, no time limit to set
        if decision is None:
            decision = await within(handoffs.handle(delivery, body), DECIDE_WITHIN)
    except (Busy, Lapsed) as exc:  # Chatwoot retries a 500 three seconds later
        logger.warning("{} delivery {} answered 500: {}", delivery.event, delivery_id or "-", exc)
        return error(500, f"could not handle the delivery ({type(exc).__name__})")
    except TimeoutError:  # a stalled store: a 500 is retried (and deduplicated), a timeout opens the conversation
        logger.warning(
            "{} delivery {} answered 500: not handled within {} s", delivery.event, delivery_id or "-", DECIDE_WITHIN
        )
        return error(500, "could not handle the delivery in time")
    except Exception as exc:  # the store is unreachable, say: Chatwoot retries 500, then opens it
        if store_failure(exc):  # one line each, not a traceback per delivery while the store is down
            logger.error(
                "{} delivery {} answered 500: the store failed ({!r})", delivery.event, delivery_id or "-", exc
            )
        else:
            logger.exception("{} delivery {} could not be handled: {}", delivery.event, delivery_id or "-", exc)
        return error(500, f"could not handle the delivery ({type(exc).__name__})")
    return answer({"outcome": decision.outcome, "reason": decision.reason}) if verified else _ok()


def _ok() -> web.Response:
    return web.Response(body=OK, headers=JSON)
