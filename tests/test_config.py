"""config.yaml = DeepSpeech's flags: names, defaults, documentation, and errors before any job runs."""

import re

import pytest
import yaml

from dsflow import config as dscfg
from dsflow import flags as dsflags
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
    "lm_alpha": None, "lm_beta": None,  # the scorer's own: DeepSpeech's 0.931289039105002 / 1.1834137581510284 for
    # a KenLM model, a package's header values (DeepSpeech's release scorer: the same) for a .scorer package
    "cutoff_prob": 1.0, "cutoff_top_n": 300,
    "report_count": 5, "normalize_sample_rate": True,
}


def test_schema_defaults_are_deepspeechs():
    defaults = dsflags.defaults()
    for key, value in DEEPSPEECH_DEFAULTS.items():
        assert defaults[key] == value, key


def test_shipped_config_files_are_generated_from_the_schema():
    """config.yaml lists every key with DeepSpeech's default (the data keys set, the rest commented out);
    README.md documents every key; demo.yaml only holds valid keys whose values differ from the defaults."""
    assert (ROOT / "config" / "config.yaml").read_text() == dscfg.config_yaml()
    assert (ROOT / "config" / "README.md").read_text() == dscfg.markdown()
    text = (ROOT / "config" / "config.yaml").read_text()
    props = dsflags.properties()
    for key, prop in props.items():
        line = re.search(rf"^(?:# )?{key}: (.*?)  # ", text, re.M)
        assert line and yaml.safe_load(line.group(1)) == prop["default"], key
    assert yaml.safe_load(text) == {k: "" for k in dscfg.DATA_KEYS}
    demo = dscfg.demo_values()
    assert set(demo) <= set(props) and all(demo[k] != props[k]["default"] for k in demo)


def test_every_deepspeech_flag_is_in_the_table():
    """config/README.md ends with every flag of DeepSpeech 0.9.3's util/flags.py: offered, adapted, or not and why."""
    names = [n.strip() for n in (ROOT / "tests/data/deepspeech/flags.txt").read_text().splitlines()
             if n.strip() and not n.startswith("#")]
    assert dscfg.DEEPSPEECH_FLAG_NAMES == sorted(names)
    table = dscfg.deepspeech_flags_table(names)
    assert len(table) == len(names) + 2 and not any("MISSING" in line for line in table)
    props = dsflags.properties()
    for line in table[2:]:
        name = line.split("`")[1]
        assert name in props or name in dscfg.NOT_THE_SAME, name  # "same" only for keys of the schema


def test_deepspeechs_scorer_alias_is_read_as_scorer_path():
    config = {"train_files": "data/ldc93s1/ldc93s1.csv", "scorer": "nope.scorer"}
    problems = dscfg.resolve(config, base=ROOT)
    assert config["scorer_path"] == "nope.scorer" and "scorer" not in config
    assert any("nope.scorer does not exist" in p for p in problems)


def test_the_demos_tuning_applies_to_the_demo_only():
    demo = {}
    assert dscfg.resolve(demo, base=ROOT) == []
    assert demo["common_voice_dir"] == dscfg.DEMO_CV_DIR and demo["n_hidden"] == 256 and demo["epochs"] == 30
    assert demo["learning_rate"] == 0.001  # not in demo.yaml: DeepSpeech's default
    mine = {"n_hidden": 64, "common_voice_dir": ""}  # the demo with one key of yours
    assert dscfg.resolve(mine, base=ROOT) == []
    assert mine["n_hidden"] == 64 and mine["epochs"] == 30 and mine["common_voice_dir"] == dscfg.DEMO_CV_DIR
    own = {"train_files": "data/ldc93s1/ldc93s1.csv", "epochs": 3, "common_voice_dir": ""}
    assert dscfg.resolve(own, base=ROOT) == []
    assert own == {**dsflags.defaults(), "train_files": "data/ldc93s1/ldc93s1.csv", "epochs": 3}


def test_each_problem_is_one_line_with_the_key_value_and_what_is_allowed():
    config = {"n_hiden": 64, "n_hidden": 0, "early_stop": "maybe", "train_files": "data/ldc93s1/ldc93s1.csv"}
    problems = dscfg.resolve(config, base=ROOT)
    assert problems == [
        "n_hiden: not a configuration key (did you mean n_hidden?)",
        "n_hidden=0: 0 is less than the minimum of 1; allowed: integer, >= 1 (DeepSpeech's default: 2048)",
        "early_stop='maybe': 'maybe' is not of type 'boolean'; allowed: boolean (DeepSpeech's default: False)",
    ]


def test_check_catches_what_the_schema_cannot(tmp_path):
    config = dsflags.defaults()
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


SMOKE = ["train_files=data/ldc93s1/ldc93s1.csv", "test_files=data/ldc93s1/ldc93s1.csv"]


@pytest.mark.parametrize("override, message", [
    ("plateau_reduction=1.5", r"plateau_reduction=1.5: 1.5 is greater than or equal to the maximum of 1; allowed: "
                              r"number, > 0, < 1 \(DeepSpeech's default: 0.1\)"),
    ("n_hidden=0", r"n_hidden=0: 0 is less than the minimum of 1"),
    ("validation_policy=maybe", r"validation_policy='maybe': 'maybe' is not one of \['drop', 'fail'\]"),
    ("train_files=missing/train.csv", r"train_files: 'missing/train.csv' does not exist"),
    ("feature_win_step=20.01", r"feature_win_step=20.01 ms at audio_sample_rate=16000 Hz is 320.16"),
    ("n_hiden=64", r"n_hiden: not a configuration key \(did you mean n_hidden\?\)"),
])
def test_invalid_config_is_refused_before_any_job(wf, override, message):
    done = snakemake(wf, "-n", "--config", *SMOKE, override, check=False)
    assert done.returncode != 0
    assert re.search(r"^  - " + message, done.stdout, re.M), done.stdout[-2000:]
    assert "properties:" not in done.stdout and len(done.stdout.splitlines()) < 15, done.stdout  # no schema dump
    assert not (wf / "results").exists()


def test_lint_is_clean(wf):
    done = snakemake(wf, "--lint")
    assert "Congratulations, your workflow is in a good condition!" in done.stdout
