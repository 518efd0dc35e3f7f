"""`python -m tests.spawner`: a process that has imported agentbot once and forks `python -m agentbot` on request.

Tests that need a bot in a process of its own (SIGKILL, SIGTERM, several instances) get one in a few
milliseconds instead of an interpreter start and agentbot's imports (about 0.5 s of CPU each on a 2-core
machine). Each child is a real process: its own pid, signals, store connections and exit status; it runs
the same `main()` as `python -m agentbot` (test_config and test_cli start that command itself).

The protocol is one JSON line each way. Ask on stdin: {"argv": [...], "env": {...}, "cwd": "...", "log": "..."};
the answer on stdout is {"pid": N}, and later {"exited": N, "status": S} (S negative: killed by signal -S).
When stdin closes, the children are killed and the spawner exits. `Spawner` is the tests' side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

from agentbot.__main__ import main

OUT = 1  # stdout's descriptor
CHILDREN: set[int] = set()  # forked and not yet reaped


def _say(message: dict) -> None:
    os.write(OUT, (json.dumps(message) + "\n").encode())  # one write: whole lines even from the signal handler


def _reap(*_: object) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        CHILDREN.discard(pid)
        _say({"exited": pid, "status": os.waitstatus_to_exitcode(status)})


def _child(ask: dict) -> None:
    """In the forked child: become `python -m agentbot ARGV` in `cwd` with `env`, logging to `log`."""
    for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDWR)
    log = os.open(ask["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(log, 2)
    os.chdir(ask["cwd"])
    os.environ.clear()
    os.environ.update(ask["env"])
    status = 1
    try:
        status = main(ask["argv"])
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(status)


def serve() -> None:
    signal.signal(signal.SIGCHLD, _reap)
    for line in sys.stdin:
        ask = json.loads(line)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})  # a child reaped before it is counted
        pid = os.fork()
        if pid == 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            _child(ask)
        CHILDREN.add(pid)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        _say({"pid": pid})
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for pid in CHILDREN:  # still running: never reaped, so the pid is still theirs
        os.kill(pid, signal.SIGKILL)


class Spawner:
    """The tests' side: starts `python -m tests.spawner` and forks bots with it."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.spawner"],
            cwd=Path(__file__).resolve().parents[1],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.exited: dict[int, int] = {}
        self._pids: queue.Queue[int] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            said = json.loads(line)
            if "pid" in said:
                self._pids.put(said["pid"])
            else:
                self.exited[said["exited"]] = said["status"]

    def fork(self, argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> Forked:
        assert self.proc.stdin
        self.proc.stdin.write(json.dumps({"argv": argv, "env": env, "cwd": str(cwd), "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        return Forked(self, self._pids.get(timeout=10))

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.wait(10)


class Forked:
    """A forked bot with the ways of asyncio's Process: pid, returncode, send_signal, kill, terminate, wait."""

    def __init__(self, spawner: Spawner, pid: int) -> None:
        self.spawner, self.pid = spawner, pid

    @property
    def returncode(self) -> int | None:
        return self.spawner.exited.get(self.pid)

    def send_signal(self, sig: int) -> None:
        """Like asyncio's: nothing once the process has exited (it may be reaped before its "exited" line
        arrives; the kernel hands its pid out again only after cycling through pid_max)."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    async def wait(self) -> int:
        """Its exit status, once the spawner has reaped it (polled every 10 ms, like conftest.wait_for)."""
        while (code := self.returncode) is None:
            await asyncio.sleep(0.01)
        return code


if __name__ == "__main__":
    serve()
