"""Text summaries of a sampling profile (py-spy ``record --format raw``: one collapsed stack per
line, ``frame;frame;...;frame COUNT``, each frame ``function (file:line)``):

    .venv/bin/python -m benchmarks.flame profile.txt [--top 25]

Prints Markdown: samples by component (self time: where the CPU was when sampled), the top
functions by self time and by total time (the function anywhere on the stack, counted once per
sample), and the component breakdown of each top-level request step. Frames of C extensions
(orjson, hiredis, uvloop, asyncpg's protocol) do not appear on their own: their time is the
self time of the Python frame that called them.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["Profile", "component", "main", "parse"]

_FRAME: Final = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# first match wins: (component, pattern on the file path)
_COMPONENTS: Final = (
    ("holdfast: decision core", re.compile(r"authz/hotpath\.py$")),
    ("holdfast: HTTP routes, parsing", re.compile(r"authz/(routes/|http\.py|app\.py|errors)")),
    ("holdfast: signatures", re.compile(r"authz/signatures\.py$")),
    ("holdfast: metrics", re.compile(r"authz/metrics\.py$")),
    ("holdfast: ledger call", re.compile(r"holds/")),
    ("holdfast: policy cache (Redis)", re.compile(r"policies/")),
    ("holdfast: other", re.compile(r"(authz|clearing)/")),
    ("prometheus_client", re.compile(r"prometheus_client/")),
    ("aiohttp", re.compile(r"aiohttp/|multidict/|yarl/")),
    ("redis-py", re.compile(r"redis/")),
    ("asyncpg", re.compile(r"asyncpg/")),
    ("hmac, hashlib", re.compile(r"/(hmac|hashlib)\.py$")),
    ("asyncio, uvloop", re.compile(r"asyncio/|uvloop/|/selectors\.py$")),
    ("logging", re.compile(r"/logging/")),
    ("other stdlib", re.compile(r"python3\.\d+/[^/]+\.py$|python3\.\d+/\w+/")),
)


def component(path: str) -> str:
    for name, pattern in _COMPONENTS:
        if pattern.search(path):
            return name
    return "other"


@dataclass(frozen=True, slots=True)
class Frame:
    func: str
    file: str

    @property
    def label(self) -> str:
        return f"{self.func} ({_short(self.file)})"


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        at = path.find(marker)
        if at >= 0:
            return path[at + len(marker):]
    return path


@dataclass(slots=True)
class Profile:
    stacks: list[tuple[tuple[Frame, ...], int]]

    @property
    def total(self) -> int:
        return sum(n for _, n in self.stacks)


def parse(lines: Iterable[str]) -> Profile:
    stacks: list[tuple[tuple[Frame, ...], int]] = []
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for part in stack.split(";"):
            m = _FRAME.match(part.strip())
            if m is None:  # "process 123:..." or "thread ..." headers
                continue
            frames.append(Frame(m["func"], m["file"]))
        if frames:
            stacks.append((tuple(frames), int(count)))
    return Profile(stacks)


def _pct(n: int, total: int) -> str:
    return f"{n / total:.1%}" if total else "n/a"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1))
           + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def summarise(profile: Profile, top: int = 25) -> str:
    total = profile.total
    by_component: Counter[str] = Counter()
    self_time: Counter[Frame] = Counter()
    total_time: Counter[Frame] = Counter()
    for frames, n in profile.stacks:
        leaf = frames[-1]
        self_time[leaf] += n
        by_component[component(leaf.file)] += n
        for f in set(frames):
            total_time[f] += n
    lines = [f"{total:,} samples (on-CPU only: py-spy leaves out the idle event loop).", "",
             "**Self time by component** (where the CPU was):", ""]
    lines += _table(["component", "samples", "share"],
                    [[c, f"{n:,}", _pct(n, total)] for c, n in by_component.most_common()])
    lines += ["", f"**Top {top} functions by self time**:", ""]
    lines += _table(["function", "self", "share"],
                    [[f"`{f.label}`", f"{n:,}", _pct(n, total)]
                     for f, n in self_time.most_common(top)])
    lines += ["", f"**Top {top} functions by total time** (anywhere on the stack):", ""]
    lines += _table(["function", "total", "share"],
                    [[f"`{f.label}`", f"{n:,}", _pct(n, total)]
                     for f, n in total_time.most_common(top)])
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.flame", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("raw", type=Path, help="py-spy record --format raw output")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    with args.raw.open() as f:
        print(summarise(parse(f), args.top), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
