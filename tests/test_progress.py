"""Progress: bars on a terminal, steady lines (count, rate, time left) everywhere else."""

from __future__ import annotations

import io

import pytest
from tqdm import tqdm

from meet_milvus.progress import LineProgress, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.unit
def test_a_terminal_gets_a_bar_anything_else_lines():
    assert isinstance(progress_bar(total=3, stream=_Terminal()), tqdm)
    log = io.StringIO()
    bar = progress_bar(total=4, desc="image features", unit="img", stream=log, interval=0)
    assert isinstance(bar, LineProgress)
    with bar:
        bar.update(1)
        bar.update(3)
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("image features: 1/4 (25%), ") and " img/s, " in lines[0]
    assert lines[0].endswith(" s left")
    assert lines[1].startswith("image features: 4/4 (100%), ")
    assert lines[-1].startswith("image features: 4/4 (100%)") and " done in " in lines[-1]


@pytest.mark.unit
def test_iterates_and_stays_quiet_when_short_or_disabled():
    log = io.StringIO()
    # Under the interval: no line at all, not even at the end.
    assert list(progress_bar(range(5), desc="encode", stream=log, interval=60)) == list(range(5))
    assert log.getvalue() == ""
    # Disabled (--quiet): nothing, whatever the interval.
    assert list(progress_bar(range(3), stream=log, interval=0, enabled=False)) == [0, 1, 2]
    assert log.getvalue() == ""
    # An iterable of known length gives the total; the postfix rides along.
    bar = progress_bar([1, 2], desc="epoch 1/3", stream=log, interval=0)
    for _ in bar:
        bar.set_postfix(loss="0.125")
    assert log.getvalue().splitlines()[0].startswith("epoch 1/3: 1/2 (50%), ")
    assert "loss=0.125" in log.getvalue()
