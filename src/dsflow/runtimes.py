"""DeepSpeech's and Coqui STT's own runtimes (their C libraries) through ctypes.

The libraries come from the runtimes' PyPI wheels, which exist only for old CPython; `scripts/fetch_runtimes.sh`
(run by scripts/setup.sh) downloads them and unpacks each wheel's library folder under `.venv/runtimes/`
(looked up in the checkout, then in the running virtualenv; `$DSFLOW_RUNTIMES_DIR` overrides both):

  deepspeech-tflite/libdeepspeech.so   DeepSpeech 0.9.3, TFLite build   (.tflite models)   API prefix DS_
  deepspeech/libdeepspeech.so          DeepSpeech 0.9.3, TensorFlow build (.pb / .pbmm)    API prefix DS_
  stt/libstt.so (+ libkenlm.so)        Coqui STT 1.4.0                  (.tflite models)   API prefix STT_

Both DeepSpeech builds export the same symbol names; each library is loaded with RTLD_LOCAL (ctypes' default),
so its own calls bind to its own code and several live in one process, beside TensorFlow 2.21's Python module
(tests/test_runtimes.py: the TensorFlow build refuses a .tflite with its protobuf error while the TFLite build and
libstt in the same process run it). libstt.so needs libkenlm.so, which its RUNPATH does not find: it is loaded
first (RTLD_LOCAL too), and the loader then reuses it by its soname.

    rt = Runtime.load("deepspeech-tflite")
    with rt.model("output_graph.tflite") as m:
        m.sample_rate, m.beam_width; m.set_beam_width(100); m.enable_scorer("lm.scorer"); m.set_alpha_beta(a, b)
        text = m.stt(int16_samples)
        with m.stream() as s:
            s.feed(chunk); s.intermediate(); text = s.finish()

A non-zero return code becomes a UserError with the runtime's own message (DS_ErrorCodeToErrorMessage) and
what the library printed on stderr while it ran (TFLite's reasons, e.g. an unknown op version).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from dsflow import UserError

ROOT = Path(__file__).resolve().parents[2]
RUNTIMES = {  # name: (library, API prefix, libraries loaded before it)
    "deepspeech-tflite": ("libdeepspeech.so", "DS", ()),
    "deepspeech": ("libdeepspeech.so", "DS", ()),
    "stt": ("libstt.so", "STT", ("libkenlm.so",)),
}


def runtimes_dir() -> Path:
    """$DSFLOW_RUNTIMES_DIR, else the checkout's .venv/runtimes, else the running virtualenv's runtimes/."""
    if os.environ.get("DSFLOW_RUNTIMES_DIR"):
        return Path(os.environ["DSFLOW_RUNTIMES_DIR"])
    for candidate in (ROOT / ".venv" / "runtimes", Path(sys.prefix) / "runtimes"):
        if candidate.is_dir():
            return candidate
    return ROOT / ".venv" / "runtimes"


def library_path(name: str) -> Path:
    """The runtime's library file; a UserError that says how to get it when it is missing."""
    if name not in RUNTIMES:
        raise UserError(f"unknown runtime {name!r}; one of {', '.join(RUNTIMES)}")
    path = runtimes_dir() / name / RUNTIMES[name][0]
    if not path.is_file():
        raise UserError(f"{path}: the {name} runtime is not installed; run `bash scripts/fetch_runtimes.sh` (part of "
                        "scripts/setup.sh: it downloads the runtimes' wheels from PyPI into .venv/runtimes), or set "
                        "DSFLOW_RUNTIMES_DIR to a folder holding <runtime>/<library>")
    return path


@contextlib.contextmanager
def _captured_stderr():
    """What C code writes to file descriptor 2 while the block runs (a list that gets one string)."""
    out: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", "replace"))


