"""DeepSpeech 0.9.3's and Coqui STT 1.4's own C libraries (dsflow.runtimes) decode with a .scorer written by dsflow.

The LDC93S1 smoke-test model trained and exported by dsflow (the session's `ldc16k`) must give DeepSpeech's exact
smoke-test transcript with `dsflow build-lm --package` of DeepSpeech's vocab.txt, and with a package of three words
only those words: the runtimes read the vocabulary trie (they return success even when its FST does not parse, so
the transcript is the check). Skips when the runtimes' libraries are not installed (scripts/setup.sh).
"""

import shutil
import sys
from pathlib import Path

import pytest
import soundfile as sf

from dsflow import UserError, runtimes
from dsflow.cli import main
from tests.conftest import DATA, LDC, SENTENCE

HAVE_KENLM = all((Path(sys.executable).parent / t).is_file() or shutil.which(t) for t in ("lmplz", "build_binary"))


def _missing() -> str:
    for name in ("deepspeech-tflite", "stt"):
        try:
            runtimes.library_path(name)
        except UserError as e:
            return str(e)
    return ""


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not HAVE_KENLM, reason="KenLM's lmplz/build_binary not built (scripts/setup.sh)"),
              pytest.mark.skipif(bool(_missing()), reason=f"runtimes not installed: {_missing()}")]


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


@pytest.mark.parametrize("runtime", ["deepspeech-tflite", "stt"])
def test_the_runtime_decodes_ldc93s1_exactly_with_a_dsflow_scorer(runtime, ldc16k, packages):
    samples, _ = sf.read(LDC / "LDC93S1.wav", dtype="int16")
    with runtimes.Runtime.load(runtime).model(ldc16k["quantized"]) as model:
        model.enable_scorer(packages / "lm.scorer")
        assert model.stt(samples) == SENTENCE
        model.enable_scorer(packages / "three.scorer")
        three = model.stt(samples).split()
    assert three and set(three) <= {"she", "had", "your"}  # the trie decides which words can come out
