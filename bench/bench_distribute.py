"""What the multi-device training step costs (dsflow.distribute): throughput of `dsflow train`'s step on one device
without a strategy (the single-device loop, what one device trains with) against the same step through
tf.distribute.MirroredStrategy on that one device (the path several devices take), in the same process, rounds
interleaved; and, for the record, on 2 logical CPU devices (DSFLOW_CPU_DEVICES=2: twice the batch per step, on
the same cores, so no gain is expected on a CPU).

A step is the trainer's: gradients (forward, CTC loss, backward; for the strategy, the losses of all devices
gathered) and the Adam update, on a synthetic batch of `batch` utterances of `seconds` seconds (50 frames per
second, 15 characters a second). Audio-seconds per second = batch x seconds x devices / step time (best of the
timed steps; the median in brackets); the ratios to the single-device loop are the median of the rounds' ratios
(each round runs every variant once: the load of a shared machine cancels) and the ratio of the best steps.

    python bench/bench_distribute.py                        # the demo's size and n_hidden 2048
    python bench/bench_distribute.py --sizes 256:16:2.6 --steps 10
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="256:16:2.6,2048:8:3",
                   help="n_hidden:batch:seconds, comma-separated (default: the demo's model, batch and mean clip "
                        "length; n_hidden 2048 with a batch that keeps a step near 10 s on 2 cores)")
    p.add_argument("--steps", type=int, default=20, help="timed steps of each variant, interleaved, after a warm-up")
    p.add_argument("--threads", type=int, default=0, help="TensorFlow intra-op threads (0: default)")
    args = p.parse_args()

    import numpy as np
    import tensorflow as tf

    from bench_train import cpu_flags
    from dsflow import model
    from dsflow.distribute import Replicas

    host = tf.config.list_physical_devices("CPU")[0]  # before any op: 2 logical devices for the 2-device variant
    tf.config.set_logical_device_configuration(host, [tf.config.LogicalDeviceConfiguration()] * 2)
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(2)
    flags = cpu_flags()
    with open("/proc/cpuinfo") as f:
        model_name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    print(f"CPU: {model_name}, {os.cpu_count()} cores; avx2={'avx2' in flags} avx512f={'avx512f' in flags} "
          f"avx512_vnni={'avx512_vnni' in flags} avx512_bf16={'avx512_bf16' in flags} "
          f"amx_bf16={'amx_bf16' in flags}; GPUs: {len(tf.config.list_physical_devices('GPU'))}; TensorFlow "
          f"{tf.__version__}")

    # One strategy each for the whole process, as in `dsflow train` (two strategies on the same devices would
    # reuse each other's collective keys).
    variants = {"single-device loop": Replicas(),
                "MirroredStrategy, 1 device": Replicas(tf.distribute.MirroredStrategy(["/cpu:0"])),
                "MirroredStrategy, 2 logical CPUs": Replicas(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))}
    for size in args.sizes.split(","):
        n_hidden, batch, seconds = int(size.split(":")[0]), int(size.split(":")[1]), float(size.split(":")[2])
        frames, n_labels = int(round(seconds * 50)), int(seconds * 15)
        rng = np.random.default_rng(0)

        def synthetic():
            return {"features": tf.constant(rng.normal(size=(batch, frames, 26)).astype("float32") * 10),
                    "feature_lengths": tf.fill([batch], frames),
                    "labels": tf.constant(rng.integers(0, 28, size=(batch, n_labels)), tf.int32),
                    "label_lengths": tf.fill([batch], n_labels)}

        steps = {}
        for name, replicas in variants.items():
            with replicas.scope():
                net = model.DeepSpeech(n_hidden, 29)
                opt = model.adam(1e-4)
                opt.build(net.trainable_variables)
            gradients, apply, _ = replicas.step_functions(net, opt, model.dropout_rates(0.05), tf.float32)
            group = [synthetic() for _ in range(replicas.n)]

            def step(i, gradients=gradients, apply=apply, group=group):
                losses, update, _ = gradients(group, tf.constant([1, i], tf.int64), False)
                apply(update)
                return losses

            t = time.perf_counter()
            step(0)
            steps[name] = (step, replicas.n, time.perf_counter() - t, [])
        for i in range(args.steps):  # interleaved: the machine's load hits every variant alike
            for step, _, _, times in steps.values():
                t = time.perf_counter()
                step(i + 1)
                times.append(time.perf_counter() - t)
        print(f"n_hidden {n_hidden} ({model.DeepSpeech(n_hidden, 29).count_params():,} parameters), batch {batch} "
              f"per device x {seconds:g} s, {args.steps} steps each:")
        rates = {}
        for name, (_, devices, first, times) in steps.items():
            rates[name] = batch * seconds * devices / min(times)
            print(f"  {name:34s} step {min(times):6.3f} s (median {np.median(times):.3f}, first {first:.1f}): "
                  f"{rates[name]:7.1f} audio-s/s" + (f" ({batch * devices} utterances a step)" if devices > 1 else ""))
        # Throughput ratios to the single-device loop: of the rounds' step times (each round runs every variant
        # once, back to back), the median, so that the shared machine's load changes cancel; and of the best steps.
        (_, _, _, base), names = steps["single-device loop"], list(steps)[1:]
        for name in names:
            _, devices, _, times = steps[name]
            paired = np.median([devices * b / t for b, t in zip(base, times)])
            print(f"  {name} / single-device loop: {paired:.3f} (median of the rounds), "
                  f"{rates[name] / rates['single-device loop']:.3f} (best steps)")


if __name__ == "__main__":
    main()