class Runtime:
    """One loaded runtime library and its C API."""

    _loaded: dict[Path, "Runtime"] = {}

    def __init__(self, name: str, path: Path):
        library, prefix, before = RUNTIMES[name]
        self.name, self.path, self.prefix = name, path, prefix
        self._deps = [ctypes.CDLL(str(path.parent / dep), mode=ctypes.RTLD_LOCAL) for dep in before]
        try:
            self.lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_LOCAL)
        except OSError as e:
            raise UserError(f"{path}: cannot load the {name} runtime: {e}") from None
        P, I, U, C = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint, ctypes.c_char_p
        for fn, restype, argtypes in (
                ("CreateModel", I, [C, ctypes.POINTER(P)]), ("FreeModel", None, [P]),
                ("GetModelSampleRate", I, [P]), ("GetModelBeamWidth", U, [P]), ("SetModelBeamWidth", I, [P, U]),
                ("EnableExternalScorer", I, [P, C]), ("DisableExternalScorer", I, [P]),
                ("SetScorerAlphaBeta", I, [P, ctypes.c_float, ctypes.c_float]),
                ("SpeechToText", P, [P, ctypes.POINTER(ctypes.c_short), U]),
                ("CreateStream", I, [P, ctypes.POINTER(P)]), ("FeedAudioContent", None,
                                                              [P, ctypes.POINTER(ctypes.c_short), U]),
                ("IntermediateDecode", P, [P]), ("FinishStream", P, [P]), ("FreeStream", None, [P]),
                ("FreeString", None, [P]), ("Version", P, []), ("ErrorCodeToErrorMessage", P, [I])):
            f = getattr(self.lib, f"{prefix}_{fn}")
            f.restype, f.argtypes = restype, argtypes
            setattr(self, fn, f)

    @classmethod
    def load(cls, name: str) -> "Runtime":
        path = library_path(name)
        if path not in cls._loaded:
            cls._loaded[path] = cls(name, path)
        return cls._loaded[path]

    def string(self, pointer) -> str:
        """A char* the library returned, as text, freed with its FreeString."""
        if not pointer:
            return ""
        try:
            return ctypes.string_at(pointer).decode("utf-8")
        finally:
            self.FreeString(pointer)

    @property
    def version(self) -> str:
        return self.string(self.Version())

    def check(self, code: int, what: str, stderr: str = "") -> None:
        if code != 0:
            lines = [line.strip() for line in stderr.splitlines() if line.strip()]
            detail = "".join(f"\n  {line}" for line in lines[-6:])
            message = self.string(self.ErrorCodeToErrorMessage(code))
            raise UserError(f"{what}: {self.name} {self.version} says: {message} (error 0x{code:04x}){detail}")

    def model(self, path: str | Path) -> "Model":
        return Model(self, Path(path))


def _samples(samples) -> tuple:
    a = np.ascontiguousarray(samples, dtype=np.int16)
    return a, a.ctypes.data_as(ctypes.POINTER(ctypes.c_short)), len(a)


class Model:
    """A model loaded by a runtime (its ModelState); a context manager that frees it."""

    def __init__(self, runtime: Runtime, path: Path):
        self.runtime, self.path = runtime, path
        if not path.is_file():
            raise UserError(f"{path}: no such model file")
        state = ctypes.c_void_p()
        with _captured_stderr() as err:
            code = runtime.CreateModel(str(path).encode(), ctypes.byref(state))
        self.stderr = err[0]
        runtime.check(code, f"{path}: cannot load the model", self.stderr)
        self.state = state

    def close(self) -> None:
        if self.state:
            self.runtime.FreeModel(self.state)
            self.state = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def sample_rate(self) -> int:
        return self.runtime.GetModelSampleRate(self.state)

    @property
    def beam_width(self) -> int:
        return self.runtime.GetModelBeamWidth(self.state)

    def set_beam_width(self, width: int) -> None:
        self.runtime.check(self.runtime.SetModelBeamWidth(self.state, width), f"beam width {width}")

    def enable_scorer(self, scorer: str | Path) -> None:
        with _captured_stderr() as err:
            code = self.runtime.EnableExternalScorer(self.state, str(scorer).encode())
        self.runtime.check(code, f"{scorer}: cannot enable the scorer", err[0])

    def disable_scorer(self) -> None:
        self.runtime.check(self.runtime.DisableExternalScorer(self.state), "disabling the scorer")

    def set_alpha_beta(self, alpha: float, beta: float) -> None:
        self.runtime.check(self.runtime.SetScorerAlphaBeta(self.state, alpha, beta), "lm_alpha/lm_beta")

    def stt(self, samples) -> str:
        """The transcript of 16-bit mono samples at the model's rate (DS_SpeechToText)."""
        _keep, pointer, n = _samples(samples)
        return self.runtime.string(self.runtime.SpeechToText(self.state, pointer, n))

    def stream(self) -> "Stream":
        return Stream(self)


class Stream:
    """DS_CreateStream ... DS_FinishStream; a context manager that frees an unfinished stream."""

    def __init__(self, model: Model):
        self.runtime = model.runtime
        state = ctypes.c_void_p()
        self.runtime.check(self.runtime.CreateStream(model.state, ctypes.byref(state)), "creating a stream")
        self.state = state

    def feed(self, samples) -> None:
        _keep, pointer, n = _samples(samples)
        self.runtime.FeedAudioContent(self.state, pointer, n)

    def intermediate(self) -> str:
        return self.runtime.string(self.runtime.IntermediateDecode(self.state))

    def finish(self) -> str:
        """The final transcript; the runtime frees the stream."""
        state, self.state = self.state, None
        return self.runtime.string(self.runtime.FinishStream(state))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.state:
            self.runtime.FreeStream(self.state)
            self.state = None
