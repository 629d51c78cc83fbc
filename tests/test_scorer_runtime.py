"""DeepSpeech 0.9.3's and Coqui STT 1.4's own C libraries (ctypes) decode with a .scorer written by dsflow.

An LDC93S1 model trained and exported by dsflow (DeepSpeech's smoke test: n_hidden 100, 250 epochs) must give
DeepSpeech's exact smoke-test transcript with `dsflow build-lm --package` of DeepSpeech's vocab.txt, and with a
package of three words only those words: the runtimes read the vocabulary trie (they return success even when
its FST does not parse, so the transcript is the check). Skips when the runtimes' libraries are not installed
(scripts/setup.sh puts them in .venv/runtimes, or $DSFLOW_RUNTIMES_DIR), or when this checkout's export does
not write DeepSpeech's TFLite format.
"""

import ctypes
import os
import shutil
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from dsflow.cli import main
from tests.conftest import DATA, LDC, ROOT

LDC_TEXT = "she had your dark suit in greasy wash water all year"
RUNTIMES = Path(os.environ.get("DSFLOW_RUNTIMES_DIR") or ROOT / ".venv" / "runtimes")
LIBRARIES = {"DS": ("deepspeech-tflite", "libdeepspeech.so", ()), "STT": ("stt", "libstt.so", ("libkenlm.so",))}
HAVE_KENLM = all((Path(sys.executable).parent / t).is_file() or shutil.which(t) for t in ("lmplz", "build_binary"))
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not HAVE_KENLM, reason="KenLM's lmplz/build_binary not built (scripts/setup.sh)")]


class Runtime:
    """The few C API calls needed: model, scorer, speech to text (prefix DS_ or STT_)."""

    def __init__(self, prefix: str):
        folder, name, before = LIBRARIES[prefix]
        path = RUNTIMES / folder / name
        if not path.is_file():
            pytest.skip(f"{path} is not installed (scripts/setup.sh)")
        for dep in before:  # libstt.so's RUNPATH does not find libkenlm.so; loaded first, it is found by soname
            ctypes.CDLL(str(RUNTIMES / folder / dep))
        lib = ctypes.CDLL(str(path))
        self.f = lambda n: getattr(lib, f"{prefix}_{n}")
        self.f("CreateModel").argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
        self.f("EnableExternalScorer").argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.f("SpeechToText").argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_short), ctypes.c_uint]
        self.f("SpeechToText").restype = ctypes.c_void_p
        self.f("FreeString").argtypes = [ctypes.c_void_p]
        self.f("FreeModel").argtypes = [ctypes.c_void_p]

    def transcribe(self, model: Path, wav: Path, scorer: Path | None) -> str:
        with wave.open(str(wav)) as w:
            audio = np.frombuffer(w.readframes(w.getnframes()), np.int16)
        state = ctypes.c_void_p()
        rc = self.f("CreateModel")(str(model).encode(), ctypes.byref(state))
        if rc:
            pytest.skip(f"{model} does not load in the runtime (error {rc:#x}): this checkout's export does not "
                        "write DeepSpeech's TFLite format")
        try:
            if scorer:
                assert self.f("EnableExternalScorer")(state, str(scorer).encode()) == 0
            text = self.f("SpeechToText")(state, audio.ctypes.data_as(ctypes.POINTER(ctypes.c_short)), len(audio))
            try:
                return ctypes.string_at(text).decode()
            finally:
                self.f("FreeString")(text)
        finally:
            self.f("FreeModel")(state)


@pytest.fixture(scope="module")
def ldc_model(tmp_path_factory):
    """DeepSpeech's LDC93S1 smoke-test model, trained and exported (TFLite) by dsflow."""
    pytest.importorskip("tensorflow")
    from dsflow import features
    from tests.test_train import train_args

    tmp = tmp_path_factory.mktemp("ldc")
    feats = tmp / "features"
    features.write_features(LDC / "ldc93s1.csv", feats)
    assert main(train_args(feats, tmp / "work", tmp / "ckpt", "--n_hidden", 100, "--epochs", 250, "--learning_rate",
                           0.001, "--dropout_rate", 0.05, "--train_batch_size", 1, "--dev_batch_size", 1,
                           dev=feats)) == 0
    assert main(["export", "--checkpoint_dir", str(tmp / "ckpt"), "--export_dir", str(tmp / "export"),
                 "--export_tflite", "true"]) == 0
    return tmp / "export" / "output_graph.tflite"


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm")
    assert main(["build-lm", "--text", str(LDC / "vocab.txt"), "--alphabet_config_path", str(DATA / "alphabet.txt"),
                 "--output", str(out / "lm.binary"), "--package", str(out / "lm.scorer")]) == 0
    (out / "three.txt").write_text("she had your\n")
    assert main(["scorer-package", "--alphabet", str(DATA / "alphabet.txt"), "--lm", str(out / "lm.binary"),
                 "--vocab", str(out / "three.txt"), "--package", str(out / "three.scorer"), "--default_alpha", "0.75",
                 "--default_beta", "1.85"]) == 0
    return out


@pytest.mark.parametrize("prefix", ["DS", "STT"])
def test_the_runtime_decodes_ldc93s1_exactly_with_a_dsflow_scorer(prefix, ldc_model, packages):
    runtime = Runtime(prefix)
    wav = LDC / "LDC93S1.wav"
    assert runtime.transcribe(ldc_model, wav, packages / "lm.scorer") == LDC_TEXT
    three = runtime.transcribe(ldc_model, wav, packages / "three.scorer").split()
    assert three and set(three) <= {"she", "had", "your"}  # the trie decides which words can come out
