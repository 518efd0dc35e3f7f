"""tests/spawner.py stands for `python -m agentbot` in a process of its own: a forked bot behaves like one."""

from __future__ import annotations

import os
import time


def test_a_bot_that_has_just_exited_can_still_be_signalled_like_a_process(spawner, tmp_path):
    """A process that exited is signalled without error (asyncio's Process, Popen): the spawner reaps its
    children at once, so between the reaping and its "exited" line reaching the tests, os.kill on the pid
    fails (or, the pid being free, reaches whatever process got it next)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for n in range(20):
        forked = spawner.fork(["--no-such-option"], env, tmp_path, tmp_path / f"bot-{n}.log")  # exits 2 at once
        deadline = time.monotonic() + 10
        while forked.returncode is None and time.monotonic() < deadline:
            forked.send_signal(0)  # what BotProcess.stop and the `processes` teardown do, with a harmless signal
        assert forked.returncode == 2
