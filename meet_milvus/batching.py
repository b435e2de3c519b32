"""Concurrent calls served in batches: callers that arrive while a batch is being computed
are answered together by the next one (group commit). One caller alone waits for nothing;
under load, batches grow by themselves, so one encoder pass and one stage pass serve many
callers and throughput grows with them instead of queueing behind a lock.

Callers in a closed loop (each sends its next request once answered) come back one after the
other, microseconds apart, and the first back would lead a batch of one while the rest queue
behind it. So a leader whose previous batch held several callers waits a short window (WINDOW_S)
for as many to be queued before it starts; after a batch of one it never waits."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

Request = TypeVar("Request")
Result = TypeVar("Result")
# Long enough for answered callers to send again, short against one query (~7 ms on the demo).
WINDOW_S = 0.001


class _Pending(Generic[Request, Result]):
    __slots__ = ("request", "group", "wake", "lead", "finished", "result", "error")

    def __init__(self, request: Request, group: Hashable) -> None:
        self.request = request
        self.group = group
        self.wake = threading.Event()  # set when answered, or when this caller is to lead
        self.lead = False
        self.finished = False
        self.result: Result | None = None
        self.error: BaseException | None = None


class Batcher(Generic[Request, Result]):
    """`submit(request)` returns `run([request, ...])[i]` for its request, computed together
    with the requests of other threads waiting at the same time.

    One caller at a time leads: it takes the oldest waiting request's group from the queue
    (its own request is the oldest), computes that batch, and hands the lead to the oldest
    caller still waiting; so no caller waits for batches after its own.
    `run` takes a list of requests of one `group` (requests of different groups never share a
    call) and returns one result per request, in order. If `run` raises for a batch of several,
    each of its requests is run alone, so one bad request fails only its own caller.
    `max_batch` bounds a call's size; `window` is how long a leader waits for the callers of
    its previous batch (see the module docstring)."""

    def __init__(
        self,
        run: Callable[[list[Request]], Sequence[Result]],
        max_batch: int = 64,
        window: float = WINDOW_S,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch {max_batch}: must be at least 1")
        self._run = run
        self._max = max_batch
        self._window = window
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._queue: list[_Pending[Request, Result]] = []
        self._busy = False  # a caller leads
        self._last = 0  # callers in the previous batch

    def submit(self, request: Request, group: Hashable = None) -> Result:
        me = _Pending[Request, Result](request, group)
        with self._lock:
            self._queue.append(me)
            self._arrived.notify_all()
            if not self._busy:
                self._busy = me.lead = True
        if not me.lead:
            me.wake.wait()
        if not me.finished:  # leading: serve the oldest group, then pass the lead on
            with self._lock:
                want = min(self._last, self._max)
                if want > 1:
                    self._arrived.wait_for(lambda: len(self._queue) >= want, self._window)
                batch = [p for p in self._queue if p.group == me.group][: self._max]
                self._last = len(batch)
                taken = {id(p) for p in batch}
                self._queue = [p for p in self._queue if id(p) not in taken]
            try:
                self._serve(batch)
            finally:
                self._pass_lead()
        if me.error is not None:
            raise me.error
        return me.result  # type: ignore[return-value]

    def _pass_lead(self) -> None:
        with self._lock:
            after = self._queue[0] if self._queue else None
            if after is None:
                self._busy = False
            else:
                after.lead = True
        if after is not None:
            after.wake.set()

    def _serve(self, batch: list[_Pending[Request, Result]]) -> None:
        try:
            results = self._run([p.request for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} answered {len(results)} results")
            for p, r in zip(batch, results, strict=True):
                p.result = r
        except BaseException as e:  # handed to the caller(s), never swallowed
            if len(batch) > 1 and isinstance(e, Exception):
                for p in batch:
                    self._serve([p])
                return
            for p in batch:  # one request, or an interrupt: every caller of the batch sees it
                p.error = e
        for p in batch:
            p.finished = True
            p.wake.set()
