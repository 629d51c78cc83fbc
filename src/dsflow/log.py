"""Logging to the console and to a rule's log file, and progress lines with rate and ETA.

A job of the workflow (`dsflow --log FILE ...`) writes everything to FILE: its log lines, and whatever else the
process prints to stderr (TensorFlow's and absl's start-up lines, Python warnings, tracebacks), since stderr
itself goes to FILE while the job runs. The terminal, which Snakemake's own progress shares, gets only the job's
progress lines and its warnings and errors, each prefixed with the command. Without --log everything goes to the
terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

log = logging.getLogger("dsflow")
SHOW = {"progress": True}  # `extra` of a log line that a workflow job also shows on the terminal (a stage's result)
DETAIL = {"detail": True}  # `extra` of a warning or error that only its log gets (one of many rows, say)
FORMAT = "%(asctime)s %(levelname).1s %(message)s"


class _Terse(logging.Filter):
    """What a workflow job shows on the terminal: progress lines, warnings, errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "detail", False):
            return False
        return record.levelno >= logging.WARNING or getattr(record, "progress", False)


def _level() -> int:
    """DeepSpeech's log_level (0 debug, 1 info, 2 warnings, 3 errors), from the workflow (DSFLOW_LOG_LEVEL)."""
    return (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)[int(os.environ.get("DSFLOW_LOG_LEVEL", 1))]


def setup(logfile: str | None = None, level: int | None = None, console=None, command: str = "") -> None:
    """Send dsflow's log to `console` (default stderr) and, when given, to `logfile` (a Snakemake rule's `log:`);
    with a logfile, the console shows only progress, warnings and errors, prefixed with `command`."""
    handlers: list[logging.Handler] = [logging.StreamHandler(console or sys.stderr)]
    handlers[0].setFormatter(logging.Formatter(FORMAT.replace("%(message)s", f"{command}: %(message)s")
                                               if logfile and command else FORMAT, "%H:%M:%S"))
    if logfile:
        handlers[0].addFilter(_Terse())
        handlers.append(logging.FileHandler(logfile, mode="a", encoding="utf-8"))
        handlers[1].setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
    log.handlers[:] = handlers
    log.setLevel(_level() if level is None else level)
    log.propagate = False


def worker_logfile(logfile: str | None, env=os.environ) -> str | None:
    """The log of a multi-worker training's process (dsflow.distribute): `logfile` for the chief (worker 0),
    `logfile.workerN` for worker N, N from TF_CONFIG (its `chief` task first) or the task of a SLURM step."""
    import json

    index = 0
    try:
        if env.get("TF_CONFIG"):
            spec = json.loads(env["TF_CONFIG"])
            task = spec.get("task", {})
            if task.get("type") == "worker":
                index = int(task.get("index", 0)) + (1 if spec.get("cluster", {}).get("chief") else 0)
        elif int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1) > 1:
            index = int(env.get("SLURM_PROCID") or 0)
    except (ValueError, AttributeError, TypeError):
        index = 0  # the trainer reports a bad TF_CONFIG itself
    return f"{logfile}.worker{index}" if logfile and index else logfile


@contextlib.contextmanager
def job_output(logfile: str | None, command: str = ""):
    """Set up the log for one command (see the module docstring); with a logfile, the process's stderr goes to it
    until the block ends."""
    if not logfile:
        setup(None)
        yield
        return
    sys.stderr.flush()
    terminal = os.dup(2)
    console = os.fdopen(os.dup(terminal), "w", buffering=1, encoding="utf-8", errors="replace")
    with open(logfile, "a", encoding="utf-8") as f:
        os.dup2(f.fileno(), 2)
    saved, sys.stderr = sys.stderr, open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    setup(logfile, console=console, command=command)
    try:
        yield
    finally:
        sys.stderr.flush()
        for h in log.handlers:
            h.flush()
        sys.stderr = saved
        os.dup2(terminal, 2)
        os.close(terminal)
        log.handlers[0].setStream(sys.stderr)
        console.close()


def failure_summary(snakemake_logs) -> list[str]:
    """One line per failed job of a Snakemake run (from its main log files, Snakemake's `log` of onerror): the job's
    last error or warning, from its own log."""
    import re
    from pathlib import Path

    text = ""
    for name in [snakemake_logs] if isinstance(snakemake_logs, (str, Path)) else snakemake_logs or []:
        try:
            text += Path(name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            pass
    lines = []
    for rule, body in re.findall(r"Error in rule (\w+):\n(.*?)(?:\n\S|\Z)", text, re.S):
        job_log = re.search(r"^\s+log: (\S+)", body, re.M)
        reason = ""
        if job_log and Path(job_log[1]).is_file():
            found = re.findall(r"^\d\d:\d\d:\d\d [EW] (.*)$", Path(job_log[1]).read_text(errors="replace"), re.M)
            reason = found[-1] if found else ""
        lines.append(f"{rule}: {reason or 'failed'}" + (f" (log: {job_log[1]})" if job_log else ""))
    return lines


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
        if now - self.last >= self.interval and os.environ.get("DSFLOW_PROGRESS", "1") != "0":
            self.last = now
            self._line(now)

    def _line(self, now: float, final: bool = False) -> None:
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        tail = f"in {_hms(elapsed)}" if final else f"ETA {_hms((self.total - self.done) / rate) if rate else '?'}"
        log.info("%s: %d/%d %s (%.0f%%), %.1f %s/s, %s", self.what, self.done, self.total, self.unit, pct,
                 rate, self.unit, tail, extra={"progress": True})

    def close(self) -> None:
        self._line(time.monotonic(), final=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
