"""``holdfast serve --workers N``: N server processes sharing one port through SO_REUSEPORT, and
the parent that supervises them.

Each worker is a whole ``holdfast serve`` (its own event loop, PostgreSQL pool and Redis client);
the kernel spreads incoming connections across them. The parent serves nothing: it starts the
workers, forwards SIGTERM and SIGINT to them, and exits once all of them have exited.

It restarts none. When a worker dies unexpectedly the parent stops the others and exits with that
worker's status, so the process manager above (systemd, a container restart policy, Kubernetes)
restarts the whole set and sees the crash: a crash loop stays visible instead of being absorbed
here, and a host never serves silently at a fraction of its capacity.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Final

__all__ = ["MAX_WORKERS", "STOP_TIMEOUT_S", "supervise", "worker_command"]

MAX_WORKERS: Final = 64
# how long stopping workers get to finish their in-flight requests before they are killed
STOP_TIMEOUT_S: Final = 30


def worker_command(index: int) -> list[str]:
    """The command line of worker ``index``: the same interpreter and environment as the
    parent, so every worker reads the same settings."""
    return [sys.executable, "-m", "authz.cli", "serve", "--worker-index", str(index)]


class _Supervisor:
    def __init__(self, stop_timeout_s: int) -> None:
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False
        self.exit_code = 0
        self._stop_timeout_s = stop_timeout_s

    def stop(self, sig: int) -> None:
        """Pass ``sig`` on to every live worker, and kill those still alive at the timeout."""
        if not self.stopping:
            self.stopping = True
            signal.alarm(self._stop_timeout_s)
        _signal_all(self.children, sig)

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stop(signum)

    def on_alarm(self, _signum: int, _frame: FrameType | None) -> None:
        _signal_all(self.children, signal.SIGKILL)

    def reaped(self, pid: int, status: int) -> None:
        proc = self.children.pop(pid, None)
        if proc is None:
            return  # not one of ours (nothing else is started here; be safe)
        code = os.waitstatus_to_exitcode(status)
        proc.returncode = code  # reaped here with os.wait: tell Popen, or it warns at exit
        if self.stopping:
            if code != 0 and self.exit_code == 0:  # e.g. killed at the stop timeout
                self.exit_code = _shell_status(code)
            return
        self.exit_code = _shell_status(code) or 1
        print(f"holdfast worker pid {pid} exited unexpectedly ({code}); stopping the others",
              file=sys.stderr, flush=True)
        self.stop(signal.SIGTERM)


def _signal_all(children: dict[int, subprocess.Popen[bytes]], sig: int) -> None:
    # a worker leaves the dict once reaped, so its pid cannot have been reused; the suppress
    # covers the instant between os.wait() returning and the dict being updated
    for pid in list(children):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _shell_status(code: int) -> int:
    """An exit code as a shell reports it: 128 + N for a death by signal N."""
    return 128 - code if code < 0 else code


def supervise(workers: int, command: Callable[[int], Sequence[str]] = worker_command,
              stop_timeout_s: int = STOP_TIMEOUT_S) -> int:
    """Run ``workers`` worker processes until they have all exited; return the exit status."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers must be between 1 and {MAX_WORKERS}, got {workers}")
    sup = _Supervisor(stop_timeout_s)
    previous = {sig: signal.signal(sig, sup.on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, sup.on_alarm)
    try:
        for index in range(workers):
            if sup.stopping:  # stopped during start-up: start no more
                break
            proc = subprocess.Popen(command(index))  # noqa: S603 (our own interpreter and module)
            sup.children[proc.pid] = proc
        if sup.stopping:
            # the signal may have come between a start and its registration: pass it on again
            _signal_all(sup.children, signal.SIGTERM)
        print(f"holdfast supervising {len(sup.children)} worker(s) (pid {os.getpid()}): "
              f"{sorted(sup.children)}", flush=True)
        while sup.children:
            # blocks until a worker exits; signal handlers run in between (PEP 475 retries)
            pid, status = os.wait()
            sup.reaped(pid, status)
    finally:
        signal.alarm(0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return sup.exit_code
