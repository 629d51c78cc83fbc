"""Each config key is defined once (the schema): the subcommands' options and the rules' command lines come from it."""

import shlex

import pytest

from dsflow import config as dscfg
from dsflow import flags as dsflags
from dsflow.cli import COMMANDS, build_parser

# the options each command needs besides its config keys (paths of inputs and outputs)
REQUIRED = {
    "import-cv": ["--cv_dir", "c", "--out_dir", "o", "--wav_dir", "w"],
    "validate": ["--split", "train", "--csv", "a.csv", "--alphabet_config_path", "a", "--out_csv", "o",
                 "--rejects", "r", "--summary", "s", "--audio_dir", "d"],
    "features": ["--csv", "a.csv", "--out_dir", "o"],
    "train": ["--train_features", "t", "--alphabet_config_path", "a", "--checkpoint_dir", "c", "--work_dir", "w"],
    "build-lm": ["--text", "t", "--alphabet_config_path", "a", "--output", "o"],
    "evaluate": ["--checkpoint_dir", "c", "--test_features", "t"],
    "export": ["--checkpoint_dir", "c", "--export_dir", "e"],
}


# deliberate: import-cv filters by an alphabet only when given one; transcribe's beam width defaults to the model's
# export_beam_width (0), as DeepSpeech's client used the model's metadata
DIFFERENT_DEFAULTS = {("import-cv", "alphabet_config_path"), ("transcribe", "beam_width")}


def options(command):
    sub = build_parser([command])._subparsers._group_actions[0].choices[command]
    return {a.dest: a for a in sub._actions if a.option_strings}


@pytest.mark.parametrize("command", sorted(REQUIRED))
def test_a_rules_command_line_parses_back_to_the_config_values(command):
    """What a rule renders from the config is what the subcommand reads, for the defaults and for the demo."""
    for config in (dsflags.defaults(), {**dsflags.defaults(), **dscfg.demo_values()}):
        args = build_parser([command]).parse_args([command, *shlex.split(dsflags.render(command, config)),
                                                   *REQUIRED[command]])
        assert {k: getattr(args, k) for k in dsflags.command_keys(command)} == \
            {k: config[k] for k in dsflags.command_keys(command)}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_options_named_like_config_keys_have_the_schemas_default(command):
    props = dsflags.properties()
    opts = options(command)
    assert set(dsflags.command_keys(command)) <= set(opts)
    for key, action in opts.items():
        if key == "help":
            continue
        assert action.option_strings == [f"--{key}"], "one naming convention: --config_key"
        if key in props and not action.required and (command, key) not in DIFFERENT_DEFAULTS:
            assert action.default == props[key]["default"], (command, key)


def test_every_schema_key_tagged_for_a_command_names_a_real_command():
    for key, prop in dsflags.properties().items():
        assert set(prop.get("x-commands", [])) <= set(COMMANDS), key

