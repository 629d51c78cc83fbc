"""`dsflow lm-optimize` (DeepSpeech's lm_optimizer.py): the real Optuna study and beam search over cached
probabilities, and the command end to end with a trained checkpoint and a .scorer package."""

import json
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("flashlight.lib.text")
pytest.importorskip("optuna")

from dsflow import lm_optimize, scorer  # noqa: E402
from dsflow.cli import main  # noqa: E402
from dsflow.decode import Decoder  # noqa: E402
from tests.conftest import DATA, LDC  # noqa: E402
from tests.test_decode import ALPHABET, ARPA, THE_CAT, TODAY  # noqa: E402

HAVE_KENLM = all((Path(sys.executable).parent / t).is_file() or shutil.which(t) for t in ("lmplz", "build_binary"))


def test_the_study_finds_weights_that_fix_both_sets(tmp_path):
    """Set 1 needs lm_alpha > 0 ("the kat" -> "the cat"), set 2 a small lm_beta ("to day" -> "today"); corners
    of the square get one of them wrong, so the trials' WERs differ and the best must be 0."""
    arpa = tmp_path / "lm.arpa"
    arpa.write_text(ARPA)
    decoder = Decoder(ALPHABET, 16, arpa)
    sets = [[("a.wav", "the cat"), ("b.wav", "the cat")], [("c.wav", "today")]]
    trials = lm_optimize.Trials(decoder, [THE_CAT, THE_CAT, TODAY], tmp_path, threads=2)
    try:
        study = lm_optimize.optimize(trials, sets, n_trials=12, alpha_max=5.0, beta_max=5.0, seed=7,
                                     start=(0.0, 5.0))  # the first trial: both sets wrong
        again = lm_optimize.optimize(trials, sets, n_trials=12, alpha_max=5.0, beta_max=5.0, seed=7,
                                     start=(0.0, 5.0))
    finally:
        trials.close()
    assert [t.params for t in again.trials] == [t.params for t in study.trials]  # seeded: repeatable
    assert study.trials[0].params == {"lm_alpha": 0.0, "lm_beta": 5.0} and study.trials[0].value == 0.8  # 4 / 5
    assert all(0 <= t.params["lm_alpha"] <= 5 and 0 <= t.params["lm_beta"] <= 5 for t in study.trials)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert study.best_value == 0.0 and max(t.value for t in done) > 0
    best = study.best_params
    decoder.set_alpha_beta(best["lm_alpha"], best["lm_beta"])
    assert [decoder.decode(p) for p in (THE_CAT, TODAY)] == ["the cat", "today"]


@pytest.mark.skipif(not HAVE_KENLM, reason="KenLM's lmplz/build_binary not built (scripts/setup.sh)")
def test_lm_optimize_end_to_end(tmp_path):
    pytest.importorskip("tensorflow")
    from tests.test_train import make_features, train_args

    text = "she had your dark suit in greasy wash water all year"
    feats = make_features(tmp_path, "dev", [text, "she had your dark suit"])
    ckpt = tmp_path / "ckpt"
    assert main(train_args(feats, tmp_path / "work", ckpt, "--n_hidden", 16, "--epochs", 1)) == 0
    lm = tmp_path / "lm"
    assert main(["build-lm", "--text", str(LDC / "vocab.txt"), "--alphabet_config_path", str(DATA / "alphabet.txt"),
                 "--output", str(lm / "lm.binary"), "--package", str(lm / "lm.scorer")]) == 0
    log = tmp_path / "log"
    assert main(["--log", str(log), "lm-optimize", "--checkpoint_dir", str(ckpt), "--test_features", str(feats),
                 "--scorer_path", str(lm / "lm.scorer"), "--n_trials", "4", "--beam_width", "16", "--threads", "2",
                 "--lm_alpha_max", "2", "--lm_beta_max", "3", "--output", str(tmp_path / "best.json"),
                 "--output_scorer", str(tmp_path / "tuned.scorer")]) == 0
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["n_trials"] == 4 and len(best["trials"]) == 4 and best["objective"] == "wer"
    assert 0 <= best["lm_alpha"] <= 2 and 0 <= best["lm_beta"] <= 3 and 0 <= best["wer"] <= 1
    complete = [t for t in best["trials"] if t["state"] == "complete"]
    defaults = (scorer.LM_ALPHA, scorer.LM_BETA)  # the package's defaults are the first trial
    assert (best["trials"][0]["lm_alpha"], best["trials"][0]["lm_beta"]) == defaults
    assert best["wer"] == min(t["wer"] for t in complete)
    assert best["test_features"] == [str(feats)] and best["decoder"]["beam_width"] == 16
    tuned = scorer.load(tmp_path / "tuned.scorer", ALPHABET)
    assert (tuned.default_alpha, tuned.default_beta) == (best["lm_alpha"], best["lm_beta"])
    lines = log.read_text()
    assert "acoustic model: 2 utterances" in lines and "lm-optimize: 4/4 trials (100%)" in lines
    assert "trial 4/4: lm_alpha" in lines
    # the command's own checks come before the network runs
    assert main(["lm-optimize", "--checkpoint_dir", str(ckpt), "--test_features", str(feats), "--scorer_path",
                 str(lm / "lm.binary"), "--output", str(tmp_path / "x.json"), "--output_scorer",
                 str(tmp_path / "x.scorer")]) == 2
    assert not (tmp_path / "x.json").exists()
