"""What the Dockerfile promises, checked where no Docker daemon runs (CI here has none;
``deploy/image-check.sh`` builds and runs the real image where one does).

The image's build stage copies a hand-written list of files and builds a wheel from them: a new
package, module or data file (a migration, a Lua script) that the list or the package data misses
would be absent from the image alone, and every test run from the source tree would pass. So the
build stage is replayed here: the files its ``COPY`` lines take (less what ``.dockerignore``
keeps out) go into an empty directory, a wheel is built from it as ``pip wheel`` does there, and
every file git tracks in the packages must be in that wheel. The final stage must run as a user
that is not root, after its last ``RUN``, with a health check on ``/healthz`` and the server as
its command."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parents[1]
# the packages the wheel takes, as pyproject.toml's packages.find names them ("authz*" ...)
PACKAGES: Final = tuple(
    pattern.rstrip("*") for pattern in tomllib.loads((ROOT / "pyproject.toml").read_text())
    ["tool"]["setuptools"]["packages"]["find"]["include"])
SHIPPED: Final = (".py", ".sql", ".lua")


def _stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (instruction, arguments), continuation lines
    joined and comments left out."""
    stages: list[list[tuple[str, str]]] = []
    logical = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        instruction, _, args = logical.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), args.strip()))
        logical = ""
    return stages


def _matches(parts: list[str], pattern: list[str]) -> bool:
    """Docker's matching of a path against a pattern, segment by segment: ``*`` and ``?`` stay
    within one segment, a ``**`` segment takes any number of them."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _matches(
        parts[1:], pattern[1:])


def _ignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps ``relative`` out: a pattern names a path from the context's
    root, and a directory it names takes everything under it."""
    parts = relative.split("/")
    return any(_matches(parts[: i + 1], pattern.strip("/").split("/"))
               for pattern in patterns for i in range(len(parts)))


def _dockerignore() -> list[str]:
    return [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")]


def _replay_build_context(into: Path) -> None:
    """Copy what the build stage's COPY lines take into ``into`` (its WORKDIR)."""
    ignore = _dockerignore()
    build = _stages()[0]
    for instruction, args in build:
        if instruction != "COPY":
            continue
        words = shlex.split(args)
        assert not any(w.startswith("--") for w in words), (
            f"COPY {args}: a flag (--from, --chown, ...) this replay does not follow")
        *sources, dest = words
        for source in sources:
            src = ROOT / source
            target = into / dest / (src.name if dest.endswith("/") else "")
            if src.is_dir():
                for path in sorted(src.rglob("*")):
                    relative = path.relative_to(ROOT).as_posix()
                    if path.is_file() and not _ignored(relative, ignore):
                        out = target / path.relative_to(src)
                        out.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(path, out)
            else:
                assert not _ignored(source, ignore), f".dockerignore keeps out {source}"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)


