"""Progress of a long loop: a tqdm bar on a terminal, plain periodic lines everywhere else.

A tqdm bar redraws itself with carriage returns, which fill log files (luigid's, a batch job's) with one
unreadable line. When the stream is not a terminal, `progress_bar` returns `PlainProgress` instead: one
ordinary line every `every_percent` of the work or every `every_seconds`, whichever comes first, and one
at the end (unless the last line already said it). Both have the same small interface: `update(n)`, `n`, `total`, `write(message)`, `close()`.
"""
from __future__ import annotations

import sys
import time

from tqdm import tqdm

EVERY_PERCENT = 10     # a plain line at least every tenth of the work ...
EVERY_SECONDS = 30.0   # ... or every half minute, so a slow stage still shows it is alive


def is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class PlainProgress:
    """Plain progress lines, `desc: done/total unit (percent), elapsed`; never a carriage return."""

    def __init__(self, total: int, desc: str, unit: str = "item", stream=None,
                 every_percent: float = EVERY_PERCENT, every_seconds: float = EVERY_SECONDS, clock=time.monotonic):
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.stream = stream if stream is not None else sys.stderr
        self.every_percent, self.every_seconds, self.clock = every_percent, every_seconds, clock
        self.started = self.last_time = clock()
        self.last_percent, self.last_n = 0.0, 0
        self.closed = False

    def _percent(self) -> float:
        return 100.0 * self.n / self.total if self.total else 100.0

    def _line(self) -> None:
        elapsed = self.clock() - self.started
        self.write(f"{self.desc}: {self.n}/{self.total} {self.unit}s ({self._percent():.0f}%), {elapsed:.0f} s")
        self.last_time, self.last_percent, self.last_n = self.clock(), self._percent(), self.n

    def update(self, n: int = 1) -> None:
        self.n += n
        if (self._percent() - self.last_percent >= self.every_percent
                or self.clock() - self.last_time >= self.every_seconds):
            self._line()

    def write(self, message: str) -> None:
        print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.n != self.last_n:  # the end, unless the last line already said it
                self._line()


def progress_bar(total: int, desc: str, unit: str = "item", stream=None):
    """A tqdm bar when `stream` (default stderr) is a terminal, else `PlainProgress` lines."""
    stream = stream if stream is not None else sys.stderr
    if is_terminal(stream):
        return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=stream)
    return PlainProgress(total, desc, unit, stream)
