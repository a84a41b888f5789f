"""Session-wide: how many fuzz cases and injected faults the robustness tests tried.

A test asks for the `robustness_count` fixture and calls `robustness_count("kind", n)`; the end of
the run prints the totals (`pytest -q` shows them under "robustness: cases tried").
"""
import collections

import pytest

_COUNTS = pytest.StashKey[collections.Counter]()


def pytest_configure(config):
    config.stash[_COUNTS] = collections.Counter()


@pytest.fixture
def robustness_count(request):
    """count(kind, n=1): record that this test tried n fuzz cases or injected faults of `kind`."""
    counts = request.config.stash[_COUNTS]

    def count(kind: str, n: int = 1) -> None:
        counts[kind] += n

    return count


def pytest_terminal_summary(terminalreporter, config):
    counts = config.stash.get(_COUNTS, None)
    if counts:
        terminalreporter.section("robustness: cases tried")
        for kind, n in sorted(counts.items()):
            terminalreporter.write_line(f"{n:7,d}  {kind}")
        terminalreporter.write_line(f"{sum(counts.values()):7,d}  in all")
