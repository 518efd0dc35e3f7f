"""Where the bot keeps what it knows: one interface, an SQLite and a Redis backend."""

from __future__ import annotations

from .base import Commit, DecisionEntry, Store


def open_store(url: str, tls_verify: bool = True) -> Store:
    """The store at `url`; `tls_verify=False` accepts a rediss:// server's unverifiable certificate."""
    if url.startswith(("redis://", "rediss://")):
        from .redis import RedisStore

        return RedisStore(url, tls_verify)
    from .sqlite import SQLiteStore

    return SQLiteStore(":memory:" if url == "memory://" else url.removeprefix("sqlite:///"))


__all__ = ["Commit", "DecisionEntry", "Store", "open_store"]
