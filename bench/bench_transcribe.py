"""Real-time factor of `dsflow transcribe` (inference seconds / audio seconds) on one thread.

A DeepSpeech network of `--n_hidden` units (default 2048, 47 M parameters) with random, untrained weights (the
speed does not depend on the weights) is exported by `dsflow export` three ways: DeepSpeech's quantized TFLite
(dynamic-range, int8 weights), float32 TFLite and the TF SavedModel. Each transcribes LDC93S1 repeated to
`--seconds` seconds, streamed exactly as `dsflow transcribe` does (n_steps chunks with carried LSTM state);
model loading is not counted. Also shown: the share of the time spent in the acoustic model (the same number of
n_steps chunks of zero input), the rest is the per-window MFCC graph and Python. Goal: RTF <= 0.05 (TFLite).

    python bench/bench_transcribe.py                 # n_hidden 2048, 30 s of audio
    python bench/bench_transcribe.py --n_hidden 512 --seconds 10
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n_hidden", type=int, default=2048)
    p.add_argument("--seconds", type=float, default=30.0, help="audio length (LDC93S1 repeated)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per model; the best is reported")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import numpy as np
    import soundfile as sf
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from dsflow import export, model, transcribe
    from dsflow.alphabet import Alphabet

    with tempfile.TemporaryDirectory(prefix="bench-transcribe-") as tmp:
        tmp = Path(tmp)
        samples, rate = sf.read(ROOT / "data/ldc93s1/LDC93S1.wav", dtype="int16")
        audio = np.tile(samples, int(np.ceil(args.seconds * rate / len(samples))))[: int(args.seconds * rate)]
        wav = tmp / "long.wav"
        sf.write(wav, audio, rate, subtype="PCM_16")

        net = model.DeepSpeech(args.n_hidden, 29)
        net.alphabet, net.checkpoint = Alphabet.from_file(ROOT / "data/alphabet.txt"), "random weights"
        print(f"n_hidden {args.n_hidden}: {net.count_params():,} parameters (random weights), "
              f"{len(audio) / rate:.1f} s of audio, {args.threads} thread(s)")
        meta = {"sample_rate": rate, "win_len_ms": 32.0, "win_step_ms": 20.0}
        for name, quantize in (("quantized", True), ("float", False)):
            t = time.perf_counter()
            export.write_export(net, tmp / name, export.options(export_tflite=True, export_quantize=quantize), meta)
            size = (tmp / name / "output_graph.tflite").stat().st_size
            print(f"export ({name} TFLite + SavedModel): {time.perf_counter() - t:.1f} s, TFLite {size / 1e6:.1f} MB")

        print(f"{'model':<22} {'load s':>7} {'RTF':>7} {'acoustic share':>15}")
        for label, path, savedmodel in (("TFLite quantized", tmp / "quantized", False),
                                        ("TFLite float32", tmp / "float", False),
                                        ("SavedModel", tmp / "float", True)):
            t = time.perf_counter()
            m = transcribe.ExportedModel(path, savedmodel, args.threads)
            load = time.perf_counter() - t
            transcribe.transcribe(m, ROOT / "data/ldc93s1/LDC93S1.wav")  # warm-up
            best = float("inf")
            for _ in range(args.repeats):
                t = time.perf_counter()
                transcribe.transcribe(m, wav)
                best = min(best, time.perf_counter() - t)
            frames = 1 + (len(audio) - m.window) // m.stride
            inputs = {"input_node": np.zeros([1, m.n_steps, 19, 26], np.float32),
                      "previous_state_c": np.zeros([1, m.n_hidden], np.float32),
                      "previous_state_h": np.zeros([1, m.n_hidden], np.float32)}
            t = time.perf_counter()
            for _ in range(-(-frames // m.n_steps)):
                m.run("acoustic", **inputs)
            acoustic = time.perf_counter() - t
            seconds = len(audio) / rate
            print(f"{label:<22} {load:7.2f} {best / seconds:7.4f} {acoustic / best:14.0%}")


if __name__ == "__main__":
    main()
