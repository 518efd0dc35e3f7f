"""Where the bot keeps what it knows: one interface, an SQLite and a Redis backend."""
from __future__ import annotations

from .base import Commit, Store


def open_store(url: str) -> Store:
    if url.startswith(("redis://", "rediss://")):
        from .redis import RedisStore

        return RedisStore(url)
    from .sqlite import SQLiteStore

    return SQLiteStore(":memory:" if url == "memory://" else url.removeprefix("sqlite:///"))


__all__ = ["Commit", "Store", "open_store"]
