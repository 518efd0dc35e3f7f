"""The operator page: sign in with Chatwoot, see and steer the bot (server-rendered HTML, no JavaScript)."""

from .views import setup

__all__ = ["setup"]
