"""Decoding speed: real-time factor of DeepSpeech's beam search with a KenLM scorer (dsflow.decode).

The acoustic model's softmax outputs of a test set are computed once (a checkpoint and a features folder, e.g.
the demo's), then decoded: greedy (the baseline, in the same process), the beam search in this process (RTF
per core = decoding seconds / audio seconds, wall-clock and CPU time: on a busy machine the CPU time is the
fairer one) and decode_batch over --threads processes (wall-clock RTF). WER of
each is printed too, so that speed and accuracy can be weighed together. Goal: RTF <= 0.02 per core at beam 1024.

    python bench/bench_decode.py --scorer results/lm/lm.binary     # demo checkpoint, test split
    python bench/bench_decode.py --scorer lm.binary --features results/features/dev --beam_width 256,1024
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FRAME_SECONDS = 0.02  # DeepSpeech's feature_win_step


def model_probs(checkpoint: str, features: str, batch_size: int = 16):
    """(softmax probabilities [T, C] per utterance, reference transcripts, alphabet) of a features folder."""
    import numpy as np

    from dsflow import checkpoints, dataset

    net = checkpoints.load_model(checkpoint, "auto")
    index = dataset.info(features)
    probs = []
    for batch in dataset.load(features, net.alphabet, batch_size, train=False):
        logits = net(batch["features"]).numpy()
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        p = e / e.sum(axis=-1, keepdims=True)
        probs += [p[:n, i] for i, n in enumerate(batch["feature_lengths"].numpy())]
    return probs, list(index["transcript"]), net.alphabet


def wer(refs, hyps) -> float:
    from rapidfuzz.distance import Levenshtein

    return sum(Levenshtein.distance(r.split(), h.split()) for r, h in zip(refs, hyps)) / sum(len(r.split())
                                                                                             for r in refs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint_dir", default="results/checkpoints")
    p.add_argument("--features", default="results/features/test")
    p.add_argument("--scorer", required=True, help="a KenLM scorer (dsflow build-lm)")
    p.add_argument("--beam_width", default="1024", help="comma-separated beam widths")
    p.add_argument("--lm_alpha", type=float, default=0.931289039105002)
    p.add_argument("--lm_beta", type=float, default=1.1834137581510284)
    p.add_argument("--cutoff_prob", type=float, default=1.0)
    p.add_argument("--cutoff_top_n", type=int, default=300)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="processes of decode_batch")
    args = p.parse_args()

    from dsflow.decode import Decoder

    probs, refs, alphabet = model_probs(args.checkpoint_dir, args.features)
    audio = sum(len(x) for x in probs) * FRAME_SECONDS
    print(f"{len(probs)} utterances, {audio:.1f} s of audio, {os.cpu_count()} CPUs (timings are lower bounds "
          "on a loaded machine)")

    greedy = Decoder(alphabet)
    t = time.perf_counter()
    hyps = [greedy.decode(x) for x in probs]
    base = time.perf_counter() - t
    print(f"greedy:          RTF {base / audio:.5f}  WER {wer(refs, hyps):.4f}")
    for width in [int(w) for w in args.beam_width.split(",")]:
        d = Decoder(alphabet, width, args.scorer, args.lm_alpha, args.lm_beta, args.cutoff_prob, args.cutoff_top_n)
        t, cpu = time.perf_counter(), time.process_time()
        hyps = [d.decode(x) for x in probs]
        one, cpu = time.perf_counter() - t, time.process_time() - cpu
        t = time.perf_counter()
        par = d.decode_batch(probs, args.threads)
        wall = time.perf_counter() - t
        assert par == hyps, "decode_batch differs from decode"
        print(f"beam {width:5d}:      RTF per core {one / audio:.5f} wall, {cpu / audio:.5f} CPU "
              f"({one / base:.0f} x greedy)  "
              f"wall RTF with {args.threads} processes {wall / audio:.5f}  WER {wer(refs, hyps):.4f}")


if __name__ == "__main__":
    main()
