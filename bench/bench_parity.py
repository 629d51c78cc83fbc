"""Parity of dsflow's beam search with DeepSpeech's own decoder (issue #13, item 5).

The same exported DeepSpeech-format .tflite and the same .scorer package, over a test CSV (default: the demo's,
after `snakemake --cores 2` in this folder): each clip is transcribed by

  deepspeech   DS_SpeechToText of libdeepspeech 0.9.3 (TFLite build; dsflow.runtimes): its native client
               (features from the model's own AudioSpectrogram/Mfcc ops on samples / 32768, plus one last
               window of the leftover samples zero-padded) and ds_ctcdecoder's prefix beam search
  dsflow       `dsflow transcribe --scorer`: dsflow's client (features / 32767, no leftover window) and
               dsflow.decode.Decoder (flashlight-text's LexiconDecoder with DeepSpeech's meaning)
  dsflow/client  dsflow.decode.Decoder on the probabilities of DeepSpeech's client features (emulated here:
               / 32768 and the leftover window), so that only the decoders differ from `deepspeech`
  ... and the last one again for each --beam_threshold and --smearing given (dsflow's pruning and word
               lookahead), and once as flashlight ranks its final hypotheses, with the end of the sentence
               scored (`+ </s>`: dsflow before it took that term out, as DeepSpeech does not score it)

with the same beam width (DS_SetModelBeamWidth / --beam_width) and the same lm_alpha / lm_beta (the package's
defaults unless given; DS_SetScorerAlphaBeta). Prints WER / CER (DeepSpeech's corpus rates) of each and the share
of transcripts identical to DeepSpeech's, and a few of the clips where they differ.

    python bench/bench_parity.py                         # results/export/output_graph.tflite, results/lm/lm.scorer
    python bench/bench_parity.py --beam_width 500 --beam_threshold 15,1000 --smearing max,none --limit 60
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def client_probs(model, samples):
    """DeepSpeech's native client's acoustic input (deepspeech.cc StreamingState), emulated: samples / 32768, the
    MFCCs of every full window, then one more of the samples left after the last stride (zero-padded to a
    window; finalizeStream always adds it), through dsflow transcribe's streaming of frames."""
    import numpy as np

    from dsflow import transcribe
    from dsflow.mfcc import mfcc

    audio = samples.astype(np.float32) / np.float32(32768)
    frames = list(mfcc(audio, model.sample_rate, model.win_len, model.win_step))
    rest = audio[len(frames) * model.stride:]
    frames.append(mfcc(np.pad(rest, (0, model.window - len(rest))), model.sample_rate, model.win_len,
                       model.win_step)[0])
    stream = transcribe.Stream(model)
    for frame in frames:
        stream._push_frame(frame)
    return stream.finish()


def rates(refs, hyps):
    from dsflow.wer import corpus_rates, sample_result

    return corpus_rates([sample_result(str(i), r, h, 0.0) for i, (r, h) in enumerate(zip(refs, hyps))])


