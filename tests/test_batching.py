"""The batcher that lets concurrent callers share one encoder pass and one stage pass."""

from __future__ import annotations

import threading
import time

import pytest

from meet_milvus.batching import Batcher

pytestmark = pytest.mark.unit


class Recorder:
    """`run` for a Batcher: squares each request, records each call's requests; the first call
    holds until `hold` requests wait behind it, so the test knows what the next batch holds."""

    def __init__(self, hold: int = 0) -> None:
        self.calls: list[list] = []
        self.hold = hold
        self.batcher: Batcher | None = None

    def __call__(self, requests: list) -> list:
        if not self.calls and self.hold:
            deadline = time.monotonic() + 30
            while len(self.batcher._queue) < self.hold and time.monotonic() < deadline:
                time.sleep(0.001)
        self.calls.append(list(requests))
        if any(r == "bad" for r in requests):
            raise ValueError("request 'bad': refused")
        return [r * r for r in requests]


def submit_all(batcher: Batcher, requests: list, groups: list | None = None) -> list:
    """Each request submitted from its own thread, the first one first; results in order."""
    out: list = [None] * len(requests)

    def one(i: int) -> None:
        try:
            out[i] = batcher.submit(requests[i], groups[i] if groups else None)
        except Exception as e:  # the caller's own error, compared by the test
            out[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    threads[0].start()
    while not batcher._busy:  # the first caller leads before the others arrive
        time.sleep(0.001)
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_one_caller_is_served_alone_at_once() -> None:
    run = Recorder()
    batcher = Batcher(run)
    assert batcher.submit(3) == 9
    assert batcher.submit(4) == 16
    assert run.calls == [[3], [4]]


def test_callers_waiting_behind_a_batch_share_the_next_call() -> None:
    run = Recorder(hold=7)
    batcher = run.batcher = Batcher(run)
    results = submit_all(batcher, list(range(1, 9)))
    assert results == [i * i for i in range(1, 9)]
    assert run.calls[0] == [1]
    assert sorted(run.calls[1]) == list(range(2, 9))  # seven callers, one call
    assert len(run.calls) == 2


def test_groups_never_share_a_call_and_max_batch_bounds_it() -> None:
    run = Recorder(hold=6)
    batcher = run.batcher = Batcher(run, max_batch=2)
    groups = ["a", "a", "b", "a", "b", "a", "b"]
    results = submit_all(batcher, list(range(1, 8)), groups)
    assert results == [i * i for i in range(1, 8)]
    assert sum(len(c) for c in run.calls) == 7
    for call in run.calls:
        assert len(call) <= 2
        assert len({groups[r - 1] for r in call}) == 1


def test_a_bad_request_fails_only_its_own_caller() -> None:
    run = Recorder(hold=3)
    batcher = run.batcher = Batcher(run)
    results = submit_all(batcher, [2, 3, "bad", 5])
    assert results[0] == 4 and results[1] == 9 and results[3] == 25
    assert isinstance(results[2], ValueError) and "'bad'" in str(results[2])
    assert batcher.submit(6) == 36  # the batcher still serves after an error


def test_many_concurrent_callers_get_their_sequential_answers() -> None:
    batcher = Batcher(lambda rs: [(r, r % 7) for r in rs], max_batch=16)
    out: dict[int, tuple] = {}

    def caller(base: int) -> None:
        for r in range(base, base + 200):
            out[r] = batcher.submit(r)

    threads = [threading.Thread(target=caller, args=(b * 1000,)) for b in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert out == {r: (r, r % 7) for b in range(8) for r in range(b * 1000, b * 1000 + 200)}
    assert not batcher._busy and not batcher._queue


def closed_loop_batches(window: float, callers: int = 4, each: int = 40) -> list[int]:
    """Sizes of the calls made while `callers` threads each send `each` requests, the next one
    as soon as the last is answered (as the latency benchmark's callers and HTTP clients do)."""
    sizes: list[int] = []

    def run(requests: list) -> list:
        sizes.append(len(requests))
        time.sleep(0.003)  # a pass over the batch, the GIL released (as encoding releases it)
        return requests

    batcher = Batcher(run, window=window)
    threads = [
        threading.Thread(target=lambda: [batcher.submit(i) for i in range(each)])
        for _ in range(callers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(sizes) == callers * each
    return sizes


def test_callers_in_a_closed_loop_come_back_as_one_batch() -> None:
    """Answered together, the callers send again microseconds apart: the leader waits the short
    window for them, so the batches stay whole instead of splitting into one and the rest."""
    sizes = closed_loop_batches(window=0.05)  # generous: a loaded test machine is slow to wake
    assert sum(s == 4 for s in sizes[2:]) >= 0.8 * len(sizes[2:])
    without = closed_loop_batches(window=0.0)  # what the window prevents
    assert sum(without) / len(without) < sum(sizes) / len(sizes)
