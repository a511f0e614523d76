"""The tally every fault test adds its case to, printed at the end of the session by `tests/faults/conftest.py`.

The issue that asked for the fault tests asks for one line at the end: how many cases were tried,
how many ended in a traceback, how many did damage without a word, and how many hung. A test
records each case it tries here, then asserts on it, so a case that fails still counts.
"""

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class FaultCase:
    """One bad input or fault tried, and how the command took it."""

    name: str
    """What was tried, e.g. 'manifest families_as_a_list'."""
    traceback: bool
    """The command printed a Python traceback instead of one line."""
    silent: bool
    """Something good was lost, or a wrong result was given, with status 0 or no word."""
    hang: bool = False
    """The command did not finish within the time the test gave it."""


CASES: list[FaultCase] = []


def record_case(name: str, *, traceback: bool, silent: bool, hang: bool = False) -> None:
    """Add a case to the session's tally."""
    CASES.append(FaultCase(name=name, traceback=traceback, silent=silent, hang=hang))


def summary_line() -> str:
    """'fault cases tried: N; tracebacks: T; silent damage: S; hangs: H', with the names of the bad ones."""
    bad = {
        "tracebacks": [case.name for case in CASES if case.traceback],
        "silent damage": [case.name for case in CASES if case.silent],
        "hangs": [case.name for case in CASES if case.hang],
    }
    counts = "; ".join(
        f"{what}: {len(names)}" + (f" ({', '.join(names)})" if names else "") for what, names in bad.items()
    )
    return f"fault cases tried: {len(CASES)}; {counts}"
