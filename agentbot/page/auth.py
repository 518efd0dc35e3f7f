"""Operator sign-in: a Chatwoot access token checked with Chatwoot, a signed session cookie, CSRF, limits."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import deque

import msgspec
from aiohttp import web
from itsdangerous import BadSignature, URLSafeSerializer

from ..chatwoot import Chatwoot, ChatwootError
from ..config import Settings

COOKIE = "agentbot_session"
SESSION_SECONDS = 8 * 3600
FAILURES_PER_CLIENT, FAILURES_OVERALL, WINDOW = 5, 30, 60.0  # failed sign-ins allowed per minute


class Session(msgspec.Struct, frozen=True):
    user_id: int
    name: str
    accounts: list[int]  # handled accounts this user administers
    csrf: str
    expires: float


class Sessions:
    """Signed (not encrypted) cookies. The signing key is derived with HMAC by itsdangerous from the bot's
    own token and secret, so every instance with the same settings accepts the others' sessions."""

    def __init__(self, settings: Settings):
        material = "\n".join(
            s.get_secret_value() for s in (settings.chatwoot_bot_token, settings.chatwoot_bot_secret) if s
        )
        # Without key material (no CHATWOOT_BOT_TOKEN: never when serving) nobody can sign in.
        self._serializer = (
            URLSafeSerializer(
                material,
                salt="agentbot operator session v1",
                signer_kwargs={"key_derivation": "hmac", "digest_method": hashlib.sha256},
            )
            if material
            else None
        )

    def issue(self, user_id: int, name: str, accounts: list[int], now: float) -> tuple[str, Session]:
        if self._serializer is None:
            raise Refused("the bot has no CHATWOOT_BOT_TOKEN to sign sessions with")
        session = Session(user_id, name, accounts, secrets.token_urlsafe(24), now + SESSION_SECONDS)
        return self._serializer.dumps(msgspec.to_builtins(session)), session

    def read(self, request: web.Request, now: float) -> tuple[Session | None, bool]:
        """(the session, whether a cookie was there but expired or invalid)."""
        raw = request.cookies.get(COOKIE)
        if not raw or self._serializer is None:
            return None, False
        try:
            session = msgspec.convert(self._serializer.loads(raw), Session)
        except (BadSignature, msgspec.ValidationError):
            return None, True
        return (session, False) if session.expires > now else (None, True)

    @staticmethod
    def set_cookie(response: web.StreamResponse, request: web.Request, value: str) -> None:
        secure = request.secure or request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip() == "https"
        response.set_cookie(
            COOKIE, value, max_age=SESSION_SECONDS, path="/", httponly=True, samesite="Strict", secure=secure
        )

    @staticmethod
    def clear(response: web.StreamResponse) -> None:
        response.del_cookie(COOKIE, path="/")


def csrf_ok(session: Session, form_value: object) -> bool:
    return isinstance(form_value, str) and hmac.compare_digest(session.csrf, form_value)


def client_of(request: web.Request) -> str:
    """The browser's address (behind a PaaS router, the first X-Forwarded-For hop; the overall limit
    covers anyone who forges it)."""
    forwarded = request.headers.get("X-Forwarded-For", "").split(",")[0].strip()
    return forwarded or request.remote or "?"


class SignInLimiter:
    """Failed sign-ins per client and overall in the last minute (per instance)."""

    def __init__(self) -> None:
        self._failures: deque[tuple[float, str]] = deque()

    def retry_after(self, client: str, now: float) -> float | None:
        while self._failures and self._failures[0][0] <= now - WINDOW:
            self._failures.popleft()
        mine = [at for at, who in self._failures if who == client]
        if len(mine) >= FAILURES_PER_CLIENT:
            return mine[0] + WINDOW - now
        if len(self._failures) >= FAILURES_OVERALL:
            return self._failures[0][0] + WINDOW - now
        return None

    def failed(self, client: str, now: float) -> None:
        self._failures.append((now, client))


class Refused(Exception):
    """A sign-in that is not admitted; the message is shown to the person and logged."""


async def admit(chatwoot: Chatwoot, settings: Settings, token: str) -> tuple[int, str, list[int]]:
    """(user id, name, accounts) for an administrator of an account this bot works in; else Refused."""
    try:
        profile = await chatwoot.profile(token)
    except ChatwootError as exc:
        if exc.status == 401:
            raise Refused("Chatwoot did not accept this access token") from None
        raise Refused(f"Chatwoot could not check the token ({exc.status or 'no answer'})") from None
    name = profile.name or "?"
    admin = [a.id for a in profile.accounts if a.role == "administrator" and a.id is not None]
    if settings.chatwoot_account_ids:
        admin = [a for a in admin if a in settings.chatwoot_account_ids]
    handled = [a for a in admin if await _bot_works_in(chatwoot, a)]
    if not handled:
        raise Refused(f"{name} is not an administrator of an account this bot works in")
    return profile.id, name, handled


async def _bot_works_in(chatwoot: Chatwoot, account: int) -> bool:
    try:
        await chatwoot.probe_bot_token(account)
    except ChatwootError:
        return False
    return True
