"""Where the bot keeps what it knows: one interface, an SQLite and a Redis backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Commit, DecisionEntry, Lapsed, Store, store_failure

if TYPE_CHECKING:
    from ..config import Settings


def open_store(url: str, tls_verify: bool = True, max_connections: int = 50, runs_jobs: bool = False) -> Store:
    """The store at `url`; `tls_verify=False` accepts a rediss:// server's unverifiable certificate;
    `max_connections`: a Redis store's connections at most (more commands wait for one); `runs_jobs`: this process
    runs the outbox (the server), so the store recovers the runs a crash cut short (SQLite)."""
    if url.startswith(("redis://", "rediss://")):
        from .redis import RedisStore

        return RedisStore(url, tls_verify, max_connections)
    from .sqlite import SQLiteStore

    return SQLiteStore(":memory:" if url == "memory://" else url.removeprefix("sqlite:///"), runs_jobs)


def store_for(settings: Settings, runs_jobs: bool = False) -> Store:
    """The store the settings name, not yet open."""
    return open_store(settings.store_url, settings.redis_tls_verify, settings.redis_max_connections, runs_jobs)


async def open_or_refuse(store: Store, settings: Settings) -> None:
    """Open `store`; when it cannot be, a ConfigError naming the variable the URL came from, its password masked."""
    from ..config import ConfigError, mask, scrub

    try:
        await store.open()
    except Exception as exc:
        url = settings.store_url
        hint = ""
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            hint = "; a managed Redis with a self-signed certificate (Heroku Redis) needs REDIS_TLS_VERIFY=false"
        problem = scrub(f"{type(exc).__name__}: {exc}", url)
        raise ConfigError(
            f"{settings.store_variable}: cannot open the {url.split('://')[0]} store at {mask(url)} ({problem}){hint}"
        ) from None


__all__ = ["Commit", "DecisionEntry", "Lapsed", "Store", "open_or_refuse", "open_store", "store_failure", "store_for"]
