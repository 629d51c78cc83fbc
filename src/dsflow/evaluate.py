"""`dsflow evaluate`: DeepSpeech 0.9.3's test-set evaluation (evaluate.py, util/evaluate_tools.py).

Per test set: the per-utterance CTC loss and transcript (DeepSpeech's beam search with the scorer when
--scorer_path is given, else greedy best-path decoding; see dsflow.decode), then DeepSpeech's metrics and report:
  per sample  char_distance / word_distance = Levenshtein over characters / over split() words,
              cer = char_distance / len(src), wer = word_distance / len(src.split()) (uncapped)
  per set     WER = sum(word_distance) / sum(word_length), CER likewise, each capped at 1.0;
              loss = mean of the per-sample losses
  order       loss descending, then a stable sort by wer ascending (cer in bytes_output_mode)
  report      `Test on <set> - WER: %f, CER: %f, loss: %f`, then report_count samples each of
              "Best WER:", "Median WER:" (centred on len/2) and "Worst WER:"
The report goes to the log and, per set, into the Markdown --report; --test_output_file is DeepSpeech's JSON
list of every sample of every set in that order; --metrics a JSON object {set: {wer, cer, loss, samples}}.
"""

from __future__ import annotations

import json

from dsflow import UserError, flags, gpu
from dsflow.atomic import write_text
from dsflow.decode import Decoder
from dsflow.inference import acoustic, make_step
from dsflow.log import SHOW, log
from dsflow.wer import corpus_rates, sample_result

KEYS = ("wav_filename", "src", "res", "loss", "char_distance", "char_length", "word_distance", "word_length",
        "cer", "wer")
DASHES = "-" * 80


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="test a checkpoint on test sets (DeepSpeech's evaluate: WER, CER, loss, "
                                        "report of best/median/worst samples)", description=__doc__)
    a = p.add_argument
    a("--checkpoint_dir", required=True, help="a checkpoint folder published by `dsflow train`")
    a("--test_features", required=True, help="comma-separated features folders of the test sets")
    flags.add_options(p, "evaluate")
    flags.add_option(p, "test_output_file")
    a("--report", help="write the report here as Markdown")
    a("--metrics", help="write per test set {wer, cer, loss, samples} here (JSON)")
    a("--threads", type=int, default=0, help="TensorFlow intra-op threads and decoder processes (0: TensorFlow's "
                                               "default, one decoder process)")
    flags.add_option(p, "scorer_path")
    p.set_defaults(func=_main)


# ---------------------------------------------------------------------------------------------- metrics

def sort_samples(samples: list[dict], by: str = "wer") -> list[dict]:
    """DeepSpeech's order: loss descending, then a stable sort by WER ascending (best WER first; among equal
    WERs the highest loss first, which points at transcription errors); by CER in bytes_output_mode."""
    by_loss = sorted(samples, key=lambda s: s["loss"], reverse=True)
    return sorted(by_loss, key=lambda s: s[by])


def sections(samples: list[dict], report_count: int) -> dict[str, list[dict]]:
    """The Best/Median/Worst samples of a sorted list, sliced as DeepSpeech's print_report does."""
    median_index = len(samples) // 2
    left = report_count // 2
    right = report_count - left
    return {
        "Best WER:": samples[:report_count],
        # DeepSpeech slices [median_index - left : median_index + right]; when the set is smaller than that
        # window its negative start wraps to the END of the list (3 samples, report_count 5: only the last).
        # Here the start is clipped at 0 instead, so the window shows the samples around the median.
        "Median WER:": samples[max(median_index - left, 0):median_index + right],
        # samples[-0:] would be the whole list; report_count 0 shows no samples instead.
        "Worst WER:": samples[-report_count:] if report_count > 0 else [],
    }


def report(name: str, samples: list[dict], wer: float, cer: float, loss: float, report_count: int) -> str:
    """DeepSpeech's print_report text for one test set (samples sorted), ending with a newline."""
    lines = ["Test on %s - WER: %f, CER: %f, loss: %f" % (name, wer, cer, loss), DASHES]
    for title, chosen in sections(samples, report_count).items():
        lines += [title + " ", DASHES]  # print('Best WER:', '\n' + '-' * 80)
        for s in chosen:
            lines += ["WER: %f, CER: %f, loss: %f" % (s["wer"], s["cer"], s["loss"]),
                      " - wav: file://%s" % s["wav_filename"],
                      ' - src: "%s"' % s["src"],
                      ' - res: "%s"' % s["res"],
                      DASHES]
    return "\n".join(lines) + "\n"


