"""Flags: each config key is defined once, in config/config.schema.yaml (type, DeepSpeech's default, meaning), and
the schema's `x-commands` list says which `dsflow` subcommands take it. From that one definition come the
subcommand's options (`add_options`: `--key value`, the same name as the config key) and the command line a rule
renders from the config (`render`), so a rule, its subcommand and the config cannot disagree.

One convention for every subcommand: option names are the config keys (underscores), booleans are written
`--key true|false` (DeepSpeech's absl booleans: true/false, 1/0, yes/no, on/off; a bare `--key` means true).
"""

from __future__ import annotations

import argparse
import functools
import shlex
from pathlib import Path

import yaml

BOOLEAN_WORDS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False,
                 "off": False}


def _workflow_root() -> Path:
    """The folder holding config/: the source tree of an editable install (scripts/setup.sh), else the
    working directory (Snakemake runs jobs from the workflow's folder)."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / "config" / "config.schema.yaml").is_file():
            return root
    return Path.cwd()


ROOT = _workflow_root()
SCHEMA = ROOT / "config" / "config.schema.yaml"


@functools.lru_cache(maxsize=4)
def load_schema(path: Path = SCHEMA) -> dict:
    return yaml.load(Path(path).read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def properties(schema: dict | None = None) -> dict:
    return (schema or load_schema())["properties"]


def defaults(schema: dict | None = None) -> dict:
    return {k: v.get("default") for k, v in properties(schema).items()}


def cli_bool(text) -> bool:
    """A boolean flag's value on a `dsflow` command line."""
    value = str(text).strip().lower()
    if value not in BOOLEAN_WORDS:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return BOOLEAN_WORDS[value]


def file_list(value: str) -> list[str]:
    """DeepSpeech's comma-separated file flags (train_files, ...)."""
    return [p.strip() for p in (value or "").split(",") if p.strip()]


def command_keys(command: str, schema: dict | None = None) -> list[str]:
    """The config keys `dsflow COMMAND` takes (the schema's x-commands), in the schema's order."""
    return [k for k, p in properties(schema).items() if command in p.get("x-commands", ())]


def add_option(parser, key: str, **overrides) -> None:
    """`--KEY` with the schema's type, default, allowed values and description (overrides: argparse keywords)."""
    prop = properties()[key]
    kind = prop.get("type")
    if isinstance(kind, list):  # [number, "null"]: the option may be left out
        kind = next(k for k in kind if k != "null")
    text = " ".join(prop.get("description", "").split()).replace("%", "%%")  # argparse formats help with %
    kw: dict = {"default": prop.get("default"), "help": text}
    if kind == "boolean":
        kw.update(nargs="?", const=True, type=cli_bool, metavar="true|false")
    elif kind == "integer":
        kw["type"] = int
    elif kind == "number":
        kw["type"] = float
    elif kind == "array":  # --key A B ...: one shell word a value
        kw.update(nargs="*", default=list(prop.get("default") or []))
    if "enum" in prop:
        kw["choices"] = prop["enum"]
    kw.update(overrides)
    parser.add_argument(f"--{key}", **kw)


def add_options(parser, command: str) -> None:
    """Every config key of `command` as an option (see the module docstring)."""
    for key in command_keys(command):
        add_option(parser, key)


def render(command: str, config: dict) -> str:
    """The options of `command` for these config values, as one shell-quoted string (a rule's params)."""
    out = []
    for key in command_keys(command):
        value = config[key]
        if value is None:  # null: the option's own default (e.g. lm_alpha: the scorer's)
            continue
        if isinstance(value, list):
            if value:
                out.append(f"--{key} " + " ".join(shlex.quote(str(v)) for v in value))
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        out.append(f"--{key} {shlex.quote(text)}")
    return " ".join(out)


def check(args, command: str) -> None:
    """The values of `command`'s config keys in `args` against the schema (ranges, allowed values): one
    UserError naming each bad key, its value and what is allowed."""
    import jsonschema

    from dsflow import UserError

    problems = []
    for key in command_keys(command):
        value = getattr(args, key)
        for error in jsonschema.Draft202012Validator(properties()[key]).iter_errors(value):
            problems.append(f"{key}={value!r}: {error.message}")
    if problems:
        raise UserError(f"dsflow {command}: " + "; ".join(problems))
