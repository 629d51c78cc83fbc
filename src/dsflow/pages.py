"""`dsflow page`: small self-contained HTML pages for Snakemake's report (it shows HTML and images inline,
other files only as downloads): the evaluation's Markdown report, and the validation summaries as a table.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from dsflow import UserError
from dsflow.atomic import write_text
from dsflow.log import log

STYLE = """body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #bbb;padding:.25em .6em;text-align:right}th{background:#eee}td:first-child{text-align:left}
pre{background:#f6f6f6;padding:.5em;overflow-x:auto}"""


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def markdown_page(markdown_file: str) -> str:
    """A Markdown file (the evaluation's report.md: a table and code blocks) as an HTML page."""
    from markdown_it import MarkdownIt

    text = Path(markdown_file).read_text(encoding="utf-8")
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    return page(Path(markdown_file).name, body)


COLUMNS = [("rows", "rows"), ("rows_kept", "kept"), ("rows_dropped", "dropped"), ("hours", "hours kept"),
           ("hours_dropped", "hours dropped"), ("policy", "policy")]


def validation_page(summaries: list[str]) -> str:
    """The validation summaries ({split}.summary.json) as one table, then each split's problems and
    characters outside the alphabet."""
    data = []
    for path in summaries:
        try:
            data.append(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{path}: cannot read the validation summary: {e}") from e
    esc = html.escape
    head = "".join(f"<th>{esc(label)}</th>" for _, label in COLUMNS)
    rows = "".join(f"<tr><td>{esc(s['split'])}</td>" + "".join(f"<td>{esc(str(s.get(k, '')))}</td>" for k, _ in COLUMNS)
                   + f"<td>{esc(', '.join(s.get('csv_files', [])))}</td></tr>\n" for s in data)
    body = [f"<h1>Validation</h1>\n<table><tr><th>split</th>{head}<th>CSV files</th></tr>\n{rows}</table>"]
    for s in data:
        problems = s.get("problems") or {}
        chars = s.get("characters_not_in_alphabet") or {}
        if not problems and not chars:
            continue
        body.append(f"<h2>{esc(s['split'])}</h2>")
        if problems:
            body.append("<table><tr><th>problem</th><th>rows</th></tr>" + "".join(
                f"<tr><td>{esc(str(k))}</td><td>{esc(json.dumps(v) if isinstance(v, dict) else str(v))}</td></tr>"
                for k, v in problems.items()) + "</table>")
        if chars:
            body.append("<table><tr><th>character not in the alphabet</th><th>rows</th></tr>" + "".join(
                f"<tr><td>{esc(repr(k))}</td><td>{esc(str(v))}</td></tr>" for k, v in chars.items()) + "</table>")
    body.append("<p>Every dropped or flagged row is listed with its reason in "
                "<code>results/validate/&lt;split&gt;.rejected.tsv</code>.</p>")
    return page("Validation", "\n".join(body))


def run_page(checkpoint_dir: str) -> str:
    """The run that made a checkpoint folder: what was trained and how long, and every training flag it used (its
    flags.json), whatever config the report is made with."""
    from dsflow import checkpoints

    esc = html.escape
    flags = checkpoints.flags(checkpoint_dir)
    rows = checkpoints.read_metrics(Path(checkpoint_dir) / checkpoints.METRICS_CSV)
    features = checkpoints.features_meta(checkpoint_dir)
    epochs = f"{len(rows)} of {flags.get('epochs')}" + (" (stopped early)" if rows and "early stop" in
                                                         rows[-1].get("event", "") else "")
    dev = [float(r["dev_loss"]) for r in rows if r.get("dev_loss")]
    facts = [("checkpoint folder", checkpoint_dir), ("n_hidden", flags.get("n_hidden")), ("epochs trained", epochs),
             ("best dev loss", f"{min(dev):.4f}" if dev else "(no dev set)"),
             ("last learning rate", rows[-1]["learning_rate"] if rows else ""),
             ("audio", f"{features.get('sample_rate')} Hz, windows {features.get('win_len_ms')}/"
                       f"{features.get('win_step_ms')} ms")]
    body = ["<h1>The run that made these results</h1>",
            "<p>Read from the checkpoint folder, not from the configuration the report was made with.</p>",
            "<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in facts) + "</table>",
            "<h2>Training flags (flags.json)</h2>",
            "<table>" + "".join(f"<tr><td>{esc(k)}</td><td>{esc(json.dumps(v))}</td></tr>" for k, v in flags.items())
            + "</table>"]
    return page("Run", "\n".join(body))


def _main(args) -> int:
    if sum(map(bool, (args.markdown, args.validation, args.run))) != 1:
        raise UserError("give either --markdown FILE or --validation SUMMARY.json ... or --run CHECKPOINT_DIR")
    text = (markdown_page(args.markdown) if args.markdown else validation_page(args.validation) if args.validation
            else run_page(args.run))
    write_text(args.out, text)
    log.info("wrote %s", args.out)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("page", help="an HTML page for the report (evaluation Markdown, validation summaries)",
                       description=__doc__)
    p.add_argument("--markdown", help="a Markdown file to render (results/evaluate/report.md)")
    p.add_argument("--validation", nargs="+", help="validation summaries (results/validate/*.summary.json)")
    p.add_argument("--run", help="a checkpoint folder: the run that made it (its flags.json, metrics.csv)")
    p.add_argument("--out", required=True, help="the HTML page")
    p.set_defaults(func=_main)
