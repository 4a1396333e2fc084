"""What ``script_cost`` and ``server_cost`` share: a process under valgrind's callgrind, steered
with ``callgrind_control``, and the instruction total of its latest dump."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

__all__ = ["control", "latest_dump", "missing_tools", "total"]

_SUMMARY: Final = re.compile(r"^summary:\s*(\d+)", re.MULTILINE)


def missing_tools(tools: Sequence[str]) -> bool:
    """True (and says so on stderr) when a tool is not on the PATH."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        print(f"needs {', '.join(missing)} on the PATH", file=sys.stderr)
    return bool(missing)


async def control(pid: int, *options: str) -> None:
    """``callgrind_control <options> <pid>``: -z zeroes, -d dumps, -i on|off instruments."""
    proc = await asyncio.create_subprocess_exec(
        "callgrind_control", *options, str(pid),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    if await proc.wait() != 0:
        raise RuntimeError(f"callgrind_control {' '.join(options)} failed")


def latest_dump(out_file: Path) -> Path | None:
    """The latest dump written for ``--callgrind-out-file=out_file`` (callgrind adds ``.<n>``
    per dump)."""
    dumps = sorted(out_file.parent.glob(f"{out_file.name}*"), key=lambda p: p.stat().st_mtime)
    return dumps[-1] if dumps else None


def total(out_file: Path) -> int:
    """The instruction total of the latest dump written for ``--callgrind-out-file=out_file``."""
    dump = latest_dump(out_file)
    found = _SUMMARY.search(dump.read_text(errors="replace")) if dump is not None else None
    if found is None:
        raise RuntimeError(f"callgrind wrote no summary for {out_file.name}")
    return int(found.group(1))
