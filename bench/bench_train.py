"""Training throughput of the DeepSpeech model: audio seconds per second and model-FLOP utilisation.

MFU = (6 x parameters x frames per step) / step time, over the throughput of a plain GEMM measured in the
same process (fp32, and bf16 for mixed precision), before and after the training steps (the best of each).
A step is the one `dsflow train` runs (forward, CTC loss, backward, Adam update) on a synthetic batch of
`--batch` utterances of `--seconds` seconds (50 frames per second) with transcripts of 15 characters a second.

    python bench/bench_train.py                       # n_hidden 2048, batch 32, fp32 and bf16
    python bench/bench_train.py --n_hidden 512 --steps 5 --precision fp32
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import cpu_flags, cpu_line  # noqa: E402


def gemm_flops(tf, dtype, n: int = 2048, reps: int = 5) -> float:
    """Best FLOP/s of an n x n x n matmul."""
    a = tf.random.normal([n, n], dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(tf.transpose(a), dtype)
    mm = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1, :1], tf.float32)))
    mm().numpy()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        mm().numpy()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n_hidden", type=int, default=2048)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seconds", type=float, default=5.0, help="utterance length (Common Voice clips: ~5 s)")
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32, bf16")
    p.add_argument("--threads", type=int, default=0, help="TensorFlow intra-op threads (0: default)")
    args = p.parse_args()

    import numpy as np
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(2)
    from dsflow import model
    from dsflow.model import step_functions

    native_bf16 = bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})
    print(f"{cpu_line()}; GPUs: {len(tf.config.list_physical_devices('GPU'))}")

    frames = int(round(args.seconds * 50))
    rng = np.random.default_rng(0)
    n_labels = int(args.seconds * 15)
    features = tf.constant(rng.normal(size=(args.batch, frames, 26)).astype("float32") * 10)
    feature_lengths = tf.fill([args.batch], frames)
    labels = tf.constant(rng.integers(0, 28, size=(args.batch, n_labels)), tf.int32)
    label_lengths = tf.fill([args.batch], n_labels)
    results = {}
    for precision in args.precision.split(","):
        dtype = {"fp32": tf.float32, "bf16": tf.bfloat16}[precision]
        net = model.DeepSpeech(args.n_hidden, 29)
        opt = model.adam(1e-4)
        opt.build(net.trainable_variables)
        gradients, apply, _ = step_functions(net, opt, model.dropout_rates(0.05), dtype)
        peak = gemm_flops(tf, dtype)

        def step(i):
            losses, grads = gradients(features, feature_lengths, labels, label_lengths, tf.constant([1, i], tf.int64))
            apply(grads)
            return losses.numpy()

        t = time.perf_counter()
        step(0)
        warmup = time.perf_counter() - t
        times = []
        for i in range(args.steps):
            t = time.perf_counter()
            step(i + 1)
            times.append(time.perf_counter() - t)
        peak = max(peak, gemm_flops(tf, dtype))
        dt = min(times)
        flops = 6 * net.count_params() * args.batch * frames / dt
        results[precision] = args.batch * args.seconds / dt
        print(f"{precision}: n_hidden {args.n_hidden}, batch {args.batch} x {args.seconds:g} s: step {dt:.2f} s "
              f"(median {np.median(times):.2f}, first {warmup:.1f}), {results[precision]:.2f} audio-s/s, "
              f"{flops / 1e9:.1f} GFLOP/s = {flops / peak:.0%} of {precision} GEMM ({peak / 1e9:.1f} GFLOP/s)")
    if "fp32" in results and "bf16" in results:
        print(f"bf16 / fp32 throughput: {results['bf16'] / results['fp32']:.2f}x"
              + ("" if native_bf16 else " (this CPU has no native bf16: amx_bf16/avx512_bf16 absent)"))


if __name__ == "__main__":
    main()
