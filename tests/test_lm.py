"""`dsflow build-lm` with KenLM's real lmplz/build_binary, the scorer in the config check, and evaluation with it."""

import json
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("flashlight.lib.text")

from dsflow import UserError, flags, lm  # noqa: E402
from dsflow import config as dscfg  # noqa: E402
from dsflow.alphabet import Alphabet  # noqa: E402
from dsflow.cli import main  # noqa: E402
from dsflow import scorer  # noqa: E402
from dsflow.decode import Decoder  # noqa: E402
from dsflow.scorer import arpa_words  # noqa: E402
from tests.conftest import DATA, LDC, ROOT  # noqa: E402

HAVE_KENLM = all((Path(sys.executable).parent / t).is_file() or shutil.which(t) for t in ("lmplz", "build_binary"))
needs_kenlm = pytest.mark.skipif(not HAVE_KENLM, reason="KenLM's lmplz/build_binary not built (scripts/setup.sh)")
LDC_TEXT = "she had your dark suit in greasy wash water all year"


@pytest.fixture(scope="module")
def vocab_lm(tmp_path_factory):
    """DeepSpeech's smoke-test scorer source, vocab.txt, as a KenLM binary + ARPA."""
    if not HAVE_KENLM:
        pytest.skip("KenLM's lmplz/build_binary not built (scripts/setup.sh)")
    out = tmp_path_factory.mktemp("lm")
    assert main(["--log", str(out / "log"), "build-lm", "--text", str(LDC / "vocab.txt"), "--alphabet_config_path",
                 str(DATA / "alphabet.txt"), "--output", str(out / "lm.binary"), "--arpa", str(out / "lm.arpa")]) == 0
    return out


@needs_kenlm
def test_build_lm_from_vocab_txt_gives_a_binary_and_an_arpa_that_load(vocab_lm):
    text = (LDC / "vocab.txt").read_text()
    words = sorted(set(text.split()))
    assert (vocab_lm / "lm.binary.words").read_text().split() == words
    assert sorted(arpa_words(vocab_lm / "lm.arpa")) == words
    assert (vocab_lm / "lm.binary").read_bytes()[:4] != b"\\dat"  # binary, not ARPA text
    log = (vocab_lm / "log").read_text()
    assert "501 sentences" in log and "build_binary" in log and "SUCCESS" in log
    alphabet = Alphabet.from_file(DATA / "alphabet.txt")
    for model in ("lm.binary", "lm.arpa"):
        assert Decoder(alphabet, 8, vocab_lm / model).words[1:] == scorer.load(vocab_lm / model, alphabet).words
    assert not list(vocab_lm.glob(".*.part"))


@needs_kenlm
def test_build_lm_names_the_bad_line_and_reads_csv_transcripts(tmp_path):
    bad = tmp_path / "text.txt"
    bad.write_text("she had your dark suit\n\n  in greasy   wash water\nall year 1999\nÉcole\n")
    with pytest.raises(UserError) as e:
        lm.build([str(bad)], DATA / "alphabet.txt", tmp_path / "lm.binary")
    message = str(e.value)
    assert f"{bad}: line 4: characters not in the alphabet ['1', '9']" in message
    assert f"{bad}: line 5: characters not in the alphabet ['É']" in message
    assert "line 1" not in message and "line 3" not in message
    assert not (tmp_path / "lm.binary").exists() and not (tmp_path / "lm.binary.words").exists()
    csv = tmp_path / "train.csv"
    csv.write_text(f"wav_filename,wav_filesize,transcript\na.wav,1,{LDC_TEXT}\nb.wav,1,  she  had\n")
    lm.build([str(csv)], DATA / "alphabet.txt", tmp_path / "lm.binary", order=3)
    assert (tmp_path / "lm.binary.words").read_text().split() == sorted(set(LDC_TEXT.split()))
    csv.write_text("wav_filename,wav_filesize,transcript\na.wav,1,Dark\n")
    with pytest.raises(UserError, match=r"train.csv: row 1: characters not in the alphabet \['D'\]"):
        lm.build([str(csv)], DATA / "alphabet.txt", tmp_path / "lm2.binary")


def test_config_check_loads_the_scorer(tmp_path):
    config = flags.defaults()
    config.update(train_files="data/ldc93s1/ldc93s1.csv", scorer_path=str(tmp_path / "missing.binary"))
    assert any("missing.binary does not exist" in e for e in dscfg.check(config, base=ROOT))
    junk = tmp_path / "junk.arpa"
    junk.write_text("\\data\\\nngram 1=3\n\n\\1-grams:\n-1.0\tthe\n")  # 1 of 3 unigrams, no \\end\\
    config.update(scorer_path=str(junk))
    assert any("junk.arpa is not a KenLM model that loads" in e for e in dscfg.check(config, base=ROOT))
    config.update(build_lm=True)
    assert any("scorer_path and build_lm are both set" in e for e in dscfg.check(config, base=ROOT))


@needs_kenlm
def test_config_check_accepts_a_good_scorer(vocab_lm):
    config = flags.defaults()
    config.update(train_files="data/ldc93s1/ldc93s1.csv", scorer_path=str(vocab_lm / "lm.binary"))
    assert dscfg.check(config, base=ROOT) == []


@needs_kenlm
def test_evaluate_with_a_scorer_end_to_end(tmp_path, vocab_lm):
    """A barely trained model (1 epoch) decodes to near nothing greedily; with the vocab.txt scorer every
    word that comes out is a vocabulary word, and the decoder flags reach the beam search."""
    pytest.importorskip("tensorflow")
    from tests.test_train import make_features, train_args

    feats = make_features(tmp_path, "test", [LDC_TEXT, "she had your dark suit"])
    out = tmp_path / "ckpt"
    assert main(train_args(feats, tmp_path / "work", out, "--n_hidden", 16, "--epochs", 1)) == 0
    runs = {}
    for name, extra in (("greedy", []), ("lm", ["--scorer_path", str(vocab_lm / "lm.binary"), "--beam_width", "64",
                                                "--lm_alpha", "0.5", "--lm_beta", "3", "--threads", "2"])):
        result = tmp_path / f"{name}.json"
        log = tmp_path / f"{name}.log"
        assert main(["--log", str(log), "evaluate", "--checkpoint_dir", str(out), "--test_features", str(feats),
                     "--test_output_file", str(result)] + extra) == 0
        runs[name] = json.loads(result.read_text())
    vocab = set((LDC / "vocab.txt").read_text().split())
    assert all(set(r["res"].split()) <= vocab for r in runs["lm"])
    assert "beam search (beam_width 64, scorer" in (tmp_path / "lm.log").read_text()
    loss = {r["wav_filename"]: r["loss"] for r in runs["greedy"]}
    assert {r["wav_filename"]: r["loss"] for r in runs["lm"]} == loss  # decoding does not touch the loss
