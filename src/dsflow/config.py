"""The workflow's configuration, resolved and checked when the Snakefile loads, before any job runs.

Where a key's value comes from, first match wins:
  1. what you set: `--config key=value`, `--configfile my.yaml`, or an uncommented line of config/config.yaml;
  2. for the bundled demo only (no data set: common_voice_dir, train_files, dev_files and test_files all empty),
     the demo's tuning in config/demo.yaml;
  3. DeepSpeech 0.9.3's default (config/config.schema.yaml, where every key is defined: dsflow.flags).
Every problem is one line naming the key, the value and what is allowed (with the closest key for a typo).
config/config.yaml and config/README.md are generated from the schema (`dsflow config-doc`), so they list every
key with its default and meaning.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

import yaml

from dsflow import UserError, csvfile, flags
from dsflow.alphabet import Alphabet, AlphabetError, from_config
from dsflow.mfcc import window_samples

SPLITS = ("train", "dev", "test")
DATA_KEYS = ("common_voice_dir", "train_files", "dev_files", "test_files")
DEMO = flags.ROOT / "config" / "demo.yaml"
DEMO_CV_DIR = "results/demo/cv-corpus-demo/en"


def coerce_cli_values(config: dict) -> None:
    """Read `--config` values as the schema types them: `--config key=` gives None, DeepSpeech's empty string for
    string keys; `--config early_stop=false` gives the string 'false', a boolean for boolean keys (true/false,
    yes/no, on/off, 1/0, any case); numbers typed as strings in a YAML file stay wrong (and are reported)."""
    props = flags.properties()
    for key, value in config.items():
        kind = props.get(key, {}).get("type")
        if value is None and kind == "string":
            config[key] = ""
        elif kind == "boolean" and isinstance(value, (str, int)) and str(value).lower() in flags.BOOLEAN_WORDS:
            config[key] = flags.BOOLEAN_WORDS[str(value).lower()]


def demo_values() -> dict:
    return yaml.safe_load(DEMO.read_text(encoding="utf-8"))


def is_demo(config: dict) -> bool:
    """No data of your own: the bundled demo runs."""
    return not any(config.get(k) for k in DATA_KEYS)


def allowed(prop: dict) -> str:
    """What a key accepts, in words (for messages and config/README.md)."""
    out = []
    if "enum" in prop:
        out.append(" / ".join(map(str, prop["enum"])))
    elif "type" in prop:
        out.append(" or ".join(map(str, prop["type"])) if isinstance(prop["type"], list) else prop["type"])
    for bound, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if bound in prop:
            out.append(f"{sign} {prop[bound]}")
    for option in prop.get("anyOf", []):
        if "const" in option:
            out.append(f"or {option['const']}")
        else:
            out.append(" and ".join(f"{sign} {option[b]}" for b, sign in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                                                           ("exclusiveMaximum", "<")) if b in option))
    return ", ".join(out)


def resolve(config: dict, base: Path = Path(".")) -> list[str]:
    """Complete `config` in place (see the module docstring) and check it: the list of problems, one line each."""
    import jsonschema

    coerce_cli_values(config)
    props = flags.properties()
    problems = []
    for alias, key in ALIASES.items():  # DeepSpeech's --scorer
        if alias in config:
            config.setdefault(key, config.pop(alias))
    for key in [k for k in config if k not in props]:
        close = difflib.get_close_matches(key, props, n=1, cutoff=0.6)
        problems.append(f"{key}: not a configuration key" + (f" (did you mean {close[0]}?)" if close else
                                                           " (config/README.md lists them all)"))
        del config[key]
    if is_demo(config):
        for key, value in demo_values().items():
            if key in DATA_KEYS:
                config[key] = value  # the demo's data (yours are all empty)
            else:
                config.setdefault(key, value)
    for key, prop in props.items():
        config.setdefault(key, prop.get("default"))
        errors = list(jsonschema.Draft202012Validator(prop).iter_errors(config[key]))
        if errors:
            problems.append(f"{key}={config[key]!r}: {errors[0].message}; allowed: {allowed(prop)} "
                            f"(DeepSpeech's default: {prop.get('default')!r})")
    return problems or check(config, base)


def check(config: dict, base: Path = Path(".")) -> list[str]:
    """Problems of a complete, schema-valid config that the schema cannot express. Empty list = fine."""
    errors = []
    try:
        window_samples(config["audio_sample_rate"], config["feature_win_len"], config["feature_win_step"])
    except ValueError as e:
        errors.append(str(e))
    cv = config.get("common_voice_dir", "")
    files = {s: flags.file_list(config.get(f"{s}_files", "")) for s in SPLITS}
    if cv:
        given = [f"{s}_files" for s in SPLITS if files[s]]
        if given:
            errors.append(f"common_voice_dir={cv!r} is set, so the CSVs come from the import rule; "
                          f"leave {', '.join(given)} empty (or clear common_voice_dir to use your own CSVs)")
        if cv != DEMO_CV_DIR and not (base / cv).is_dir():
            errors.append(f"common_voice_dir: {cv!r} is not a directory")
    else:
        if not files["train"] and not files["test"]:
            errors.append("neither common_voice_dir nor train_files/test_files is set: there is nothing to do")
        for split in SPLITS:
            for f in files[split]:
                if not (base / f).is_file():
                    errors.append(f"{split}_files: {f!r} does not exist")
                else:
                    try:
                        csvfile.check_header(base / f)
                    except UserError as e:
                        errors.append(f"{split}_files: {e}")
    try:
        Alphabet.from_file(base / config["alphabet_config_path"])
    except AlphabetError as e:
        errors.append(f"alphabet_config_path: {e}")
    start, model = config.get("load_checkpoint_dir"), config.get("checkpoint_dir")
    if start and not (base / start).exists() and not Path(f"{base / start}.index").exists():
        errors.append(f"load_checkpoint_dir: {start!r} does not exist")
    if files["train"] or cv:
        out = (base / (config.get("save_checkpoint_dir") or model or "results/checkpoints")).resolve()
        if start and (out == (base / start).resolve() or out in (base / start).resolve().parents):
            errors.append(f"load_checkpoint_dir {start!r} is (inside) the folder training publishes to ({out}), "
                          "which Snakemake deletes before training; training resumes from its own state anyway "
                          "(results/work/train): point load_checkpoint_dir at another model's folder")
    elif files["test"] or config.get("export_dir"):
        if not (start or model):
            errors.append("without train_files there is no model to evaluate or export: set checkpoint_dir (or "
                          "load_checkpoint_dir) to a trained model's folder (dsflow's or DeepSpeech's format)")
        elif not (base / (start or model)).exists():
            errors.append(f"{'load_checkpoint_dir' if start else 'checkpoint_dir'}: {start or model!r}, the model to "
                          "evaluate or export, does not exist")
    if config.get("augment"):
        from dsflow import augspec

        try:
            augspec.parse(config["augment"], config["audio_sample_rate"])
        except UserError as e:
            errors.append(f"augment: {e}")
    if config.get("lm_optimize"):
        if not (config.get("scorer_path") or config.get("build_lm")):
            errors.append("lm_optimize: there is no scorer to tune; set scorer_path (a .scorer package) or build_lm")
        if not (cv or files["dev"]):
            errors.append("lm_optimize: the search runs on the dev set; set dev_files")
    if config.get("scorer_path"):
        if config.get("build_lm"):
            errors.append("scorer_path and build_lm are both set: use your scorer (build_lm: false) or build one "
                          "from the training transcripts (scorer_path empty)")
        errors += check_scorer(config, base)
    return errors


def check_scorer(config: dict, base: Path = Path(".")) -> list[str]:
    """DeepSpeech loaded the scorer before training; a bad one is an error before any job runs."""
    from dsflow import scorer
    from dsflow.decode import Decoder

    path = base / config["scorer_path"]
    try:
        alphabet = from_config(base / config["alphabet_config_path"], config.get("bytes_output_mode", False))
        Decoder(alphabet, 1, path, config["lm_alpha"], config["lm_beta"])
        if config.get("lm_optimize") and scorer.load(path, alphabet).kind != "package":
            return [f"lm_optimize: scorer_path {config['scorer_path']} is not a .scorer package, whose defaults the "
                    "search writes; make one with `dsflow scorer-package` or `dsflow build-lm --package`"]
    except AlphabetError:
        return []  # reported above
    except UserError as e:
        return [str(e)]
    return []


# ---------------------------------------------------------------------------------------------- DeepSpeech's flags

# Every flag of DeepSpeech 0.9.3's util/flags.py that is not a config key of the same name and meaning: how dsflow
# offers it, or why not. (Every other flag of that file is a key here: "same".)
NOT_THE_SAME = {
    "cache_for_epochs": "not offered: the features stage is the cache and never goes stale (it re-runs when its CSV, "
                        "audio or settings change); augmentation computes fresh examples every epoch instead",
    "dropout_rate4": "not offered: DeepSpeech fed it but never applied it (slot 4 of its six dropout rates)",
    "dropout_rate5": "not offered: DeepSpeech fed it but never applied it (slot 5 of its six dropout rates)",
    "export_batch_size": "not offered: the exported streaming model takes one stream (DeepSpeech's default 1)",
    "feature_cache": "adapted: the `features` stage computes each split's features once into results/features "
                     "(TFRecord shards), the cache every epoch reads",
    "inter_op_parallelism_threads": "adapted: each rule's `threads` (Snakemake's --cores / set-threads) sets "
                                    "TensorFlow's pools",
    "intra_op_parallelism_threads": "adapted: each rule's `threads` (Snakemake's --cores / set-threads) sets "
                                    "TensorFlow's pools",
    "log_placement": "not offered: a TensorFlow 1 session option (device placement logging)",
    "one_shot_infer": "adapted: the command `dsflow infer --checkpoint_dir DIR audio.wav` (DeepSpeech printed the "
                      "transcript of one file after training; a workflow has no such last step)",
    "read_buffer": "not offered: the features are read from TFRecord shards by tf.data, which buffers itself",
    "remove_export": "not offered: the export folder is always replaced, atomically",
    "scorer": "same: DeepSpeech's alias of scorer_path, accepted as a key and read as scorer_path",
    "use_allow_growth": "adapted: always on (every job sets TF_FORCE_GPU_ALLOW_GROWTH=true unless you set it)",
    # same name, meaning adapted (the README's "Where dsflow deliberately differs" says why)
    "automatic_mixed_precision": "adapted: bfloat16 compute with float32 weights and loss (TF2, not TF1's graph "
                                 "rewrite)",
    "checkpoint_dir": "adapted: where training publishes its checkpoint folder (default results/checkpoints); "
                      "training resumes from its own state folder (results/work/train), not from here",
    "checkpoint_secs": "same, and fractions of a second are taken too",
    "epochs": "adapted: the total number of epochs; a re-run with a larger value continues",
    "load_checkpoint_dir": "same, and a dsflow checkpoint folder is taken too; without training, the model to "
                           "evaluate and export",
    "load_train": "adapted: auto/last resume the latest state of this run's state folder (DeepSpeech: best_dev)",
    "lm_alpha": "adapted: empty (the default) means the scorer's own default (a .scorer package's header, else "
                "DeepSpeech's 0.931289039105002)",
    "lm_beta": "adapted: empty (the default) means the scorer's own default (a .scorer package's header, else "
               "DeepSpeech's 1.1834137581510284)",
    "show_progressbar": "adapted: progress lines with rate and ETA (in the terminal and the job logs) instead of bars",
    "summary_dir": "same; empty means the training state folder's summaries/",
    "train_cudnn": "accepted: dsflow has one LSTM (DeepSpeech's arithmetic, cuDNN-compatible weights) on any device",
}
ALIASES = {"scorer": "scorer_path"}
DEEPSPEECH_FLAG_NAMES = sorted(
    "alphabet_config_path audio_sample_rate augment automatic_mixed_precision beam_width beta1 beta2 bytes_output_mode "
    "cache_for_epochs checkpoint_dir checkpoint_secs cutoff_prob cutoff_top_n dev_batch_size dev_files "
    "drop_source_layers dropout_rate dropout_rate2 dropout_rate3 dropout_rate4 dropout_rate5 dropout_rate6 early_stop "
    "epochs epsilon es_epochs es_min_delta export_author_id export_batch_size export_beam_width export_contact_info "
    "export_description export_dir export_file_name export_language export_license export_max_ds_version "
    "export_min_ds_version export_model_name export_model_version export_tflite export_zip feature_cache "
    "feature_win_len feature_win_step force_initialize_learning_rate inter_op_parallelism_threads "
    "intra_op_parallelism_threads layer_norm learning_rate limit_dev limit_test limit_train lm_alpha lm_alpha_max "
    "lm_beta lm_beta_max load_checkpoint_dir load_cudnn load_evaluate load_train log_level log_placement max_to_keep "
    "metrics_files n_hidden n_steps n_trials one_shot_infer plateau_epochs plateau_reduction random_seed read_buffer "
    "reduce_lr_on_plateau relu_clip remove_export report_count reverse_dev reverse_test reverse_train "
    "save_checkpoint_dir scorer scorer_path show_progressbar summary_dir test_batch_size test_files test_output_file "
    "train_batch_size train_cudnn train_files use_allow_growth".split())


def deepspeech_flags_table(names: list[str]) -> list[str]:
    """The Markdown table of DeepSpeech 0.9.3's flags (`names`): offered the same, adapted, or not offered and why."""
    props = flags.properties()
    lines = ["| DeepSpeech 0.9.3 flag | in dsflow |", "|---|---|"]
    for name in names:
        note = NOT_THE_SAME.get(name)
        if note is None:
            note = "same" if name in props else "MISSING"
        lines.append(f"| `{name}` | {note.replace('|', chr(92) + '|')} |")
    return lines


