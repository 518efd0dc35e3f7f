"""The fake Chatwoot used by the end-to-end tests."""

from .server import FakeChatwoot

__all__ = ["FakeChatwoot"]
