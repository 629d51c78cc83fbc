"""dsflow's beam search scores what DeepSpeech's decoder (ds_ctcdecoder) scores: no end-of-sentence term.

flashlight's LexiconDecoder adds lm_weight * log P(</s> | last words) to every final hypothesis; DeepSpeech never
asks its LM for </s> (ctc_beam_search_decoder.cpp decode() scores only the last word). dsflow.decode takes the
term out before choosing. bench/bench_parity.py compares the two decoders on the demo's test set.
"""

import math

import numpy as np
import pytest

pytest.importorskip("flashlight.lib.text")

from dsflow.alphabet import Alphabet  # noqa: E402
from dsflow.decode import Decoder  # noqa: E402
from tests.conftest import DATA  # noqa: E402

ALPHABET = Alphabet.from_file(DATA / "alphabet.txt")

# "the cat" is a little more likely than "the kat" (log10 -0.3 against -0.4), but a sentence ends far more
# likely after "kat" (-0.1) than after "cat" (-2.0).
ARPA = """\\data\\
ngram 1=6
ngram 2=5

\\1-grams:
-2.0\t<unk>\t0
-99\t<s>\t-0.3
-1.0\t</s>\t0
-1.0\tthe\t-0.3
-1.0\tcat\t-0.3
-1.0\tkat\t-0.3

\\2-grams:
-0.2\t<s> the
-0.3\tthe cat
-0.4\tthe kat
-2.0\tcat </s>
-0.1\tkat </s>

\\end\\
"""


def frames(*spec) -> np.ndarray:
    out = np.zeros((len(spec), ALPHABET.blank_index + 1), np.float32)
    for t, s in enumerate(spec):
        s = {s: 0.9} if isinstance(s, str) else s
        for c, p in s.items():
            out[t, ALPHABET.encode(c)[0]] = p
        out[t, -1] = 1.0 - sum(s.values())
    return out


def test_the_end_of_the_sentence_is_not_scored(tmp_path):
    """"the ?at" with "c" and "k" equally likely: DeepSpeech's objective (acoustics + lm_alpha * ln P(words) +
    lm_beta * words) prefers "the cat"; with </s> scored, "the kat" would win, and that is what flashlight's own
    best hypothesis is."""
    (tmp_path / "lm.arpa").write_text(ARPA)
    probs = frames(*"the ", {"k": 0.45, "c": 0.45}, *"at")
    d = Decoder(ALPHABET, 64, tmp_path / "lm.arpa", lm_alpha=1.0, lm_beta=0.0)
    assert d.decode(probs) == "the cat"
    e = d.emissions(probs)
    raw = d._decoder.decode(e.ctypes.data, e.shape[0], e.shape[1])
    assert [d.words[i] for i in raw[0].words if i >= 0] == ["the", "kat"]
    # flashlight's scores (lm_alpha 1): "kat" ahead by (-0.4 - 0.1) - (-0.3 - 2.0) = 1.8 in log10, </s> included
    raw_scores = {" ".join(d.words[i] for i in r.words if i >= 0): r.score for r in raw}
    assert raw_scores["the kat"] - raw_scores["the cat"] == pytest.approx(1.8 * math.log(10), abs=1e-4)