# ---------------------------------------------------------------------------------------------- generated files

def _show(v) -> str:
    return "`\"\"`" if v == "" else f"`{json.dumps(v) if isinstance(v, bool) else v}`"


def markdown() -> str:
    """config/README.md: every key, generated from the schema."""
    demo = demo_values()
    lines = [
        "# Configuration",
        "",
        "<!-- Generated by `dsflow config-doc > config/README.md` from config.schema.yaml; do not edit. -->",
        "",
        "Every key has DeepSpeech 0.9.3's flag name and meaning; **[dsflow]** marks this workflow's own keys. A key",
        "takes, first match wins: your value (`snakemake --config key=value`, `--configfile my.yaml`, or a line of",
        "`config/config.yaml`); for the bundled demo only (no data set), the demo's value (`config/demo.yaml`);",
        "else DeepSpeech's default (`config.schema.yaml`, JSON Schema draft 2020-12, checked when the Snakefile",
        "loads). `--config key=` sets an empty string.",
        "",
        "| key | default (DeepSpeech's for its flags) | demo value | allowed | meaning |",
        "|---|---|---|---|---|",
    ]
    for key, prop in flags.properties().items():
        desc = " ".join(prop.get("description", "").split()).replace("|", "\\|")
        demo_value = _show(demo[key]) if key in demo else ""
        lines.append(f"| `{key}` | {_show(prop.get('default'))} | {demo_value} | {allowed(prop)} | {desc} |")
    lines += ["", "## DeepSpeech 0.9.3's flags", "",
              "Every flag of DeepSpeech 0.9.3's `util/flags.py`: offered as the key of the same name and meaning "
              "(\"same\"), adapted, or not offered and why.", ""]
    lines += deepspeech_flags_table(DEEPSPEECH_FLAG_NAMES)
    return "\n".join(lines) + "\n"


