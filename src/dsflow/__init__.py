"""dsflow: DeepSpeech 0.9.3 training semantics as a Snakemake workflow on TensorFlow 2."""

import json
from pathlib import Path

__version__ = "0.1.0"


class UserError(Exception):
    """A problem with the user's input or config: reported as one clear message, no traceback."""


def read_json(path: str | Path, missing: str):
    """A JSON file that dsflow wrote; a UserError with the message `missing` when it does not exist."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(missing) from None
