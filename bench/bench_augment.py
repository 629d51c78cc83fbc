"""Augmented training input (dsflow.augmented) against the trainer's consumption, on this machine.

1. The producer's cost: CPU-seconds of augmentation + features per audio-second, in this process (robust to a
   busy machine), for DeepSpeech's TRAINING.rst example set (all 13 augmentations, mostly p=0.1) and for each
   augmentation alone at p=1; and the wall-clock throughput of one worker process (audio-s/s per worker).
2. Training throughput, same run: the demo's model (n_hidden 256, batch 16, dsflow.model.step_functions) over one
   epoch of the cached features (dataset.load, today's path) and over epochs from the augmenting producer
   (`--workers` processes), interleaved `--repeat` times, best of each; the ratio is the issue's goal (>= 0.8).
   Audio-s/s counts the clips' durations over the epoch's wall time, waits for input included; CPU-ms per audio
   second of the trainer's process and of the workers say what the speed would be on a saturated machine.

    python bench/bench_augment.py [--clips 320] [--workers 1] [--repeat 2] [--threads 0]

The clips (1.5-10 s, Common Voice-like) are cut from data/ldc93s1/LDC93S1.wav with a little noise, transcripts of
12 characters a second; the overlay source is 8 noise clips (white and brown noise, 3-10 s).
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dsflow.augmented import AugmentedSplit  # noqa: E402
from common import cpu_line, ldc_clips  # noqa: E402

ALPHABET = ROOT / "data/alphabet.txt"
TEXT = "she had your dark suit in greasy wash water all year "


def example(noise_csv) -> list[str]:
    """DeepSpeech 0.9.3 doc/TRAINING.rst, "Example training with all augmentations" (source: our noise CSV)."""
    return [f"overlay[p=0.5,source={noise_csv},layers=1,snr=50:20~10]",
            "reverb[p=0.1,delay=50.0~30.0,decay=10.0:2.0~1.0]",
            "resample[p=0.1,rate=12000:8000~4000]",
            "codec[p=0.1,bitrate=48000:16000]",
            "volume[p=0.1,dbfs=-10:-40]",
            "pitch[p=0.1,pitch=1~0.2]",
            "tempo[p=0.1,factor=1~0.5]",
            "warp[p=0.1,nt=4,nf=1,wt=0.5:1.0,wf=0.1:0.2]",
            "frequency_mask[p=0.1,n=1:3,size=1:5]",
            "time_mask[p=0.1,domain=signal,n=3:10~2,size=50:100~40]",
            "dropout[p=0.1,rate=0.05]",
            "add[p=0.1,domain=signal,stddev=0~0.5]",
            "multiply[p=0.1,domain=features,stddev=0~0.5]"]


def make_corpus(folder: Path, n: int, seed: int = 0):
    rows, _ = ldc_clips(folder, n, text=lambda seconds: (TEXT * 10)[:int(seconds * 12)].strip(), seed=seed)
    rng = np.random.default_rng(seed + 1)
    rate = 16000
    (folder / "train.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    noise = ["wav_filename,wav_filesize,transcript"]
    for i in range(8):
        x = rng.normal(0, 1, int(rng.uniform(3, 10) * rate))
        if i % 2:
            x = np.cumsum(x)  # brown noise
            x -= np.convolve(x, np.ones(400) / 400, "same")
        x = (x / np.abs(x).max() * 8000).astype(np.int16)
        path = folder / f"noise{i}.wav"
        sf.write(path, x, rate, subtype="PCM_16")
        noise.append(f"{path.name},{path.stat().st_size},")
    (folder / "noise.csv").write_text("\n".join(noise) + "\n", encoding="utf-8")
    return folder / "train.csv", folder / "noise.csv"


def worker_cpu(split) -> float:
    """CPU-seconds the split's worker processes have used so far (/proc/PID/stat utime + stime)."""
    pool = getattr(split, "_pool", None)
    total = 0.0
    for pid in (pool._processes if pool is not None else {}):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def producer_cost(features_dir, specs, seconds: float) -> float:
    """CPU-seconds per audio-second of one epoch computed in this process (one BLAS thread)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"), AugmentedSplit(features_dir, ALPHABET, 16, specs, epochs=10,
                                                               workers=0) as split:
        start = time.process_time()
        for _ in split.batches(3):
            pass
        return (time.process_time() - start) / seconds


def producer_table(features_dir, specs, seconds: float, used: float, batch: int, n_batches: int) -> None:
    """1. The producer's cost: CPU in this process, the example set and each augmentation alone; one worker's rate."""
    base = producer_cost(features_dir, ["volume[p=0]"], seconds)  # read + float audio + features
    print(f"\nproducer CPU-ms per audio-second (one process, one core): read + features {base * 1000:.2f}")
    cost = producer_cost(features_dir, specs, seconds)
    print(f"  the whole set: {cost * 1000:.2f} (= {1 / cost:.0f} audio-s per CPU-second)")
    for spec in specs:
        alone = spec.replace("p=0.1", "p=1").replace("p=0.5", "p=1")
        c = producer_cost(features_dir, [alone, "volume[p=0]"], seconds)  # the same path as `base`
        print(f"  {alone:64s} p=1: {c * 1000:7.2f}  (+{(c - base) * 1000:.2f})")
    with AugmentedSplit(features_dir, ALPHABET, batch, specs, epochs=10, workers=1, nice=0) as split:
        for _ in split.batches(0, n_batches - 1):  # start the worker process
            pass
        start = time.perf_counter()
        for _ in split.batches(1):
            pass
        wall = time.perf_counter() - start
    print(f"  one worker process, wall clock: {used / wall:.0f} audio-s/s per worker")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=320)
    p.add_argument("--workers", type=int, default=1, help="producer processes while training (default 1)")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="TensorFlow intra-op threads (0: its default)")
    p.add_argument("--n_hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--nice", default="0", help="the workers' niceness values to compare, e.g. 0,10 (default 0)")
    p.add_argument("--regroup", default="8", help="batches regrouped by augmented length (AugmentedSplit's "
                                                  "regroup; 1: none, DeepSpeech's batches) to compare, e.g. 1,8")
    p.add_argument("--feed", default="tensors",
                   help="tensors: AugmentedSplit.tensors (the drop-in); numpy: its batches fed as arrays")
    p.add_argument("--train-only", action="store_true", help="skip the producer's cost table")
    p.add_argument("--specs", help="';'-separated augment specs instead of the TRAINING.rst example (NOISE: the "
                                   "noise CSV)")
    args = p.parse_args()

    import logging

    logging.getLogger("dsflow").setLevel(logging.WARNING)
    print(cpu_line())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        csv, noise_csv = make_corpus(tmp, args.clips)
        from dsflow.features import write_features

        index = write_features(csv, tmp / "features", threads=2)
        features_dir = tmp / "features"
        seconds = float(index["duration"].sum())
        specs = example(noise_csv) if not args.specs else [s.replace("NOISE", str(noise_csv))
                                                            for s in args.specs.split(";")]
        n_batches = len(index) // args.batch
        used = float(index["duration"][:n_batches * args.batch].sum())
        print(f"{len(index)} clips, {seconds:.0f} s of audio; augment: {' '.join(specs)}")

        if not args.train_only:
            producer_table(features_dir, specs, seconds, used, args.batch, n_batches)

        # 2. training with and without
        import tensorflow as tf

        if args.threads:
            tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        from dsflow import dataset, model
        from dsflow.model import step_functions

        net = model.DeepSpeech(args.n_hidden, 29)
        opt = model.adam(1e-4)
        opt.build(net.trainable_variables)
        gradients, apply, _ = step_functions(net, opt, model.dropout_rates(0.05), tf.float32)
        durations = dict(zip(index["wav_filename"], index["duration"]))

        def epoch(data, split=None) -> tuple[float, float, float, int]:
            """(audio-s/s, this process's CPU-ms per audio-s, the workers' CPU-ms per audio-s, padded frames)"""
            audio, start, step, frames = 0.0, time.perf_counter(), 0, 0
            cpu, workers = time.process_time(), worker_cpu(split)
            for batch in data:
                _, grads = gradients(batch["features"], batch["feature_lengths"], batch["labels"],
                                     batch["label_lengths"], tf.constant([1, step], tf.int64))
                apply(grads)
                frames += batch["features"].shape[0] * batch["features"].shape[1]
                names = batch["wav_filename"]
                audio += sum(durations[n.decode()] for n in getattr(names, "numpy", lambda: names)())
                step += 1
            wall = time.perf_counter() - start
            if split is not None:
                waits.append(split.waited / wall)
            return (audio / wall, (time.process_time() - cpu) / audio * 1000,
                    (worker_cpu(split) - workers) / audio * 1000, frames)

        cached = dataset.load(features_dir, ALPHABET, args.batch, train=True)
        waits: list[float] = []
        epoch(cached.take(3))  # tracing
        configs = {"cached features (today)": None}
        for nice in map(int, args.nice.split(",")):
            for feed in args.feed.split(","):
                for regroup in map(int, args.regroup.split(",")):
                    configs[f"augmented, {args.workers} worker(s), nice {nice}, {feed}, regroup {regroup}"] = (
                        nice, feed, regroup)
        splits = {name: AugmentedSplit(features_dir, ALPHABET, args.batch, specs, epochs=10, workers=args.workers,
                                       nice=c[0], regroup=c[2]) for name, c in configs.items() if c}
        for split in splits.values():
            for _ in split.batches(0, n_batches - 1):  # start the workers
                pass
        runs = {name: [] for name in configs}
        for r in range(args.repeat):
            for name, config in configs.items():
                if config is None:
                    runs[name].append(epoch(cached))
                else:
                    split = splits[name]
                    data = split.tensors(r + 1) if config[1] == "tensors" else split.batches(r + 1)
                    runs[name].append(epoch(data, split))
        for split in splits.values():
            split.close()
        print(f"\ntraining n_hidden {args.n_hidden}, batch {args.batch}, TF threads {args.threads or 'default'} "
              f"(best of {args.repeat}): audio-s/s; CPU-ms per audio-second of the trainer's process and of "
              "the producer's workers; the wall-clock ratio to the cached features' rate (goal >= 0.80); the frames "
              "the trainer computed (batch x padded length) over the cached features' (mean of the epochs)")
        base = max(runs["cached features (today)"])
        for name, values in runs.items():
            rate, trainer, workers, _ = max(values)
            frames = np.mean([v[3] for v in values]) / base[3]
            print(f"  {name:58s} {rate:6.1f}  trainer {trainer:6.2f}  workers {workers:5.2f}  ratio "
                  f"{rate / base[0]:.2f}  frames {frames:.2f}   (all: {', '.join(f'{v[0]:.1f}' for v in values)})")
        print(f"  the trainer waited for augmented batches {min(waits):.0%}-{max(waits):.0%} of an epoch's time; TF "
              "used trainer CPU-ms x audio-s/s / 1000 cores")
        print(cpu_line())


if __name__ == "__main__":
    main()
