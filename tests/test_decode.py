"""The decoder: greedy without a scorer, DeepSpeech's beam search with a real KenLM model (flashlight-text)."""

import numpy as np
import pytest

pytest.importorskip("flashlight.lib.text")

from dsflow import UserError  # noqa: E402
from dsflow.alphabet import Alphabet  # noqa: E402
from dsflow.decode import Decoder, greedy  # noqa: E402
from dsflow.scorer import arpa_words  # noqa: E402
from tests.conftest import DATA  # noqa: E402

ALPHABET = Alphabet.from_file(DATA / "alphabet.txt")

# A hand-written ARPA model (KenLM loads it for real): "cat" is far more likely than "kat"; "to", "day" and
# "today" are equally likely, so only lm_beta decides between "to day" and "today".
ARPA = """\\data\\
ngram 1=9
ngram 2=2

\\1-grams:
-2.0\t<unk>\t0
-99\t<s>\t-0.3
-1.0\t</s>\t0
-1.0\tthe\t-0.3
-0.5\tcat\t0
-3.0\tkat\t0
-1.0\tto\t0
-1.0\tday\t0
-1.0\ttoday\t0

\\2-grams:
-0.2\t<s> the
-0.1\tthe cat

\\end\\
"""


@pytest.fixture(scope="module")
def arpa(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "lm.arpa"
    path.write_text(ARPA)
    return path


def frames(*spec) -> np.ndarray:
    """Probabilities [T, C]: a character means 0.9 for it and 0.1 for the blank; a dict gives the
    probabilities of some characters, the rest goes to the blank."""
    out = np.zeros((len(spec), ALPHABET.blank_index + 1), np.float32)
    for t, s in enumerate(spec):
        s = {s: 0.9} if isinstance(s, str) else s
        for c, p in s.items():
            out[t, ALPHABET.encode(c)[0]] = p
        out[t, -1] = 1.0 - sum(s.values())
    return out


# "the ?at": acoustically "k" (0.55) beats "c" (0.4)
THE_CAT = frames(*"the ", {"k": 0.55, "c": 0.4}, *"at")
# "to?day": the blank (0.55) beats a space (0.45)
TODAY = frames(*"to", {" ": 0.45}, *"day")


def test_without_a_scorer_decoding_is_greedy():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(ALPHABET.blank_index + 1) * 0.3, size=50).astype(np.float32)
    d = Decoder(ALPHABET)
    assert d.decode(probs) == greedy(probs, len(probs), ALPHABET)
    assert d.decode(THE_CAT) == "the kat" and d.decode(TODAY) == "today"


def test_the_language_model_fixes_an_acoustically_ambiguous_word_and_alpha_weighs_it(arpa):
    assert Decoder(ALPHABET, 16, arpa, lm_alpha=0.0, lm_beta=0.0).decode(THE_CAT) == "the kat"  # acoustics only
    assert Decoder(ALPHABET, 16, arpa, lm_alpha=0.5, lm_beta=0.0).decode(THE_CAT) == "the cat"
    assert Decoder(ALPHABET, 1024, arpa).decode(THE_CAT) == "the cat"  # DeepSpeech's defaults


def test_only_words_of_the_scorer_come_out(arpa):
    probs = frames(*"the ", {"h": 0.9}, *"at")  # "hat" is not in the vocabulary
    assert Decoder(ALPHABET).decode(probs) == "the hat"
    # "cat"/"kat" would need an "h" frame to be "c"/"k" (probability 0): cheaper to read it as a blank
    assert Decoder(ALPHABET, 64, arpa, lm_alpha=0.0, lm_beta=0.0).decode(probs) == "the"


def test_beta_is_a_bonus_per_word(arpa):
    assert Decoder(ALPHABET, 16, arpa, lm_alpha=0.0, lm_beta=0.0).decode(TODAY) == "today"
    assert Decoder(ALPHABET, 16, arpa, lm_alpha=0.0, lm_beta=1.0).decode(TODAY) == "to day"
    assert Decoder(ALPHABET, 16, arpa, lm_alpha=0.0, lm_beta=-1.0).decode(TODAY) == "today"


def test_cutoff_top_n_and_cutoff_prob_remove_unlikely_characters(arpa):
    def decode(**cut):
        return Decoder(ALPHABET, 16, arpa, lm_alpha=1.0, lm_beta=0.0, **cut).decode(THE_CAT)

    assert decode(cutoff_top_n=2) == "the cat"
    assert decode(cutoff_top_n=1) == "the kat"  # "c" is only the second most likely character
    assert decode(cutoff_prob=0.9) == "the cat"  # 0.55 < 0.9: "c" is still kept
    assert decode(cutoff_prob=0.5) == "the kat"  # "k" alone reaches 0.5


def test_decode_batch_in_processes_keeps_the_order(arpa):
    d = Decoder(ALPHABET, 64, arpa, lm_alpha=0.5, lm_beta=0.0)
    batch = [THE_CAT, TODAY, THE_CAT[:4], TODAY]
    serial = [d.decode(p) for p in batch]
    assert serial == ["the cat", "today", "the", "today"]
    assert d.decode_batch(batch, threads=2) == serial


def test_bad_scorers_are_named(tmp_path, arpa):
    with pytest.raises(UserError, match="does not exist"):
        Decoder(ALPHABET, 8, tmp_path / "nope.binary")
    junk = tmp_path / "junk.binary"
    junk.write_bytes(b"not a language model at all" * 10)
    (tmp_path / "junk.binary.words").write_text("the\ncat\n")
    with pytest.raises(UserError, match="junk.binary is not a KenLM model that loads"):
        Decoder(ALPHABET, 8, junk)
    (tmp_path / "junk.binary.words").unlink()
    with pytest.raises(UserError, match=r"junk.binary.words does not exist"):
        Decoder(ALPHABET, 8, junk)
    upper = tmp_path / "upper.arpa"
    upper.write_text(ARPA.replace("\tcat\t", "\tCat\t").replace("the cat", "the Cat"))
    with pytest.raises(UserError, match=r"outside the alphabet .*'Cat'"):
        Decoder(ALPHABET, 8, upper)
    assert arpa_words(arpa) == ["the", "cat", "kat", "to", "day", "today"]
