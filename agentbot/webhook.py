"""POST /webhook: size limit, signature, JSON → Delivery, then the decision; always a quick answer."""
from __future__ import annotations

import hashlib
import hmac

import msgspec
from aiohttp import web
from loguru import logger

from .events import BadBody, PayloadError, event_label, parse

MAX_BODY = 1024 * 1024
MAX_SKEW = 300  # seconds; older signed deliveries are refused as replays
JSON = {"Content-Type": "application/json"}


def answer(data: dict, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, headers=JSON)


def error(status: int, message: str) -> web.Response:
    return answer({"error": message}, status)


def signature_problem(secret: str, headers, body: bytes, now: float) -> str | None:
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


async def receive(bot, request: web.Request) -> web.Response:
    """The handler, bound to the app's Bot by app.py."""
    if (request.content_length or 0) > MAX_BODY:
        return error(413, f"body larger than {MAX_BODY} bytes")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return error(413, f"body larger than {MAX_BODY} bytes")
    secret = bot.settings.chatwoot_bot_secret
    if secret is not None:
        problem = signature_problem(secret.get_secret_value(), request.headers, body, bot.clock().timestamp())
        if problem:
            logger.warning("webhook refused: {}", problem)
            return error(401, problem)
    delivery_id = request.headers.get("X-Chatwoot-Delivery")
    try:
        delivery = parse(body, delivery_id)
    except BadBody as exc:
        return error(400, str(exc))
    except PayloadError as exc:
        logger.warning("{} delivery {} acknowledged without acting: {}", exc.event or "unnamed", delivery_id or "-", exc)
        bot.metrics.delivered(event_label(exc.event), "invalid")
        return answer({"outcome": "ignore", "reason": str(exc)})
    try:
        decision = await bot.handoffs.handle(delivery)
    except Exception as exc:  # the store is unreachable, say: Chatwoot retries 500, then opens it
        logger.exception("{} delivery {} could not be handled: {}", delivery.event, delivery_id or "-", exc)
        return error(500, f"could not handle the delivery ({type(exc).__name__})")
    return answer({"outcome": decision.outcome, "reason": decision.reason})
