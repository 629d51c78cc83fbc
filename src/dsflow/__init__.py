"""dsflow: DeepSpeech 0.9.3 training semantics as a Snakemake workflow on TensorFlow 2."""

__version__ = "0.1.0"


class UserError(Exception):
    """A problem with the user's input or config: reported as one clear message, no traceback."""
