"""Progress of long work: a tqdm bar on a terminal, steady log lines anywhere else.

Redirected to a log file, CI or nohup, a bar is either silent or a stream of carriage returns;
there a line goes to stderr every `interval` seconds instead (done/total, rate, time left), and a
last one when the work ends, if it took that long.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

from tqdm import tqdm

INTERVAL = 15.0  # seconds between lines when stderr is not a terminal


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    enabled: bool = True,
    leave: bool = False,
    interval: float | None = None,
    stream: IO[str] | None = None,
) -> tqdm | LineProgress:
    """A bar when `stream` (stderr) is a terminal, else a `LineProgress` writing a line every
    `interval` seconds (default `INTERVAL`); silent unless enabled.

    Both iterate `iterable` and take `update(n)`, `set_postfix(...)`, `close()` and `with`."""
    stream = stream or sys.stderr
    interval = INTERVAL if interval is None else interval
    if enabled and _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave,
                    file=stream)  # fmt: skip
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    return LineProgress(iterable, total, desc, unit, initial, interval if enabled else None, stream)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real file
        return False


class LineProgress:
    """Counts work and writes one line per `interval` seconds (None: never)."""

    def __init__(
        self,
        iterable: Iterable | None,
        total: int | None,
        desc: str,
        unit: str,
        initial: int,
        interval: float | None,
        stream: IO[str],
    ) -> None:
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self._start_n = initial
        self.interval, self.stream = interval, stream
        self.postfix = ""
        self._start = self._last = time.monotonic()
        self._printed = False
        self._closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.interval is not None and now - self._last >= self.interval:
            self._last = now
            self._write(now)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Short work stays quiet; work that printed lines says where it ended.
        if self._printed and self.n != self._start_n:
            self._write(time.monotonic(), done=True)

    def line(self, now: float, done: bool = False) -> str:
        """`desc: done/total (pct) rate unit/s, N s left` (or `..., done in N s`)."""
        elapsed = max(now - self._start, 1e-9)
        rate = (self.n - self._start_n) / elapsed
        count = f"{self.n:,}" if self.total is None else f"{self.n:,}/{self.total:,}"
        if self.total:
            count += f" ({100 * self.n / self.total:.0f}%)"
        parts = [count, f"{rate:,.1f} {self.unit}/s"]
        if done:
            parts.append(f"done in {_duration(elapsed)}")
        elif self.total and rate > 0:
            parts.append(f"{_duration((self.total - self.n) / rate)} left")
        if self.postfix:
            parts.append(self.postfix)
        return f"{self.desc}: " + ", ".join(parts) if self.desc else ", ".join(parts)

    def _write(self, now: float, done: bool = False) -> None:
        self._printed = True
        print(self.line(now, done), file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
