"""Logging to the console and to a rule's log file, and progress lines with rate and ETA."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("dsflow")


def setup(logfile: str | None = None, level: int = logging.INFO) -> None:
    """Send dsflow's log to stderr and, when given, to `logfile` (a Snakemake rule's `log:`)."""
    fmt = logging.Formatter("%(asctime)s %(levelname).1s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile:
        handlers.append(logging.FileHandler(logfile, mode="a", encoding="utf-8"))
    for h in handlers:
        h.setFormatter(fmt)
    log.handlers[:] = handlers
    log.setLevel(level)
    log.propagate = False


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Periodic progress lines (`what: done/total (pct) rate/s, ETA h:mm:ss`) on the dsflow log.

    Lines rather than a redrawn bar, so that they read the same in a terminal, in a rule's log
    file and in a SLURM job's output.
    """

    def __init__(self, what: str, total: int, unit: str = "items", interval: float = 5.0):
        self.what, self.total, self.unit, self.interval = what, total, unit, interval
        self.done = 0
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._line(now)

    def _line(self, now: float, final: bool = False) -> None:
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        tail = f"in {_hms(elapsed)}" if final else f"ETA {_hms((self.total - self.done) / rate) if rate else '?'}"
        log.info("%s: %d/%d %s (%.0f%%), %.1f %s/s, %s", self.what, self.done, self.total, self.unit, pct,
                 rate, self.unit, tail)

    def close(self) -> None:
        self._line(time.monotonic(), final=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
