"""Guest halt polling: whether this virtual machine's idle CPUs poll a while before they halt.

A virtual CPU with nothing to run halts, which hands its physical core back to the host; the
next wake-up (a packet, a timer, another CPU's IPI) then goes through the hypervisor, to a CPU
whose caches the host may have given to someone else meanwhile. Below saturation most hops of a
request are such wake-ups (benchmarks/README.md, "Session 14" and "Session 19"). Linux's
``cpuidle-haltpoll`` driver lets an idle guest CPU poll for up to ``guest_halt_poll_ns`` before
it halts (Documentation/virt/guest-halt-polling.rst); a wake-up inside that window lands on a
CPU that never left. The window adapts per CPU between 0 and that maximum, shrinking whenever a
halt outlasted the maximum unless ``guest_halt_poll_allow_shrink`` is off.

The polling is counted as idle by the guest (``/proc/stat``) but the host sees a busy virtual
CPU: it costs the host the cores the guest would have given back, which is why a platform may
turn it off (the benchmark's VMs boot with ``haltpoll.guest_halt_poll_ns=0``). It is the host
operator's setting, not Holdfast's: the server never touches it. ``--guest-halt-poll NS``
(``benchmarks.run`` and ``benchmarks.ab``) sets it for one run and puts the old values back
after, so the same code can be measured on the same machine both ways; every report says what
the machine had.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Final

__all__ = ["DRIVER", "PARAMETERS", "HaltPoll", "HaltPollError", "add_option", "describe",
           "for_run", "polling", "read"]

DRIVER: Final = Path("/sys/devices/system/cpu/cpuidle/current_driver")
PARAMETERS: Final = Path("/sys/module/haltpoll/parameters")
_NS: Final = "guest_halt_poll_ns"
_SHRINK: Final = "guest_halt_poll_allow_shrink"


class HaltPollError(RuntimeError):
    """Guest halt polling cannot be set here (no such driver, or no permission)."""


@dataclasses.dataclass(frozen=True, slots=True)
class HaltPoll:
    """The machine's idle settings: its cpuidle driver (None: no cpuidle at all) and, under the
    haltpoll governor, the polling window's maximum and whether it shrinks."""

    driver: str | None
    poll_ns: int | None = None
    shrinks: bool | None = None


def _text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def read(driver: Path = DRIVER, parameters: Path = PARAMETERS) -> HaltPoll:
    """What the machine has now (a field is None where the kernel does not say)."""
    name = _text(driver)
    ns = _text(parameters / _NS)
    shrink = _text(parameters / _SHRINK)
    return HaltPoll(driver=None if name in (None, "", "none") else name,
                    poll_ns=int(ns) if ns is not None and ns.isdigit() else None,
                    shrinks=None if shrink is None else shrink == "Y")


def describe(state: HaltPoll) -> str:
    """One line for a report."""
    if state.driver is None:
        return "no cpuidle driver (idle CPUs halt; no guest halt polling)"
    if state.driver != "haltpoll" or state.poll_ns is None:
        return f"cpuidle driver {state.driver} (no guest halt polling)"
    if state.poll_ns == 0:
        return "cpuidle driver haltpoll, guest halt polling off (guest_halt_poll_ns 0)"
    return (f"cpuidle driver haltpoll, guest halt polling up to {state.poll_ns:,} ns before a "
            f"halt ({'shrinking after long idles' if state.shrinks else 'never shrinking'})")


@contextlib.contextmanager
def polling(ns: int, *, driver: Path = DRIVER,
            parameters: Path = PARAMETERS) -> Iterator[HaltPoll]:
    """Poll up to ``ns`` before each halt, the window never shrinking, for the ``with`` block;
    the previous values are put back after it, whatever happens inside. Yields the previous
    state. Raises HaltPollError, changing nothing, where it cannot be set."""
    if ns < 0:
        raise HaltPollError(f"guest halt polling must be 0 ns or more, not {ns:,}")
    before = read(driver, parameters)
    if before.driver != "haltpoll" or before.poll_ns is None or before.shrinks is None:
        raise HaltPollError("guest halt polling needs Linux's cpuidle-haltpoll driver and "
                            f"haltpoll governor; this machine has {describe(before)}")
    try:
        (parameters / _SHRINK).write_text("N")
    except OSError as exc:
        raise HaltPollError(f"cannot set {parameters / _SHRINK} ({exc.strerror}); writing "
                            "it needs root") from None
    try:
        (parameters / _NS).write_text(str(ns))
        yield before
    finally:
        (parameters / _NS).write_text(str(before.poll_ns))
        (parameters / _SHRINK).write_text("Y" if before.shrinks else "N")


def _window(text: str) -> int:
    try:
        ns = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a whole number of ns") from None
    if ns < 0:
        raise argparse.ArgumentTypeError("0 ns or more")
    return ns


def add_option(parser: argparse.ArgumentParser) -> None:
    """``--guest-halt-poll NS``, as the benchmarks that take it spell it."""
    parser.add_argument("--guest-halt-poll", type=_window, default=None, metavar="NS",
                        help="on a VM with Linux's cpuidle-haltpoll driver, let idle CPUs poll "
                             "up to NS before they halt, never shrinking, for this run (needs "
                             "root; the old values are put back after; benchmarks/halt_poll.py)."
                             " Default: the machine as it is")


def for_run(ns: int | None) -> contextlib.AbstractContextManager[HaltPoll | None]:
    """``polling(ns)`` for a run that asked for it; otherwise nothing, yielding None."""
    return contextlib.nullcontext() if ns is None else polling(ns)
