"""benchmarks/halt_poll.py: reading the guest's idle settings, and setting them for one run.

The setter is exercised on a directory laid out as the kernel's (``/sys/module/haltpoll/
parameters``): writing the real one from a test would change how this machine idles under
whatever else runs on it. The reader also runs against the real sysfs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import ab, halt_poll, run
from benchmarks.halt_poll import HaltPoll, HaltPollError


def _machine(tmp_path: Path, driver: str | None = "haltpoll", ns: str = "0",
             shrink: str = "Y") -> tuple[Path, Path]:
    driver_file = tmp_path / "current_driver"
    if driver is not None:
        driver_file.write_text(driver + "\n")
    parameters = tmp_path / "parameters"
    parameters.mkdir()
    (parameters / "guest_halt_poll_ns").write_text(ns + "\n")
    (parameters / "guest_halt_poll_allow_shrink").write_text(shrink + "\n")
    return driver_file, parameters


def _values(parameters: Path) -> tuple[str, str]:
    return ((parameters / "guest_halt_poll_ns").read_text().strip(),
            (parameters / "guest_halt_poll_allow_shrink").read_text().strip())


def test_read_and_describe(tmp_path: Path) -> None:
    driver, parameters = _machine(tmp_path, ns="200000", shrink="Y")
    state = halt_poll.read(driver, parameters)
    assert state == HaltPoll("haltpoll", 200_000, True)
    assert halt_poll.describe(state) == (
        "cpuidle driver haltpoll, guest halt polling up to 200,000 ns before a halt "
        "(shrinking after long idles)")
    assert "off (guest_halt_poll_ns 0)" in halt_poll.describe(HaltPoll("haltpoll", 0, True))
    assert "never shrinking" in halt_poll.describe(HaltPoll("haltpoll", 5, False))
    assert halt_poll.describe(HaltPoll("intel_idle")) == (
        "cpuidle driver intel_idle (no guest halt polling)")
    assert halt_poll.describe(HaltPoll(None)).startswith("no cpuidle driver")
    # the kernel's word for no driver
    driver.write_text("none\n")
    assert halt_poll.read(driver, parameters).driver is None
    # no haltpoll module at all: nothing to read, nothing invented
    assert halt_poll.read(tmp_path / "nothing", tmp_path / "nowhere") == HaltPoll(None)


def test_read_this_machine() -> None:
    state = halt_poll.read()
    # whatever this machine is, its line names what it found
    line = halt_poll.describe(state)
    if state.driver is None:
        assert line.startswith("no cpuidle driver")
    else:
        assert state.driver in line
    if state.driver == "haltpoll" and state.poll_ns is not None:
        assert state.shrinks is not None


def test_polling_sets_for_the_block_and_puts_back(tmp_path: Path) -> None:
    driver, parameters = _machine(tmp_path, ns="0", shrink="Y")
    with halt_poll.polling(2_000_000, driver=driver, parameters=parameters) as before:
        assert before == HaltPoll("haltpoll", 0, True)
        assert _values(parameters) == ("2000000", "N")
        assert halt_poll.read(driver, parameters) == HaltPoll("haltpoll", 2_000_000, False)
    assert _values(parameters) == ("0", "Y")


def test_polling_puts_back_after_a_failure(tmp_path: Path) -> None:
    driver, parameters = _machine(tmp_path, ns="50000", shrink="N")
    with pytest.raises(ZeroDivisionError), \
            halt_poll.polling(300_000, driver=driver, parameters=parameters):
        assert _values(parameters) == ("300000", "N")
        _ = 1 / 0
    assert _values(parameters) == ("50000", "N")


@pytest.mark.parametrize("driver", [None, "intel_idle"])
def test_polling_refuses_without_the_haltpoll_driver(tmp_path: Path, driver: str | None) -> None:
    driver_file, parameters = _machine(tmp_path, driver=driver)
    with pytest.raises(HaltPollError, match="needs Linux's cpuidle-haltpoll driver"), \
            halt_poll.polling(1_000, driver=driver_file, parameters=parameters):
        pytest.fail("the block ran")
    assert _values(parameters) == ("0", "Y")


def test_polling_refuses_a_negative_window(tmp_path: Path) -> None:
    driver, parameters = _machine(tmp_path)
    with pytest.raises(HaltPollError, match="0 ns or more"), \
            halt_poll.polling(-1, driver=driver, parameters=parameters):
        pytest.fail("the block ran")
    assert _values(parameters) == ("0", "Y")


def test_polling_says_why_when_it_cannot_write(tmp_path: Path) -> None:
    driver, parameters = _machine(tmp_path)
    # a file that reads but refuses every write, even root's
    (parameters / "guest_halt_poll_allow_shrink").unlink()
    (parameters / "guest_halt_poll_allow_shrink").symlink_to("/proc/version")
    with pytest.raises(HaltPollError, match=r"cannot set .*guest_halt_poll_allow_shrink"), \
            halt_poll.polling(1_000, driver=driver, parameters=parameters):
        pytest.fail("the block ran")
    assert _values(parameters)[0] == "0"


def test_the_option() -> None:
    assert run._options(["--guest-halt-poll", "2000000"]).guest_halt_poll == 2_000_000
    assert run._options([]).guest_halt_poll is None
    for bad in ("-5", "2e6", "fast"):
        with pytest.raises(SystemExit):
            run._options(["--guest-halt-poll", bad])
        # refused while parsing, before ab makes its worktree
        with pytest.raises(SystemExit):
            ab.main(["--against", "HEAD", "--guest-halt-poll", bad])


def test_for_run() -> None:
    with halt_poll.for_run(None) as before:
        assert before is None
    with pytest.raises(HaltPollError, match="0 ns or more"), halt_poll.for_run(-1):
        pytest.fail("the block ran")
