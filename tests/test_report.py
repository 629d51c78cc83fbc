"""The report: `dsflow plot` (training curves + WER/CER summary), `dsflow page` (HTML pages), and
`snakemake --report report.html` after the tiny chain."""

import base64
import json
import re
import shutil

import pandas as pd
import pytest

from dsflow.cli import main as dsflow
from tests.conftest import TINY
from tests.workflow import snakemake

METRICS = pd.DataFrame({"epoch": [0, 1, 2], "train_loss": [90.0, 50.0, 30.0], "dev_loss": [80.0, 45.0, 47.0],
                        "learning_rate": [1e-3, 1e-3, 1e-4]})
SUMMARY = {"split": "test", "csv_files": ["data/test.csv"], "rows": 5, "rows_kept": 3, "rows_dropped": 2,
           "hours": 0.01, "hours_dropped": 0.002, "policy": "drop",
           "problems": {"missing_audio (drop)": 1, "not_in_alphabet (drop)": 1},
           "characters_not_in_alphabet": {"é": 1}}


def png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_plot_training_curves_alone_and_with_the_evaluation(tmp_path):
    METRICS.to_csv(tmp_path / "metrics.csv", index=False)
    assert dsflow(["plot", "--metrics", str(tmp_path / "metrics.csv"), "--out", str(tmp_path / "a.png")]) == 0
    (tmp_path / "eval.json").write_text(json.dumps({"results/features/test": {"wer": 0.5, "cer": 0.2, "loss": 9.0,
                                                                              "samples": 2}}))
    (tmp_path / "samples.json").write_text(json.dumps([{"wer": 0.0, "cer": 0.0}, {"wer": 1.5, "cer": 0.4}]))
    assert dsflow(["plot", "--metrics", str(tmp_path / "metrics.csv"), "--evaluation", str(tmp_path / "eval.json"),
                   "--samples", str(tmp_path / "samples.json"), "--out", str(tmp_path / "b.png")]) == 0
    (w1, h1), (w2, h2) = png_size(tmp_path / "a.png"), png_size(tmp_path / "b.png")
    assert w1 == w2 and h2 == 2 * h1  # the evaluation adds a row of panels
    assert not list(tmp_path.glob(".*.part"))


def test_plot_refuses_a_file_that_is_not_a_metrics_csv(tmp_path, capsys):
    (tmp_path / "m.csv").write_text("epoch,loss\n0,1\n")
    assert dsflow(["plot", "--metrics", str(tmp_path / "m.csv"), "--out", str(tmp_path / "a.png")]) == 2
    assert "m.csv: not a dsflow metrics.csv (no column dev_loss, learning_rate, train_loss)" in capsys.readouterr().err
    assert not (tmp_path / "a.png").exists()


def test_pages_render_the_evaluation_markdown_and_the_validation_table(tmp_path):
    (tmp_path / "report.md").write_text("# Test results\n\n| Test set | WER |\n|---|---:|\n| `t` | 0.5 |\n\n"
                                        "```text\nWER: 0.5 - src: \"<a & b>\"\n```\n")
    assert dsflow(["page", "--markdown", str(tmp_path / "report.md"), "--out", str(tmp_path / "e.html")]) == 0
    page = (tmp_path / "e.html").read_text()
    assert "<h1>Test results</h1>" in page and "<td><code>t</code></td>" in page
    assert "&lt;a &amp; b&gt;" in page  # the samples' text is escaped, not HTML
    (tmp_path / "test.summary.json").write_text(json.dumps(SUMMARY))
    assert dsflow(["page", "--validation", str(tmp_path / "test.summary.json"), "--out", str(tmp_path / "v.html")]) == 0
    page = (tmp_path / "v.html").read_text()
    assert "<tr><td>test</td><td>5</td><td>3</td><td>2</td>" in page
    assert "<td>missing_audio (drop)</td><td>1</td>" in page and "<td>&#x27;é&#x27;</td>" in page


def report_items(html: str) -> dict[str, str]:
    """The results embedded in a Snakemake report: file name -> decoded content (text files)."""
    items = {}
    for m in re.finditer(r"data:([\w/+.-]+);charset=[\w-]+;filename=([^;]+);base64,([A-Za-z0-9+/=]+)", html):
        data = base64.b64decode(m[3])
        items[m[2]] = data.decode("utf-8") if m[1].startswith("text/") else data
    return items


@pytest.mark.slow
def test_snakemake_report_after_the_tiny_chain(tiny_chain, tmp_path):
    wd = tmp_path / "wf"
    shutil.copytree(tiny_chain, wd, symlinks=True)
    snakemake(wd, "--report", "report.html", *TINY)
    html = (wd / "report.html").read_text()
    items = report_items(html)
    assert items["training.png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert "WER:" in items["evaluation.html"] and "Best WER:" in items["evaluation.html"]
    assert "she had your dark suit in greasy wash water all year" in items["evaluation.html"]
    assert "<tr><td>test</td><td>20001</td><td>1</td><td>20000</td>" in items["validation.html"]
    # the run that made the results, from its checkpoint folder: the tiny config's n_hidden 16, 1 epoch of 1
    assert "<tr><th>n_hidden</th><td>16</td></tr>" in items["run.html"]
    assert "<tr><th>epochs trained</th><td>1 of 1</td></tr>" in items["run.html"]
    for category in ("Training", "Evaluation", "Validation"):
        assert f'"{category}"' in html
    # Per-rule runtimes (Snakemake's "Statistics"): one entry per rule that ran.
    runtimes = {m[1] for m in re.finditer(r'"rule": "(\w+)", "runtime": [\d.]+', html)}
    assert {"validate", "features", "train", "evaluate", "plot"} <= runtimes, runtimes