def markdown(checkpoint: str, results: list[dict]) -> str:
    """The Markdown report: a summary table, then each set's DeepSpeech report in a code block."""
    out = ["# Test results", "", f"Checkpoint: `{checkpoint}`", "",
           "| Test set | WER | CER | Loss | Samples |", "|---|---:|---:|---:|---:|"]
    out += [f"| `{r['name']}` | {r['wer']:f} | {r['cer']:f} | {r['loss']:f} | {len(r['samples'])} |"
            for r in results]
    for r in results:
        # No report line starts with a backtick (each starts with "Test on", "WER:", " - " or dashes).
        out += ["", f"## {r['name']}", "", "```text", r["report"].rstrip("\n"), "```"]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------- decoding

def decode_set(net, features_dir: str, batch_size: int, step, decoder=None, threads: int = 1, limit: int = 0,
               reverse: bool = False) -> list[dict]:
    """Every utterance of a test set (index order) as an unsorted sample_result; `decoder` a
    dsflow.decode.Decoder (None: greedy), run in `threads` processes."""
    decoder = decoder or Decoder(net.alphabet)
    pending, probs = acoustic(net, features_dir, batch_size, step, limit, reverse)
    if decoder.scorer_path:
        log.info("beam search (beam_width %d, scorer %s) of %d utterances in %d processes, lm_alpha %g, lm_beta %g",
                 decoder.beam_width, decoder.scorer_path, len(probs), threads, decoder.lm_alpha, decoder.lm_beta)
    texts = decoder.decode_batch(probs, threads)
    return [sample_result(name, src, res, loss) for (name, src, loss), res in zip(pending, texts)]


def evaluate(args) -> list[dict]:
    import numpy as np

    from dsflow import checkpoints, dataset

    dirs = [d.strip() for d in args.test_features.split(",") if d.strip()]
    if not dirs:
        raise UserError("--test_features: no test set given")
    flags.check(args, "evaluate")
    net = checkpoints.load_model(args.checkpoint_dir, args.load_evaluate, args.alphabet_config_path,
                                 args.bytes_output_mode)
    decoder = Decoder(net.alphabet, args.beam_width, args.scorer_path, args.lm_alpha, args.lm_beta, args.cutoff_prob,
                      args.cutoff_top_n, args.beam_threshold)
    step = make_step(net)

    results = []
    for d in dirs:
        samples = decode_set(net, d, args.test_batch_size, step, decoder, max(1, args.threads), args.limit_test,
                             args.reverse_test)
        wer, cer = corpus_rates(samples)
        loss = float(np.mean(np.array([s["loss"] for s in samples], np.float32)))
        samples = sort_samples(samples, "cer" if net.alphabet.bytes_output_mode else "wer")
        name = dataset.source(d)  # DeepSpeech named the test CSV
        text = report(name, samples, wer, cer, loss, args.report_count)
        for i, line in enumerate(text.rstrip("\n").split("\n")):
            log.info("%s", line, extra=SHOW if i == 0 else None)  # the WER/CER line on the terminal too
        results.append({"name": name, "wer": wer, "cer": cer, "loss": loss, "samples": samples, "report": text})

    if args.test_output_file:
        rows = [{k: s[k] for k in KEYS} for r in results for s in r["samples"]]
        write_text(args.test_output_file, json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        log.info("wrote %d samples to %s", len(rows), args.test_output_file)
    if args.report:
        write_text(args.report, markdown(net.checkpoint, results))
    if args.metrics:
        summary = {r["name"]: {"wer": r["wer"], "cer": r["cer"], "loss": r["loss"], "samples": len(r["samples"])}
                   for r in results}
        write_text(args.metrics, json.dumps(summary, indent=2) + "\n")
    return results


def _main(args) -> int:
    gpu.init_tensorflow(args.threads)  # Snakemake's {threads} for TensorFlow's pools
    evaluate(args)
    return 0
