"""Only stale stages re-run: after one real run of the tiny chain, dry runs say which jobs a change makes stale.

Snakemake 9's rerun triggers (mtime with checksums of inputs up to --max-checksum-file-size, params, code,
input set, software env) plus each stage's package modules listed as inputs (rules/common.smk `code()`).
"""

import os
import re
import shutil
import time

import pytest

from tests.conftest import TINY
from tests.workflow import snakemake

pytestmark = pytest.mark.slow
REPORT = {"plot", "evaluation_page", "validation_page"}  # the report's figures and pages follow their inputs


@pytest.fixture
def wd(tiny_chain, tmp_path):
    """A private copy of the finished tiny chain (mtimes and Snakemake's metadata kept)."""
    dst = tmp_path / "wf"
    shutil.copytree(tiny_chain, dst, symlinks=True)
    return dst


def dry_run(wd, *overrides: str) -> str:
    return snakemake(wd, "-n", "--cores", "2", "--config", *TINY, *overrides).stdout


def stale(out: str) -> dict[str, int]:
    """rule -> number of jobs in a dry run's 'Job stats' ({} when nothing is to be done)."""
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:")[1].split("total")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "all"}


def with_export(wd, rules: set[str]) -> set[str]:
    return rules | ({"export"} if (wd / "rules" / "export.smk").exists() else set())


def test_a_second_run_does_nothing(wd):
    assert stale(dry_run(wd)) == {}
    assert "Nothing to be done" in snakemake(wd, "--cores", "2", "--config", *TINY).stdout


def test_a_training_hyperparameter_reruns_training_and_what_follows_only(wd):
    out = dry_run(wd, "learning_rate=0.01")
    assert set(stale(out)) == with_export(wd, {"train", "evaluate", "plot", "evaluation_page"})
    assert re.search(r"rule train:.*?reason: Params have changed since last execution", out, re.S)


def test_a_decoder_flag_reruns_evaluation_only(wd):
    for flag in ("beam_width=10", "lm_alpha=0.5", "lm_beta=2.0", "cutoff_prob=0.99", "cutoff_top_n=10"):
        assert set(stale(dry_run(wd, flag))) == {"evaluate", "plot", "evaluation_page"}, flag


def test_rows_added_to_test_csv_rerun_only_the_test_split_and_evaluation(wd):
    with open(wd / "data/tiny/test.csv", "a") as f:
        f.write("../ldc93s1/LDC93S1_pcms16le_1_8000.wav,46876,she had your dark suit in greasy wash water all year\n")
    out = dry_run(wd)
    assert stale(out) == {"validate": 1, "features": 1, "evaluate": 1, "plot": 1, "evaluation_page": 1,
                          "validation_page": 1}
    assert re.findall(r"wildcards: split=(\w+)", out) == ["test", "test"]


@pytest.mark.parametrize("module, expected", [
    ("features", {"features": 3, "train": 1, "evaluate": 1, "plot": 1, "evaluation_page": 1}),
    ("evaluate", {"evaluate": 1, "plot": 1, "evaluation_page": 1}),
    ("validate", {"validate": 3, "features": 3, "train": 1, "lm": 1, "evaluate": 1, "plot": 1,
                  "evaluation_page": 1, "validation_page": 1}),
    ("lm", {"lm": 1, "evaluate": 1, "plot": 1, "evaluation_page": 1}),
    ("plot", {"plot": 1}),
])
def test_editing_a_stages_package_code_reruns_that_stage(wd, module, expected):
    with open(wd / f"src/dsflow/{module}.py", "a") as f:
        f.write("# an edit\n")
    expected = dict(expected, **({"export": 1} if "train" in expected and (wd / "rules/export.smk").exists() else {}))
    assert stale(dry_run(wd)) == expected


def test_touching_files_without_changing_them_reruns_nothing(wd):
    later = time.time() + 60
    touched = [*wd.joinpath("data").rglob("*"), *wd.joinpath("src").rglob("*.py"), *wd.joinpath("config").iterdir()]
    assert (wd / "data/tiny/test.csv").stat().st_size > 1_000_000  # checksummed only with the profile's limit
    for path in touched:
        os.utime(path, (later, later))
    assert stale(dry_run(wd)) == {}


def test_the_container_image_does_not_matter_without_a_container_runtime(wd):
    assert stale(dry_run(wd, "container_image=docker://other/image:1", "container_image_gpu=docker://x/y:2")) == {}