def _tracked_package_files() -> set[str]:
    listed = subprocess.run(["git", "ls-files", *PACKAGES], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.split()
    return {name for name in listed if name.endswith(SHIPPED)}


def test_the_image_is_built_in_two_stages_and_installs_only_what_the_first_built() -> None:
    stages = _stages()
    assert len(stages) == 2
    final = stages[1]
    copies = [args for instruction, args in final if instruction == "COPY"]
    assert copies and all(args.startswith("--from=build ") for args in copies)
    installs = [args for instruction, args in final if instruction == "RUN" and "pip" in args]
    assert installs and all("--no-index" in args for args in installs)


def test_the_image_builds_its_wheels_under_the_pins() -> None:
    """make install's pins (constraints.txt; tests/test_constraints.py) hold in the image too."""
    build = _stages()[0]
    copied = " ".join(args for instruction, args in build if instruction == "COPY").split()
    assert "constraints.txt" in copied
    wheels = [args for instruction, args in build if instruction == "RUN" and "pip wheel" in args]
    assert wheels and all(re.search(r"(--constraint|-c)[ =]constraints\.txt\b", args)
                          for args in wheels)


def test_the_final_stage_runs_the_server_as_a_user_that_is_not_root() -> None:
    final = _stages()[1]
    users = [i for i, (instruction, _) in enumerate(final) if instruction == "USER"]
    assert users, "no USER: the server would run as root"
    user = final[users[-1]][1].split(":")[0]
    assert user not in ("root", "0")
    last_run = max(i for i, (instruction, _) in enumerate(final) if instruction == "RUN")
    assert users[-1] > last_run, "a RUN after USER would change who the image runs as"
    cmd = [args for instruction, args in final if instruction == "CMD"]
    assert cmd and cmd[-1] == '["holdfast", "serve"]'


def test_the_health_check_asks_the_port_the_server_listens_on() -> None:
    final = _stages()[1]
    health = [args for instruction, args in final if instruction == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0] and "HOLDFAST_PORT" in health[0]
    env = " ".join(args for instruction, args in final if instruction == "ENV")
    port = next(word.split("=", 1)[1] for word in env.split()
                if word.startswith("HOLDFAST_PORT="))
    exposed = " ".join(args for instruction, args in final if instruction == "EXPOSE").split()
    assert port in exposed


def test_the_build_context_and_copy_lines_leave_nothing_out(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know the tracked files")
    context = tmp_path / "src"
    _replay_build_context(context)
    wheels = tmp_path / "wheels"
    # as the build stage does, less the network: the venv's own setuptools builds it
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(wheels), str(context)],
                   check=True, capture_output=True, text=True)
    (wheel,) = wheels.glob("holdfast-*.whl")
    with zipfile.ZipFile(wheel) as built:
        in_wheel = {name for name in built.namelist() if name.endswith(SHIPPED)}
        entry_points = next(built.read(n).decode() for n in built.namelist()
                            if n.endswith(".dist-info/entry_points.txt"))
        licenses = {n.rpartition("/licenses/")[2] for n in built.namelist()
                    if ".dist-info/licenses/" in n}
    tracked = _tracked_package_files()
    assert {"authz", "holds", "policies"} <= set(PACKAGES)  # the parse found them
    assert {"holds/migrations/0001_ledger.sql", "policies/velocity.lua"} <= tracked
    assert tracked - in_wheel == set(), "tracked files the image would not have"
    assert "holdfast = authz.cli:main" in entry_points
    # pyproject's license-files: setuptools leaves a file it cannot find out without a word
    license_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license-files"]
    assert set(license_files) <= licenses, "the image's wheel would carry no licence text"


def test_the_replay_notices_a_package_the_copy_lines_miss(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # the check above must be able to fail: without the COPY of one package, its files are
    # missing from the replayed context
    original = _stages

    def without_clearing() -> list[list[tuple[str, str]]]:
        stages = original()
        stages[0] = [(i, a) for i, a in stages[0] if not (i == "COPY" and "clearing" in a)]
        return stages

    monkeypatch.setattr(sys.modules[__name__], "_stages", without_clearing)
    _replay_build_context(tmp_path)
    copied = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert "holds/migrations/0001_ledger.sql" in copied
    assert not any(name.startswith("clearing/") for name in copied)
    assert {n for n in _tracked_package_files() if n.startswith("clearing/")}


def test_dockerignore_patterns_are_read_as_docker_reads_them() -> None:
    ignore = _dockerignore()
    assert _ignored("authz/__pycache__/app.cpython-311.pyc", ignore)
    assert _ignored("tests/test_units.py", ignore)
    assert not _ignored("authz/app.py", ignore)
    assert not _ignored("holds/migrations/0001_ledger.sql", ignore)
    # a pattern without ** names a path from the root only, and * stays within one segment
    assert _ignored("build/lib/x.py", ["build"]) and not _ignored("authz/build/x.py", ["build"])
    assert not _ignored("authz/x.egg-info/PKG-INFO", ["*.egg-info"])
    assert _ignored("a/b/c/__pycache__/m.pyc", ["**/__pycache__"])
