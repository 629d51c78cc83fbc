"""config.yaml = DeepSpeech's flags: names, defaults, documentation, and errors before any job runs."""

import re

import pytest
import yaml

from dsflow import config as dscfg
from tests.conftest import ROOT
from tests.workflow import snakemake, workdir

# DeepSpeech 0.9.3 util/flags.py defaults (reference section 1).
DEEPSPEECH_DEFAULTS = {
    "train_files": "", "dev_files": "", "test_files": "", "epochs": 75, "dropout_rate": 0.05,
    "dropout_rate2": -1.0, "dropout_rate3": -1.0, "dropout_rate6": -1.0, "relu_clip": 20.0, "beta1": 0.9,
    "beta2": 0.999, "epsilon": 1e-8, "learning_rate": 0.001, "train_batch_size": 1, "dev_batch_size": 1,
    "test_batch_size": 1, "n_hidden": 2048, "layer_norm": False, "random_seed": 4568,
    "automatic_mixed_precision": False, "checkpoint_dir": "", "checkpoint_secs": 600, "max_to_keep": 5,
    "load_train": "auto", "load_evaluate": "auto", "early_stop": False, "es_epochs": 25, "es_min_delta": 0.05,
    "reduce_lr_on_plateau": False, "plateau_epochs": 10, "plateau_reduction": 0.1, "audio_sample_rate": 16000,
    "feature_win_len": 32, "feature_win_step": 20, "export_dir": "", "export_tflite": False, "n_steps": 16,
    "export_file_name": "output_graph", "export_beam_width": 500, "export_author_id": "author",
    "export_model_name": "model", "export_model_version": "0.0.1", "export_language": "<help text>",
    "alphabet_config_path": "data/alphabet.txt", "scorer_path": "", "beam_width": 1024,
    "lm_alpha": 0.931289039105002, "lm_beta": 1.1834137581510284, "cutoff_prob": 1.0, "cutoff_top_n": 300,
    "report_count": 5, "normalize_sample_rate": True,
}


def test_schema_defaults_are_deepspeechs():
    defaults = dscfg.defaults()
    for key, value in DEEPSPEECH_DEFAULTS.items():
        assert defaults[key] == value, key


def test_shipped_config_has_every_key_and_states_the_default_on_its_line():
    schema = dscfg.load_schema()
    text = (ROOT / "config" / "config.yaml").read_text()
    config = yaml.safe_load(text)
    assert set(config) == set(schema["properties"])
    for key, prop in schema["properties"].items():
        line = re.search(rf"^{key}: (.*)$", text, re.M).group(1)
        stated = re.search(r"# (?:\[dsflow\] |DeepSpeech (?:master )?)default: (.*?)(?: \(|$)", line)
        assert stated, f"config.yaml line of {key} does not state the default"
        assert yaml.safe_load(stated.group(1)) == prop["default"], key


def test_config_readme_documents_every_key():
    assert (ROOT / "config" / "README.md").read_text() == dscfg.markdown()


def test_check_catches_what_the_schema_cannot(tmp_path):
    config = dscfg.defaults()
    config.update(train_files="nope.csv,data/ldc93s1/ldc93s1.csv", feature_win_len=31.99)
    errors = dscfg.check(config, base=ROOT)
    assert any("'nope.csv' does not exist" in e for e in errors)
    assert not any("ldc93s1.csv" in e for e in errors)
    assert any("feature_win_len=31.99 ms" in e and "whole number of samples" in e for e in errors)
    config.update(train_files="", common_voice_dir="", feature_win_len=32)
    assert any("nothing to do" in e for e in dscfg.check(config, base=ROOT))
    config.update(common_voice_dir="cv", test_files="data/ldc93s1/ldc93s1.csv")
    errors = dscfg.check(config, base=ROOT)
    assert any("leave test_files empty" in e for e in errors) and any("'cv' is not a directory" in e for e in errors)


@pytest.fixture(scope="module")
def wf(tmp_path_factory):
    return workdir(tmp_path_factory.mktemp("config"))


SMOKE = ["common_voice_dir=", "train_files=data/ldc93s1/ldc93s1.csv", "test_files=data/ldc93s1/ldc93s1.csv"]


@pytest.mark.parametrize("override, message", [
    ("plateau_reduction=1.5", r"plateau_reduction.*must be > 0 and < 1"),
    ("n_hidden=0", r"0 is less than the minimum of 1"),
    ("validation_policy=maybe", r"'maybe' is not one of \['drop', 'fail'\]"),
    ("train_files=missing/train.csv", r"train_files: 'missing/train.csv' does not exist"),
    ("feature_win_step=20.01", r"feature_win_step=20.01 ms at audio_sample_rate=16000 Hz is 320.16"),
    ("no_such_flag=1", r"Additional properties are not allowed \('no_such_flag' was unexpected\)"),
])
def test_invalid_config_is_refused_before_any_job(wf, override, message):
    done = snakemake(wf, "-n", "--config", *SMOKE, override, check=False)
    assert done.returncode != 0
    assert re.search(message, done.stdout, re.S), done.stdout[-2000:]
    assert not (wf / "results").exists()


def test_lint_is_clean(wf):
    done = snakemake(wf, "--lint")
    assert "Congratulations, your workflow is in a good condition!" in done.stdout
