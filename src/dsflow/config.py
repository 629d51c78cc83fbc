"""The workflow's configuration: DeepSpeech's flags, checked before any job runs."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from dsflow.alphabet import Alphabet, AlphabetError
from dsflow.mfcc import window_samples

SPLITS = ("train", "dev", "test")


def _workflow_root() -> Path:
    """The folder holding config/: the source tree of an editable install (scripts/setup.sh), else the
    working directory (Snakemake runs jobs from the workflow's folder)."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / "config" / "config.schema.yaml").is_file():
            return root
    return Path.cwd()


ROOT = _workflow_root()
SCHEMA = ROOT / "config" / "config.schema.yaml"
DEMO_CV_DIR = "results/demo/cv-corpus-demo/en"


def cli_bool(text) -> bool:
    """A boolean flag's value on a `dsflow` command line (DeepSpeech's absl booleans: true/false, 1/0, ...)."""
    import argparse

    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def load_schema(path: Path = SCHEMA) -> dict:
    return yaml.safe_load(path.read_text())


def defaults(schema: dict | None = None) -> dict:
    schema = schema or load_schema()
    return {k: v.get("default") for k, v in schema["properties"].items()}


def coerce_cli_values(config: dict, schema: dict | None = None) -> None:
    """Read `--config` values as the schema types them.

    `--config key=` gives None: DeepSpeech's empty string for string keys. `--config early_stop=false`
    gives the string 'false': a boolean for boolean keys (true/false, yes/no, on/off, 1/0, any case).
    """
    props = (schema or load_schema())["properties"]
    words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
    for key, value in config.items():
        kind = props.get(key, {}).get("type")
        if value is None and kind == "string":
            config[key] = ""
        elif kind == "boolean" and isinstance(value, (str, int)) and str(value).lower() in words:
            config[key] = words[str(value).lower()]


def file_list(value: str) -> list[str]:
    """DeepSpeech's comma-separated file flags."""
    return [p.strip() for p in (value or "").split(",") if p.strip()]


def check(config: dict, base: Path = Path(".")) -> list[str]:
    """Errors in a (schema-validated) config that the schema cannot express. Empty list = fine."""
    errors = []
    try:
        window_samples(config["audio_sample_rate"], config["feature_win_len"], config["feature_win_step"])
    except ValueError as e:
        errors.append(str(e))
    cv = config.get("common_voice_dir", "")
    files = {s: file_list(config.get(f"{s}_files", "")) for s in SPLITS}
    if cv:
        given = [f"{s}_files" for s in SPLITS if files[s]]
        if given:
            errors.append(
                f"common_voice_dir={cv!r} is set, so the CSVs come from the import rule; "
                f"leave {', '.join(given)} empty (or clear common_voice_dir to use your own CSVs)"
            )
        if cv != DEMO_CV_DIR and not (base / cv).is_dir():
            errors.append(f"common_voice_dir: {cv!r} is not a directory")
    else:
        if not files["train"] and not files["test"]:
            errors.append("neither common_voice_dir nor train_files/test_files is set: there is nothing to do")
        for split in SPLITS:
            for f in files[split]:
                if not (base / f).is_file():
                    errors.append(f"{split}_files: {f!r} does not exist")
    try:
        Alphabet.from_file(base / config["alphabet_config_path"])
    except AlphabetError as e:
        errors.append(f"alphabet_config_path: {e}")
    if config.get("scorer_path"):
        if config.get("build_lm"):
            errors.append("scorer_path and build_lm are both set: use your scorer (build_lm: false) or build one "
                          "from the training transcripts (scorer_path empty)")
        errors += check_scorer(config, base)
    return errors


def check_scorer(config: dict, base: Path = Path(".")) -> list[str]:
    """DeepSpeech loaded the scorer before training; a bad one is an error before any job runs."""
    from dsflow import UserError
    from dsflow.decode import Decoder

    try:
        alphabet = Alphabet.from_file(base / config["alphabet_config_path"])
        Decoder(alphabet, 1, base / config["scorer_path"], config["lm_alpha"], config["lm_beta"])
    except AlphabetError:
        return []  # reported above
    except UserError as e:
        return [str(e)]
    return []


def markdown(schema: dict | None = None) -> str:
    """config/README.md, generated from the schema so that it documents every key."""
    schema = schema or load_schema()
    demo = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    lines = [
        "# Configuration",
        "",
        "<!-- Generated by `dsflow config-doc > config/README.md` from config.schema.yaml; do not edit. -->",
        "",
        "`config/config.yaml` holds the quick demo's values; the schema (`config.schema.yaml`, JSON Schema",
        "draft 2020-12, checked when the Snakefile loads) holds DeepSpeech 0.9.3's defaults. Keys have",
        "DeepSpeech's flag names and meanings; **[dsflow]** marks this workflow's own keys. Override any key",
        "with `snakemake --config key=value ...` or `--configfile my.yaml`; `--config key=` sets an empty string.",
        "",
        "| key | default (DeepSpeech's for its flags) | demo value | allowed | meaning |",
        "|---|---|---|---|---|",
    ]

    def show(v) -> str:
        return "`\"\"`" if v == "" else f"`{json.dumps(v) if isinstance(v, bool) else v}`"

    for key, prop in schema["properties"].items():
        allowed = []
        if "enum" in prop:
            allowed.append(" / ".join(map(str, prop["enum"])))
        elif "type" in prop:
            allowed.append(prop["type"])
        for bound, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                            ("exclusiveMaximum", "<")):
            if bound in prop:
                allowed.append(f"{sign} {prop[bound]}")
        desc = " ".join(prop.get("description", "").split()).replace("|", "\\|")
        lines.append(f"| `{key}` | {show(prop.get('default'))} | {show(demo.get(key))} | {', '.join(allowed)} | {desc} |")
    return "\n".join(lines) + "\n"


def add_parser(sub) -> None:
    p = sub.add_parser("config-doc", help="print config/README.md (every key, generated from the schema)")
    p.set_defaults(func=lambda args: print(markdown(), end="") or 0)
