"""Servers under test as subprocesses: a free loopback port each, ready when ``/healthz`` answers,
stopped with SIGTERM (then SIGKILL) at the end. Their output goes to a log file that is shown
if one of them dies."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import aiohttp

__all__ = ["ServerProcess", "free_port", "start_server"]

_READY_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ServerProcess:
    name: str
    port: int
    process: asyncio.subprocess.Process
    log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.returncode is None

    def log_tail(self, lines: int = 30) -> str:
        self.log.flush()
        text = Path(self.log.name).read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self.log.close()
        _remove(self.log.name)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


async def start_server(name: str, argv: Sequence[str], env: Mapping[str, str], port: int
                       ) -> ServerProcess:
    log = tempfile.NamedTemporaryFile(prefix=f"holdfast-bench-{name}-", suffix=".log",  # noqa: SIM115 (closed in stop)
                                      delete=False)
    process = await asyncio.create_subprocess_exec(
        *argv, env=dict(env), stdout=log, stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
    )
    server = ServerProcess(name, port, process, log)
    deadline = time.monotonic() + _READY_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while True:
            if not server.alive():
                tail = server.log_tail()
                await server.stop()  # closes and removes the log
                raise RuntimeError(f"{name} exited at start-up:\n{tail}")
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return server
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                tail = server.log_tail()
                await server.stop()
                raise RuntimeError(
                    f"{name} did not answer /healthz in {_READY_TIMEOUT_S:.0f} s:\n{tail}")
            await asyncio.sleep(0.1)
