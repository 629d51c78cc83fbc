"""The workflow itself, run by Snakemake: the DAG, and the data stages on real (tiny) corpora."""

import json
import re

import pandas as pd
import pytest

from dsflow.cli import main as dsflow
from tests.conftest import SMOKE
from tests.workflow import snakemake, workdir


def jobs(dry_run_output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule -> count."""
    table = dry_run_output.split("Job stats:")[1].split("total")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.fixture(scope="module")
def wf(tmp_path_factory):
    return workdir(tmp_path_factory.mktemp("wf"))


def test_default_dry_run_lists_the_demo_chain_in_order(wf):
    out = snakemake(wf, "-n").stdout
    assert jobs(out) == {"demo_corpus": 1, "import_cv": 1, "validate": 3, "features": 3, "train": 1, "lm": 1,
                         "evaluate": 1, "plot": 1, "evaluation_page": 1, "run_page": 1,
                         "validation_page": 1, "export": 1, "all": 1}
    first = [out.index(f"rule {r}:") for r in ("demo_corpus", "import_cv", "validate", "features", "train",
                                                "evaluate", "export")]
    assert first[:5] == sorted(first[:5]) and max(first[:5]) < min(first[5:])  # evaluate and export follow train


def test_csv_config_skips_the_import(wf):
    # your own data: the smoke test's config, DeepSpeech's defaults for the rest (build_lm and export_dir set here)
    assert jobs(snakemake(wf, "-n", *SMOKE, "--config", "export_dir=", "build_lm=true").stdout) == {
        "validate": 3, "features": 3, "train": 1, "lm": 1, "evaluate": 1, "plot": 1, "evaluation_page": 1, "run_page": 1,
        "validation_page": 1, "all": 1}
    only_train = jobs(snakemake(wf, "-n", "--config", "train_files=data/ldc93s1/ldc93s1.csv",
                                "export_dir=results/export").stdout)
    assert only_train == {"validate": 1, "features": 1, "train": 1, "plot": 1, "validation_page": 1, "run_page": 1,
                          "export": 1, "all": 1}
    # DeepSpeech: an empty export_dir (its default: own data without one) means no export; the demo sets one.
    assert "export" not in jobs(snakemake(wf, "-n", "--config", "train_files=data/ldc93s1/ldc93s1.csv").stdout)


@pytest.fixture(scope="module")
def tiny_cv(tmp_path_factory):
    """A real Common Voice-like release: 10 sentences per split, one espeak-ng take each, plus broken clips."""
    root = tmp_path_factory.mktemp("cv") / "cv-corpus-tiny" / "en"
    assert dsflow(["demo-corpus", "--text", "data/text/harvard_sentences.txt", "--out", str(root),
                   "--limit_lists", "1", "--takes", "1", "--threads", "2"]) == 0
    train = root / "train.tsv"
    lines = train.read_text().splitlines()
    fields = lines[1].split("\t")
    (root / "clips" / "broken.mp3").write_bytes(b"\xff\xfb" + bytes(500))
    extra = [fields[:1] + ["broken.mp3", "A broken clip."] + fields[3:],
             fields[:1] + [fields[1], "Twenty 20 digits."] + fields[3:]]
    train.write_text("\n".join(lines + ["\t".join(f) for f in extra]) + "\n")
    return root


def test_common_voice_folder_through_the_whole_chain(tmp_path, tiny_cv):
    wd = workdir(tmp_path)
    config = ["--config", f"common_voice_dir={tiny_cv}", "n_hidden=16", "epochs=1", "train_batch_size=2",
              "dev_batch_size=2", "test_batch_size=2", "report_count=2", "build_lm=true", "export_dir=results/export",
              "export_tflite=true"]
    out = snakemake(wd, "--cores", "2", *config).stdout
    rejected = pd.read_csv(wd / "results/import/rejected.tsv", sep="\t")
    assert sorted(rejected.reason) == ["conversion_failed", "label_invalid"]
    for split in ("train", "dev", "test"):
        summary = json.loads((wd / f"results/validate/{split}.summary.json").read_text())
        assert summary["rows"] == summary["rows_kept"] == 10
        index = pd.read_csv(wd / f"results/features/{split}/index.csv")
        assert len(index) == 10 and (index.n_frames > 50).all()
    assert pd.read_csv(wd / "results/checkpoints/metrics.csv").epoch.tolist() == [0]
    evaluation = json.loads((wd / "results/evaluate/metrics.json").read_text())
    assert evaluation[f"{tiny_cv}/test.tsv"]["samples"] == 10  # the test set as you named it (DeepSpeech: its CSV)
    assert f"Test on {tiny_cv}/test.tsv - WER: " in (wd / "results/evaluate/report.md").read_text()
    export = wd / "results/export"
    assert sorted(p.name for p in export.iterdir() if p.name != ".snakemake_timestamp") == [
        "alphabet.txt", "author_model_0.0.1.md", "metadata.json", "output_graph.tflite", "saved_model"]
    assert json.loads((export / "metadata.json").read_text())["n_hidden"] == 16
    assert f"Test report: {wd / 'results/evaluate/report.md'}" in out and f"Exported model: {export}" in out
    # Nothing is stale: a second run does nothing.
    assert "Nothing to be done" in snakemake(wd, "--cores", "2", *config).stdout
    # The scorer was built from the training transcripts (build_lm) and used; a decoder flag re-runs evaluate alone.
    assert "beam search (beam_width 1024, scorer results/lm/lm.scorer" in (wd / "results/logs/evaluate.log").read_text()
    assert jobs(snakemake(wd, "-n", *config, "lm_alpha=0.5").stdout) == {"evaluate": 1, "plot": 1,
                                                                         "evaluation_page": 1, "all": 1}
    # A forced re-import re-uses every converted WAV.
    snakemake(wd, "--cores", "2", "-R", "import_cv", "--until", "import_cv", *config)
    log = (wd / "results/logs/import_cv.log").read_text()
    assert re.search(r"reus\w+ 30\b|30 \w* ?reused", log), log[-1500:]
