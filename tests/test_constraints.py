"""constraints.txt: every runtime dependency pinned, and the pins are what runs here.

`make install` and the image's build stage both install with ``--constraint constraints.txt``,
so the versions the tests pass against are the versions the image ships. A dependency added to
pyproject.toml (or brought in by a new release of one) without ``make lock`` would go unpinned;
a pin left behind by a dependency that went away would hide it; a venv built before the pins
moved would test other code. Each of these fails here."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path
from typing import Final

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT: Final = Path(__file__).resolve().parents[1]
_PIN: Final = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$")


def _pins(text: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _PIN.match(line)
        assert match, f"constraints.txt:{number}: {line!r} is not name==version"
        name = canonicalize_name(match[1])
        assert name not in pins, f"constraints.txt:{number}: {name} pinned twice"
        pins[name] = match[2]
    return pins


def _runtime_closure(root: str) -> set[str]:
    """The distributions ``root`` needs to run on this interpreter: its requirements without
    extras (its dev extra is not shipped), theirs with the extras asked for, and so on."""
    needed: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    seen = set(todo)
    while todo:
        name, extras = todo.pop()
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is not None and not any(
                    marker.evaluate({"extra": extra}) for extra in extras | {""}):
                continue
            step = canonicalize_name(requirement.name), frozenset(requirement.extras)
            needed.add(step[0])
            if step not in seen:
                seen.add(step)
                todo.append(step)
    return needed


def test_every_line_pins_one_distribution_to_one_version() -> None:
    assert _pins("# a comment\n\naiohttp==3.14.5\nredis==8.2.0\n") == {
        "aiohttp": "3.14.5", "redis": "8.2.0"}
    for bad in ("aiohttp>=3.14", "aiohttp", "aiohttp==3.14.5 ; python_version<'3.12'",
                "aiohttp==3.14.5\naiohttp==3.14.4"):
        with pytest.raises(AssertionError):
            _pins(bad)


def test_the_pins_are_exactly_the_runtime_dependencies() -> None:
    pins = _pins((ROOT / "constraints.txt").read_text())
    needed = _runtime_closure("holdfast")
    assert "redis" in needed and "hiredis" in needed and "multidict" in needed  # the walk works
    assert needed - pins.keys() == set(), "unpinned runtime dependencies: run `make lock`"
    assert pins.keys() - needed == set(), "pins nothing needs: run `make lock`"


def test_the_installed_versions_are_the_pinned_ones() -> None:
    pins = _pins((ROOT / "constraints.txt").read_text())
    installed = {name: metadata.version(name) for name in pins}
    assert installed == pins, "this venv predates the pins: run `make install`"

