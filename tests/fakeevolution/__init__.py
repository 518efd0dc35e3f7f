"""The fake Evolution API used by the tests of the Evolution switches."""

from .server import GLOBAL_KEY, FakeEvolution

__all__ = ["GLOBAL_KEY", "FakeEvolution"]