def main(argv=None) -> None:
    import numpy as np
    import soundfile as sf

    from dsflow import runtimes, transcribe
    from dsflow.audio import model_rate_wav
    from dsflow.decode import BEAM_THRESHOLD, Decoder
    from dsflow.exported import ExportedModel

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="results/export/output_graph.tflite")
    p.add_argument("--scorer", default="results/lm/lm.scorer")
    p.add_argument("--csv", default="results/validate/test.csv")
    p.add_argument("--beam_width", type=int, default=1024)
    p.add_argument("--lm_alpha", type=float)
    p.add_argument("--lm_beta", type=float)
    p.add_argument("--beam_threshold", default=str(BEAM_THRESHOLD),
                   help="comma-separated: dsflow's beam_threshold(s) for the dsflow/client runs")
    p.add_argument("--smearing", default="max", help="comma-separated: max and/or none, for the dsflow/client runs")
    p.add_argument("--limit", type=int, default=0, help="only the first N clips")
    p.add_argument("--show", type=int, default=5, help="clips that differ to print")
    args = p.parse_args(argv)

    with open(args.csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[: args.limit or None]
    base = Path(args.csv).parent
    clips = [(base / r["wav_filename"] if not Path(r["wav_filename"]).is_absolute() else Path(r["wav_filename"]),
              r["transcript"]) for r in rows]
    refs = [t for _, t in clips]
    model = ExportedModel(args.model)
    decoders = {(float(t), m): Decoder(model.alphabet, args.beam_width, args.scorer, args.lm_alpha, args.lm_beta,
                                       beam_threshold=float(t), smearing=m)
                for t in args.beam_threshold.split(",") for m in args.smearing.split(",")}
    first = next(iter(decoders.values()))
    alpha, beta = first.lm_alpha, first.lm_beta
    print(f"model {args.model} ({model.kind}, n_hidden {model.n_hidden}), scorer {args.scorer}, "
          f"beam width {args.beam_width}, lm_alpha {alpha:g}, lm_beta {beta:g}, {len(clips)} clips")

    results, seconds = {}, {}
    ds = runtimes.Runtime.load("deepspeech-tflite")
    with ds.model(args.model) as m:
        m.set_beam_width(args.beam_width)
        m.enable_scorer(args.scorer)
        m.set_alpha_beta(alpha, beta)
        start = time.perf_counter()
        results["deepspeech"] = []
        for wav, _ in clips:
            with model_rate_wav(wav, m.sample_rate) as w:
                results["deepspeech"].append(m.stt(sf.read(str(w), dtype="int16")[0]))
        seconds["deepspeech"] = time.perf_counter() - start

    start = time.perf_counter()
    results["dsflow"] = [transcribe.transcribe(model, wav, first) for wav, _ in clips]
    seconds["dsflow"] = time.perf_counter() - start
    probs = []
    for wav, _ in clips:
        with model_rate_wav(wav, model.sample_rate) as w:
            probs.append(client_probs(model, sf.read(str(w), dtype="int16")[0]))
    for (t, m), decoder in decoders.items():
        name = f"dsflow/client, beam_threshold {t:g}, smearing {m}"
        start = time.perf_counter()
        results[name] = [decoder.decode(p) for p in probs]
        seconds[name] = time.perf_counter() - start
    start, results[f"{name}, + </s>"] = time.perf_counter(), []
    for p in probs:  # flashlight's own ranking of its final hypotheses (end of sentence scored)
        e = decoder.emissions(p)
        best = decoder._decoder.decode(e.ctypes.data, e.shape[0], e.shape[1])[:1]
        results[f"{name}, + </s>"].append(" ".join(decoder.words[i] for b in best for i in b.words if i >= 0))
    seconds[f"{name}, + </s>"] = time.perf_counter() - start

    ds_wer = rates(refs, results["deepspeech"])[0]
    print("\n| decoder | WER | CER | WER - DeepSpeech's | identical to DeepSpeech's | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, hyps in results.items():
        wer, cer = rates(refs, hyps)
        same = np.mean([a == b for a, b in zip(hyps, results["deepspeech"])])
        print(f"| {name} | {wer:.4f} | {cer:.4f} | {wer - ds_wer:+.4f} | {same:.1%} | {seconds[name]:.1f} |")
    for name in list(results)[1:]:
        differ = [i for i, (a, b) in enumerate(zip(results[name], results["deepspeech"])) if a != b]
        print(f"\n{name}: {len(differ)} transcripts differ from DeepSpeech's; the first {min(args.show, len(differ))}:")
        for i in differ[: args.show]:
            print(f"  {clips[i][0].name}\n    reference  {refs[i]}\n    deepspeech {results['deepspeech'][i]}\n"
                  f"    dsflow     {results[name][i]}")


if __name__ == "__main__":
    main()
