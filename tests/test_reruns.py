"""Only stale stages re-run: after one real run of the tiny chain, dry runs say which jobs a change makes stale.

Snakemake 9's rerun triggers (mtime with checksums of inputs up to --max-checksum-file-size, params, code,
input set, software env) plus the package files each stage runs as inputs (rules/common.smk `code()`: the import
closure of its command, dsflow.deps).
"""

import json
import os
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY
from tests.workflow import snakemake

pytestmark = pytest.mark.slow
REPORT = {"plot", "evaluation_page", "validation_page", "run_page"}  # the report's pages follow their inputs


@pytest.fixture
def wd(tiny_chain, tmp_path):
    """A private copy of the finished tiny chain (mtimes and Snakemake's metadata kept)."""
    dst = tmp_path / "wf"
    shutil.copytree(tiny_chain, dst, symlinks=True)
    return dst


def dry_run(wd, *overrides: str) -> str:
    return snakemake(wd, "-n", "--cores", "2", *TINY, *(["--config", *overrides] if overrides else [])).stdout


def stale(out: str) -> dict[str, int]:
    """rule -> number of jobs in a dry run's 'Job stats' ({} when nothing is to be done)."""
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:")[1].split("total")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "all"}


def test_a_second_run_does_nothing(wd):
    assert stale(dry_run(wd)) == {}
    assert "Nothing to be done" in snakemake(wd, "--cores", "2", *TINY).stdout


def test_a_training_hyperparameter_reruns_training_and_what_follows_only(wd):
    out = dry_run(wd, "learning_rate=0.01")
    assert set(stale(out)) == {"train", "evaluate", "plot", "evaluation_page", "run_page", "export"}
    assert re.search(r"rule train:.*?reason: Params have changed since last execution", out, re.S)


def test_augment_reruns_training_and_what_follows_and_a_bad_spec_stops_before_any_job(wd):
    augment = 'augment=["pitch[p=1,pitch=1~0.2]","tempo[p=0.5,factor=1~0.3]","frequency_mask[n=1,size=2]"]'
    assert set(stale(dry_run(wd, augment))) == {"train", "evaluate", "plot", "evaluation_page", "run_page", "export"}
    snakemake(wd, "--cores", "2", *TINY, "--config", augment)  # a real augmented training in the chain
    log = (wd / "results/logs/train.log").read_text()
    assert "augmenting the training clips afresh every epoch (audio, 1 worker process(es)): pitch[p=1" in log
    assert stale(dry_run(wd, augment)) == {}
    for spec, message in [("echo[p=1]", "unknown augmentation 'echo'"),
                          ("volume[p=2]", "probability takes values in [0, 1]"),
                          ("overlay[source=noise/none.csv]", "CSV file does not exist")]:
        out = snakemake(wd, "-n", "--cores", "2", *TINY, "--config", f'augment=["{spec}"]', check=False)
        assert out.returncode != 0 and f"augment {spec!r}" in out.stdout and message in out.stdout, out.stdout
        assert "Job stats" not in out.stdout


def test_a_decoder_flag_reruns_evaluation_only(wd):
    for flag in ("beam_width=10", "lm_alpha=0.5", "lm_beta=2.0", "cutoff_prob=0.99", "cutoff_top_n=10"):
        assert set(stale(dry_run(wd, flag))) == {"evaluate", "plot", "evaluation_page"}, flag


def test_rows_added_to_test_csv_rerun_only_the_test_split_and_evaluation(wd):
    with open(wd / ".test/tiny/test.csv", "a") as f:
        f.write("../../data/ldc93s1/LDC93S1_pcms16le_1_8000.wav,46876,she had your dark suit in greasy wash water all "
                "year\n")
    out = dry_run(wd)
    assert stale(out) == {"validate": 1, "features": 1, "evaluate": 1, "plot": 1, "evaluation_page": 1,
                          "validation_page": 1}
    assert re.findall(r"wildcards: split=(\w+)", out) == ["test", "test"]


@pytest.fixture(scope="module")
def tiny_dag(tiny_chain):
    """The tiny chain's jobs: rule of each job, downstream jobs of each job (`snakemake --d3dag`), and the
    `dsflow` command of each rule (its `code("...")` in rules/*.smk)."""
    out = snakemake(tiny_chain, "--d3dag", "-F", *TINY).stdout
    graph = json.loads(out[out.index("{"):])
    rule = {n["id"]: n["value"]["rule"] for n in graph["nodes"]}
    down = {n: set() for n in rule}
    for e in graph["edges"]:
        down[e["u"]].add(e["v"])
    text = "\n".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    command = dict(re.findall(r'^\s*rule (\w+):.*?code=code\("([^"]+)"\)', text, re.S | re.M))
    return rule, down, command


def stale_after_editing(module: str, tiny_dag) -> dict[str, int]:
    """The jobs whose rule runs `module` (dsflow.deps: the command's import closure), and every job after them."""
    from dsflow.deps import command_code

    rule, down, command = tiny_dag
    todo = [j for j, r in rule.items() if r in command and
            ROOT / f"src/dsflow/{module}.py" in map(Path, command_code(ROOT / "src/dsflow", command[r]))]
    jobs = set()
    while todo:
        j = todo.pop()
        if j not in jobs:
            jobs.add(j)
            todo += down[j]
    return dict(Counter(rule[j] for j in jobs if rule[j] != "all"))


MODULES = sorted(p.stem for p in (ROOT / "src/dsflow").glob("*.py"))


@pytest.mark.parametrize("module", MODULES)
def test_editing_any_module_reruns_exactly_the_stages_that_run_it_and_what_follows(wd, tiny_dag, module):
    with open(wd / f"src/dsflow/{module}.py", "a") as f:
        f.write("# an edit\n")
    expected = stale_after_editing(module, tiny_dag)
    assert stale(dry_run(wd)) == expected


def test_the_import_closures_are_what_the_stages_need(tiny_dag):
    """A check of the computed expectations themselves: an edit of the MFCC arithmetic re-runs validation (its
    frame count) and everything after; one of the report pages only the pages; one of the importer nothing here."""
    assert stale_after_editing("mfcc", tiny_dag) == {"validate": 3, "features": 3, "train": 1, "lm": 1,
                                                     "evaluate": 1, "export": 1, "plot": 1, "evaluation_page": 1,
                                                     "validation_page": 1, "run_page": 1}
    assert stale_after_editing("pages", tiny_dag) == {"validation_page": 1, "evaluation_page": 1, "run_page": 1}
    assert stale_after_editing("importer", tiny_dag) == {}
    assert stale_after_editing("decode", tiny_dag) == {"evaluate": 1, "plot": 1, "evaluation_page": 1}


def test_touching_files_without_changing_them_reruns_nothing(wd):
    later = time.time() + 60
    touched = [*wd.joinpath("data").rglob("*"), *wd.joinpath(".test").rglob("*"), *wd.joinpath("src").rglob("*.py"), *wd.joinpath("config").iterdir()]
    assert (wd / ".test/tiny/test.csv").stat().st_size > 1_000_000  # checksummed only with the profile's limit
    for path in touched:
        os.utime(path, (later, later))
    assert stale(dry_run(wd)) == {}


def test_the_container_image_does_not_matter_without_a_container_runtime(wd):
    assert stale(dry_run(wd, "container_image=docker://other/image:1", "container_image_gpu=docker://x/y:2")) == {}
