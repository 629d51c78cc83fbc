"""Feature extraction throughput: `dsflow features`' way vs DeepSpeech's way, same files, same process.

DeepSpeech's way: per file, read the WAV, then its TF ops (AudioSpectrogram + Mfcc) on that file,
either eagerly or through one tf.function called per file; and DeepSpeech's own training input, a
tf.data pipeline that maps those ops over the files on all CPUs. dsflow's way: the whole `dsflow
features` job (reading, features, TFRecord shards, index) in this process and with `--threads`
worker processes. Throughput is audio seconds per wall-clock second; each way runs `--repeat` times,
interleaved, and its best run counts (the machine may be shared).

    python bench/bench_features.py [--clips 2400] [--threads N] [--repeat 5]

The audio is made here from data/ldc93s1/LDC93S1.wav: clips of 1.5-10 s (Common Voice-like
lengths) cut from it repeated, with a little noise so that no two clips are the same.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dsflow import features as F  # noqa: E402
from dsflow.mfcc import mfcc  # noqa: E402
from common import ldc_clips  # noqa: E402


def make_clips(folder: Path, n: int) -> tuple[Path, float]:
    rows, total = ldc_clips(folder, n)
    csv = folder / "clips.csv"
    csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return csv, total


def deepspeech_ops(samples, rate):
    """DeepSpeech's features of one clip with its own TF ops (util/feeding.py audio_to_features), eagerly."""
    import tensorflow as tf

    audio = tf.constant(samples.astype(np.float32)[:, None] / np.float32(32767))
    spectrogram = tf.raw_ops.AudioSpectrogram(input=audio, window_size=512, stride=320, magnitude_squared=True)
    out = tf.raw_ops.Mfcc(spectrogram=spectrogram, sample_rate=rate, dct_coefficient_count=26,
                          upper_frequency_limit=rate / 2)
    return tf.reshape(out, [-1, 26]).numpy()


def deepspeech_eager(paths):
    for path in paths:
        deepspeech_ops(*sf.read(path, dtype="int16"))


def deepspeech_function(paths):
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32)])
    def features(audio):
        spectrogram = tf.raw_ops.AudioSpectrogram(input=audio, window_size=512, stride=320, magnitude_squared=True)
        out = tf.raw_ops.Mfcc(spectrogram=spectrogram, sample_rate=16000, dct_coefficient_count=26,
                              upper_frequency_limit=8000.0)
        return tf.reshape(out, [-1, 26])

    for path in paths:
        samples, _ = sf.read(path, dtype="int16")
        features(samples.astype(np.float32)[:, None] / np.float32(32767)).numpy()


def deepspeech_tf_data(paths):
    """DeepSpeech 0.9.3's training input (util/feeding.py create_dataset): a Python generator reads and
    converts each file (pcm_to_np), `.map(audio_to_features, num_parallel_calls=AUTOTUNE)` computes the
    features on all cores."""
    import tensorflow as tf

    def samples():
        for path in paths:
            audio, _ = sf.read(path, dtype="int16")
            yield audio.astype(np.float32)[:, None] / np.float32(32767)

    def features(audio):
        spectrogram = tf.raw_ops.AudioSpectrogram(input=audio, window_size=512, stride=320, magnitude_squared=True)
        out = tf.raw_ops.Mfcc(spectrogram=spectrogram, sample_rate=16000, dct_coefficient_count=26,
                              upper_frequency_limit=8000.0)
        return tf.reshape(out, [-1, 26])

    dataset = tf.data.Dataset.from_generator(samples, output_signature=tf.TensorSpec([None, 1], tf.float32))
    for _ in dataset.map(features, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=2400)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    import logging

    import tensorflow as tf

    logging.getLogger("dsflow").setLevel(logging.WARNING)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        csv, seconds = make_clips(tmp, args.clips)
        paths = sorted(tmp.glob("clip*.wav"))
        # Same features both ways (checked on a few files before timing).
        for p in paths[:5]:
            samples, rate = sf.read(p, dtype="int16")
            assert np.allclose(mfcc(samples, rate), deepspeech_ops(samples, rate), rtol=1e-5, atol=1e-4)
        per_file = ["DeepSpeech ops per file, eager", "DeepSpeech ops per file, tf.function"]
        pipeline = f"DeepSpeech's tf.data pipeline, map on {os.cpu_count()} CPUs"
        job = "dsflow features job"
        ways = {
            per_file[0]: lambda: deepspeech_eager(paths),
            per_file[1]: lambda: deepspeech_function(paths),
            pipeline: lambda: deepspeech_tf_data(paths),
            f"{job}, in this process": lambda: F.write_features(csv, tmp / "out", threads=1),
            f"{job}, {args.threads} worker processes": lambda: F.write_features(csv, tmp / "out", threads=args.threads),
        }
        for way in ways.values():  # warm-up: imports, tracing, caches
            way()
        in_process = list(ways)[:4]  # CPU time is counted for these only (the workers are not our children)
        best = {name: float("inf") for name in ways}
        cpu = {name: float("inf") for name in ways}
        for _ in range(args.repeat):
            for name, way in ways.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                way()
                best[name] = min(best[name], time.perf_counter() - start)
                cpu[name] = min(cpu[name], time.process_time() - start_cpu)
    rate = {name: seconds / best[name] for name in ways}
    cpu_rate = {name: seconds / cpu[name] for name in ways}
    baseline, baseline_cpu = max(rate[n] for n in per_file), max(cpu_rate[n] for n in per_file)
    print(f"{args.clips} clips, {seconds:.0f} s of audio, {os.cpu_count()} CPUs, TF {tf.__version__}, "
          f"numpy {np.__version__}, best of {args.repeat}, load average before: {load}")
    print(f"{'':48s} {'wall clock audio-s/s':>21s} {'vs per file':>11s} {'vs tf.data':>10s}  "
          f"{'CPU time audio-s/s':>18s} {'vs per file':>11s}")
    for name in ways:
        line = f"{name:48s} {rate[name]:21.0f} {rate[name] / baseline:10.2f}x {rate[name] / rate[pipeline]:9.2f}x"
        if name in in_process:
            line += f"  {cpu_rate[name]:18.0f} {cpu_rate[name] / baseline_cpu:10.2f}x"
        print(line)
    print("(\"per file\": the faster of DeepSpeech's ops called per file; wall clock is the throughput, CPU time "
          "the work per audio second, which is what a busy machine still shows)")


if __name__ == "__main__":
    main()