def config_yaml() -> str:
    """config/config.yaml: your settings. The data keys, then every other key commented out with its default."""
    def value(v) -> str:
        return json.dumps(v) if isinstance(v, str) and (v == "" or ":" in v or "#" in v or v.startswith("<")) \
            else yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("\n...").strip()

    lines = [
        "# dsflow configuration: your settings. Keys are DeepSpeech 0.9.3's flags, same names and meaning.",
        "# Generated by `dsflow config-doc --yaml` from config.schema.yaml; config/README.md documents every key.",
        "#",
        "# Your data: DeepSpeech CSVs (train_files, dev_files, test_files: comma-separated lists) or a Common Voice",
        "# release folder (common_voice_dir). With all four empty, `snakemake` runs the bundled demo, tuned by",
        "# config/demo.yaml. Every other key takes DeepSpeech's default (shown) unless you uncomment and set it here,",
        "# or override it for one run: snakemake --config n_hidden=64 epochs=3",
    ]
    for key, prop in flags.properties().items():
        line = f"{key}: {value(prop.get('default'))}"
        if key not in DATA_KEYS:
            line = "# " + line
        first = re.split(r"\.\s+(?=[A-Z(`])", " ".join(prop.get("description", "").split()))[0].rstrip(".")
        lines.append(f"{line}  # {first}")
    return "\n".join(lines) + "\n"


def add_parser(sub) -> None:
    p = sub.add_parser("config-doc", help="print config/README.md (or with --yaml config/config.yaml), generated "
                                          "from the schema")
    p.add_argument("--yaml", action="store_true", help="print config/config.yaml instead")
    p.set_defaults(func=_config_doc)


def _config_doc(args) -> int:
    print(config_yaml() if args.yaml else markdown(), end="")
    return 0
