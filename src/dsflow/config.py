"""The workflow's configuration: DeepSpeech's flags, checked before any job runs."""

from __future__ import annotations

from pathlib import Path

import yaml

from dsflow.alphabet import Alphabet, AlphabetError

SPLITS = ("train", "dev", "test")
ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "config" / "config.schema.yaml"
DEMO_CV_DIR = "results/demo/cv-corpus-demo/en"


def load_schema(path: Path = SCHEMA) -> dict:
    return yaml.safe_load(path.read_text())


def defaults(schema: dict | None = None) -> dict:
    schema = schema or load_schema()
    return {k: v.get("default") for k, v in schema["properties"].items()}


def empty_strings(config: dict, schema: dict | None = None) -> None:
    """Turn None (what `--config key=` gives) into "" for the string-typed keys."""
    props = (schema or load_schema())["properties"]
    for key, value in config.items():
        if value is None and props.get(key, {}).get("type") == "string":
            config[key] = ""


def file_list(value: str) -> list[str]:
    """DeepSpeech's comma-separated file flags."""
    return [p.strip() for p in (value or "").split(",") if p.strip()]


def window_samples(rate: int, ms: float, name: str) -> int:
    samples = rate * ms / 1000
    if samples != int(samples):
        raise ValueError(
            f"{name}={ms} ms at audio_sample_rate={rate} Hz is {samples} samples; it must be a whole "
            "number of samples (DeepSpeech exits on this too)"
        )
    return int(samples)


def check(config: dict, base: Path = Path(".")) -> list[str]:
    """Errors in a (schema-validated) config that the schema cannot express. Empty list = fine."""
    errors = []
    for key in ("feature_win_len", "feature_win_step"):
        try:
            window_samples(config["audio_sample_rate"], config[key], key)
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
    if config.get("scorer_path") and not (base / config["scorer_path"]).is_file():
        errors.append(f"scorer_path: {config['scorer_path']!r} does not exist")
    return errors
