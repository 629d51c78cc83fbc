"""Real-time factor of `dsflow transcribe` (inference seconds / audio seconds) on one thread.

A DeepSpeech network of `--n_hidden` units (default 2048, 47 M parameters) with random, untrained weights (the
speed does not depend on the weights) is exported by `dsflow export` three ways: DeepSpeech's quantized TFLite
(dynamic-range, int8 weights), float32 TFLite and the TF SavedModel. Each transcribes LDC93S1 repeated to
`--seconds` seconds, streamed exactly as `dsflow transcribe` does (n_steps chunks with carried LSTM state);
model loading is not counted. Also shown: the share of the time spent in the acoustic model (the same number of
n_steps chunks of zero input), the rest is the MFCCs and Python. Goal: RTF <= 0.05 (TFLite).

The same quantized file (DeepSpeech's .tflite interface) is also run by DeepSpeech's own runtime in the same
process: libdeepspeech 0.9.3's DS_SpeechToText on the whole audio (what DeepSpeech's client does; it computes the
MFCCs with the model's own ops one 32 ms window at a time, runs the acoustic model every n_steps frames and decodes
with its CTC prefix beam search, here without a scorer) and Coqui STT 1.4's STT_SpeechToText, at the model's beam
width and at beam width 1 (which shows the share of their decoder; with random weights every character is
nearly equally likely, the beam search's worst case). Both runtimes run TFLite on 4 threads (hard-coded:
SetNumThreads(4)); so that every row gets one core, the whole process is pinned to one CPU (--cpus 1, the
default). The runtimes come from `bash scripts/fetch_runtimes.sh`; without them these rows are skipped.

Last, the floor this CPU puts under the quantized model: TFLite's own int8 (dynamic-range) fully-connected kernel is
timed on the model's two kinds of matrix product, n_steps frames at once (the dense layers and the LSTM's input
projection) and one frame at a time (the LSTM's recurrent matrix, which each frame needs before the next), and the
model's multiply-adds per frame are divided by those rates: the real-time factor the model could reach if nothing
but its matrix products took time.

    python bench/bench_transcribe.py                 # n_hidden 2048, 30 s of audio, one CPU
    python bench/bench_transcribe.py --n_hidden 512 --seconds 10
    python bench/bench_transcribe.py --cpus 0        # no pinning (the runtimes then use their 4 threads)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]

from common import cpu_line  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n_hidden", type=int, default=2048)
    p.add_argument("--seconds", type=float, default=30.0, help="audio length (LDC93S1 repeated)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per model; the best is reported")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cpus", type=int, default=1, help="pin the process to this many CPUs (0: no pinning)")
    args = p.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cpus])
    print(cpu_line())

    import numpy as np
    import soundfile as sf
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from dsflow import export, exported, model, transcribe
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

        print(f"{'model':<26} {'load s':>7} {'RTF':>7} {'acoustic share':>15}")
        for label, path, savedmodel in (("TFLite quantized", tmp / "quantized", False),
                                        ("TFLite float32", tmp / "float", False),
                                        ("SavedModel", tmp / "float", True)):
            t = time.perf_counter()
            m = exported.ExportedModel(path, savedmodel, args.threads)
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
            print(f"{label:<26} {load:7.2f} {best / seconds:7.4f} {acoustic / best:14.0%}")
        runtimes_rtf(tmp / "quantized" / "output_graph.tflite", audio, rate, args.repeats)
        floor(tf, net, args.n_hidden, m.n_steps, args.threads)


def runtimes_rtf(path: Path, audio, rate: int, repeats: int) -> None:
    """DS_SpeechToText / STT_SpeechToText on the same file and audio: best real-time factor of `repeats` runs."""
    from dsflow import UserError, runtimes

    for name in ("deepspeech-tflite", "stt"):
        try:
            runtime = runtimes.Runtime.load(name)
        except UserError as e:
            print(f"{name}: skipped ({e})")
            continue
        t = time.perf_counter()
        with runtime.model(path) as m:
            load = time.perf_counter() - t
            for width in (m.beam_width, 1):
                m.set_beam_width(width)
                m.stt(audio[:rate])  # warm-up
                best = float("inf")
                for _ in range(repeats):
                    t = time.perf_counter()
                    m.stt(audio)
                    best = min(best, time.perf_counter() - t)
                label = f"lib{'deepspeech' if name.startswith('deepspeech') else 'stt'} {runtime.version} b{width}"
                print(f"{label:<26} {load:7.2f} {best / (len(audio) / rate):7.4f}")


def fc_rate(tf, m: int, k: int, n: int, threads: int, repeats: int = 30) -> float:
    """Multiply-adds per second of TFLite's dynamic-range quantized FULLY_CONNECTED, [m, k] x [k, n]."""
    import numpy as np

    weights = tf.Variable(tf.random.normal([n, k]) * 0.02)

    class FC(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([m, k], tf.float32)])
        def f(self, x):
            return {"y": tf.matmul(x, weights, transpose_b=True)}

    module = FC()
    module.weights_ = weights
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.f.get_concrete_function()], module)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation notice
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_content=converter.convert(), num_threads=threads)
    runner = interpreter.get_signature_runner()
    x = np.random.rand(m, k).astype(np.float32)
    runner(x=x)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(repeats):
            runner(x=x)
        best = min(best, (time.perf_counter() - t) / repeats)
    return m * k * n / best


def floor(tf, net, n_hidden: int, n_steps: int, threads: int) -> None:
    batched = fc_rate(tf, n_steps, n_hidden, n_hidden, threads)
    recurrent = fc_rate(tf, 1, n_hidden, 4 * n_hidden, threads)
    # per frame, one multiply-add per weight (the 2-D variables); the recurrent half of the LSTM kernel
    # [2 n_hidden, 4 n_hidden] runs one frame at a time, the rest batched over n_steps frames
    macs = sum(v.shape.num_elements() for v in net.trainable_variables if len(v.shape) == 2)
    recurrent_macs = 4 * n_hidden ** 2
    batched_macs = macs - recurrent_macs
    per_second = 50 * (batched_macs / batched + recurrent_macs / recurrent)  # 50 frames per audio second
    print(f"TFLite int8 FC, {threads} thread(s): {batched / 1e9:.1f} GMAC/s at {n_steps} frames x {n_hidden} x "
          f"{n_hidden}, {recurrent / 1e9:.1f} GMAC/s at 1 x {n_hidden} x {4 * n_hidden}: "
          f"the matrix products alone give RTF >= {per_second:.4f}")


if __name__ == "__main__":
    main()
