"""Operator sign-in: a Chatwoot access token checked with Chatwoot, an encrypted session cookie that the server
can end, the role re-checked with Chatwoot, CSRF, and the per-address sign-in limiter."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from collections import deque

import msgspec
from aiohttp import web
from cryptography.fernet import Fernet, InvalidToken

from ..chatwoot import Chatwoot, ChatwootError
from ..config import Settings
from ..store import Store

COOKIE = "agentbot_session"
SESSION_SECONDS = 8 * 3600
RECHECK_SECONDS = 300  # the role and accounts are asked of Chatwoot again after this long, and before every action
FAILURES_PER_CLIENT, WINDOW = 5, 60.0  # failed sign-ins allowed per client address per minute
ENDED = "operator-session-ended:"  # store key prefix of sessions ended by signing out


class Session(msgspec.Struct, frozen=True):
    id: str  # what a sign-out ends, for every copy of the cookie
    user_id: int
    name: str
    accounts: list[int]  # handled accounts this user administers
    csrf: str
    expires: float
    checked: float  # when Chatwoot last confirmed the role and accounts
    token: str  # the operator's Chatwoot access token, to re-check them (the cookie is encrypted)


class Sessions:
    """Encrypted and authenticated cookies (Fernet). The key is derived with HMAC-SHA256 from the bot's own token
    and secret, so every instance with the same settings accepts the others' sessions, and no one can read the
    operator's token out of a cookie."""

    def __init__(self, settings: Settings):
        material = "\n".join(
            s.get_secret_value() for s in (settings.chatwoot_bot_token, settings.chatwoot_bot_secret) if s
        )
        # Without key material (no CHATWOOT_BOT_TOKEN: never when serving) nobody can sign in.
        key = hmac.digest(material.encode(), b"agentbot operator session v2", hashlib.sha256)
        self._fernet = Fernet(base64.urlsafe_b64encode(key)) if material else None

    def issue(self, user_id: int, name: str, accounts: list[int], token: str, now: float) -> tuple[str, Session]:
        if self._fernet is None:
            raise Refused("the bot has no CHATWOOT_BOT_TOKEN to sign sessions with")
        session = Session(
            secrets.token_urlsafe(16),
            user_id,
            name,
            accounts,
            secrets.token_urlsafe(24),
            now + SESSION_SECONDS,
            now,
            token,
        )
        return self.encode(session), session

    def encode(self, session: Session) -> str:
        assert self._fernet is not None  # a session exists only where one could be issued
        return self._fernet.encrypt(msgspec.json.encode(session)).decode()

    def read(self, request: web.Request, now: float) -> tuple[Session | None, bool]:
        """(the session, whether a cookie was there but expired or invalid)."""
        raw = request.cookies.get(COOKIE)
        if not raw or self._fernet is None:
            return None, False
        try:
            session = msgspec.json.decode(self._fernet.decrypt(raw), type=Session)
        except (InvalidToken, msgspec.DecodeError):
            return None, True
        return (session, False) if session.expires > now else (None, True)

    @staticmethod
    def set_cookie(response: web.StreamResponse, request: web.Request, value: str, expires: float, now: float) -> None:
        secure = request.secure or request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip() == "https"
        response.set_cookie(
            COOKIE,
            value,
            max_age=max(1, int(expires - now)),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=secure,
        )

    @staticmethod
    def clear(response: web.StreamResponse) -> None:
        response.del_cookie(COOKIE, path="/")


class Ended:
    """Sessions ended by signing out, kept in the store (so every instance refuses a copied cookie) until the
    cookie would have expired anyway. The store's look-up cache holds them: a key with a time to live."""

    def __init__(self, store: Store):
        self.store = store

    async def end(self, session: Session, now: float) -> None:
        await self.store.remember(ENDED + session.id, None, max(1.0, session.expires - now), now)

    async def ended(self, session: Session, now: float) -> bool:
        found, _ = await self.store.recall(ENDED + session.id, now)
        return found


def csrf_ok(session: Session, form_value: object) -> bool:
    return isinstance(form_value, str) and hmac.compare_digest(session.csrf, form_value)


def signed(session: Session, text: str) -> str:
    """A signature of `text` with this session's secret: what a notice carried in a URL must show."""
    return hmac.new(session.csrf.encode(), text.encode(), hashlib.sha256).hexdigest()[:32]


def client_of(request: web.Request, trusted: list[str]) -> str:
    """The browser's address. `X-Forwarded-For` counts only when the peer is a trusted proxy (TRUSTED_PROXIES):
    then the client is the last hop that is not itself trusted (earlier hops are whatever the client wrote)."""
    peer = request.remote or "?"
    if not _trusted(peer, trusted):
        return peer
    hops = [h.strip() for h in ",".join(request.headers.getall("X-Forwarded-For", [])).split(",") if h.strip()]
    proxies = [t for t in trusted if t != "*"]  # "*" trusts the peer only: the hop it added is the client
    for hop in reversed(hops):
        if not _trusted(hop, proxies):
            return hop
    return hops[0] if hops else peer


def _trusted(address: str, trusted: list[str]) -> bool:
    if "*" in trusted:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(net, strict=False) for net in trusted)


class SignInLimiter:
    """Failed sign-ins per client address in the last minute (per instance). There is no overall limit: anyone
    could spend it with forged addresses and lock every administrator out."""

    def __init__(self) -> None:
        self._failures: deque[tuple[float, str]] = deque()

    def retry_after(self, client: str, now: float) -> float | None:
        while self._failures and self._failures[0][0] <= now - WINDOW:
            self._failures.popleft()
        mine = [at for at, who in self._failures if who == client]
        if len(mine) >= FAILURES_PER_CLIENT:
            return mine[0] + WINDOW - now
        return None

    def failed(self, client: str, now: float) -> None:
        self._failures.append((now, client))


class Refused(Exception):
    """A sign-in that is not admitted; the message is shown to the person and logged."""


class Unconfirmed(Refused):
    """Chatwoot could not be asked (down, or answered an error other than 401): neither yes nor no."""


async def admit(chatwoot: Chatwoot, settings: Settings, token: str) -> tuple[int, str, list[int]]:
    """(user id, name, accounts) for an administrator of an account this bot works in; else Refused."""
    try:
        profile = await chatwoot.profile(token)
    except ChatwootError as exc:
        if exc.status == 401:
            raise Refused("Chatwoot did not accept this access token") from None
        raise Unconfirmed(f"Chatwoot could not check the token ({exc.status or 'no answer'})") from None
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
