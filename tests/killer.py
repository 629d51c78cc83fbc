"""Run `dsflow ARGS...` and SIGKILL it the moment it logs a line matching PATTERN: a kill at a logged point of
training, the same on a slow or a fast machine (no timer races the trainer).

    python -m tests.killer PATTERN ARGS...
"""

import logging
import os
import re
import signal
import sys

from dsflow.cli import main


class KillAt(logging.Filter):
    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.pattern.search(record.getMessage()):
            for handler in logging.getLogger("dsflow").handlers:
                handler.flush()  # the line itself reaches the log, then the process dies
                handler.emit(record)
            os.kill(os.getpid(), signal.SIGKILL)
        return True


if __name__ == "__main__":
    logging.getLogger("dsflow").addFilter(KillAt(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
