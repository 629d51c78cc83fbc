"""`dsflow plot`: the training curves and the WER/CER summary in one figure (PNG), for the workflow's report.

Panels: per-epoch train and dev loss (the checkpoint_dir's metrics.csv; epochs where the learning rate was
cut and the best-dev epoch are marked), the learning rate per epoch, and when the evaluation's outputs are
given, the corpus WER/CER of each test set and the distribution of the per-sample WER and CER.
"""

from __future__ import annotations

import json
from pathlib import Path

from dsflow import UserError
from dsflow.atomic import atomic_path
from dsflow.log import log


def read_metrics(path: str | Path):
    """A checkpoint folder's metrics.csv (dsflow.checkpoints) as a DataFrame of numbers."""
    import pandas as pd

    from dsflow.checkpoints import METRICS, read_metrics

    try:
        rows = read_metrics(path)
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the training metrics: {e}") from e
    metrics = pd.DataFrame(rows, columns=rows[0].keys() if rows else METRICS)
    missing = {"epoch", "train_loss", "dev_loss", "learning_rate"} - set(metrics.columns)
    if missing:
        raise UserError(f"{path}: not a dsflow metrics.csv (no column {', '.join(sorted(missing))})")
    for column in ("epoch", "train_loss", "dev_loss", "learning_rate"):
        metrics[column] = pd.to_numeric(metrics[column].replace("", None), errors="coerce")
    return metrics


def figure(metrics, evaluation: dict | None = None, samples: list[dict] | None = None):
    """The matplotlib Figure (Agg backend, no display needed)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows = 2 if evaluation else 1
    fig = Figure(figsize=(11, 4 * rows), layout="constrained")
    axes = fig.subplots(rows, 2, squeeze=False)
    epochs = metrics["epoch"]  # 0-based, as metrics.csv and the log ("Finished training epoch N") count them

    ax = axes[0][0]
    ax.plot(epochs, metrics["train_loss"], "o-", label="train loss")
    if metrics["dev_loss"].notna().any():
        ax.plot(epochs, metrics["dev_loss"], "s-", label="dev loss")
        best = metrics["dev_loss"].idxmin()
        ax.plot(epochs[best], metrics["dev_loss"][best], "*", ms=15, color="gold", mec="k",
                label=f"best dev (epoch {epochs[best]})")
    ax.set(xlabel="epoch", ylabel="CTC loss (mean per utterance)", title="Training curves")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))

    ax = axes[0][1]
    ax.step(epochs, metrics["learning_rate"], where="mid", color="tab:green")
    ax.set(xlabel="epoch", ylabel="learning rate", title="Learning rate", yscale="log")
    ax.grid(alpha=0.3, which="both")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))

    if evaluation:
        ax = axes[1][0]
        names = list(evaluation)
        x = range(len(names))
        for offset, key in ((-0.2, "wer"), (0.2, "cer")):
            values = [evaluation[n][key] for n in names]
            bars = ax.bar([i + offset for i in x], values, width=0.4, label=key.upper())
            ax.bar_label(bars, fmt="%.3f")
        ax.set_xticks(list(x), [f"{Path(n).name}\n({evaluation[n].get('samples', '?')} samples)" for n in names])
        ax.set(ylabel="error rate", title="Test WER / CER (corpus level)", ylim=(0, 1.1), xlim=(-0.8, len(names) - 0.2))
        ax.legend()
        ax = axes[1][1]
        if samples:
            bins = [i / 20 for i in range(21)] + [float("inf")]
            ax.hist([[min(s["wer"], 1.05) for s in samples], [min(s["cer"], 1.05) for s in samples]],
                    bins=bins[:-1] + [1.1], label=["WER", "CER"])
            ax.set(xlabel="per-sample error rate (> 1 shown at 1.05)", ylabel="samples",
                   title=f"Per-sample WER / CER ({len(samples)} samples)")
            ax.legend()
        else:
            ax.set_axis_off()
    return fig


def plot(metrics_csv: str, out: str, evaluation_json: str | None = None, samples_json: str | None = None) -> None:
    metrics = read_metrics(metrics_csv)
    evaluation = json.loads(Path(evaluation_json).read_text()) if evaluation_json else None
    samples = json.loads(Path(samples_json).read_text()) if samples_json else None
    fig = figure(metrics, evaluation, samples)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=Path(out).suffix.lstrip(".") or "png", dpi=100)
    log.info("plotted %d epochs%s to %s", len(metrics), " and the evaluation" if evaluation else "", out)


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="training curves (+ WER/CER summary) as one figure", description=__doc__)
    p.add_argument("--metrics", required=True, help="the checkpoint_dir's metrics.csv")
    p.add_argument("--evaluation", help="dsflow evaluate's --metrics JSON (corpus WER/CER per test set)")
    p.add_argument("--samples", help="dsflow evaluate's --test_output_file JSON (per-sample WER/CER)")
    p.add_argument("--out", required=True, help="the figure (.png, .svg or .pdf)")
    p.set_defaults(func=_main)


def _main(args) -> int:
    plot(args.metrics, args.out, args.evaluation, args.samples)
    return 0
