"""Validation throughput in rows/second on N real WAV files, against reading every file's samples.

    python bench/bench_validate.py [--n 10000] [--threads 2]

The baseline (same process, same files) is what any later stage must pay anyway: decoding every
WAV with soundfile. Validation reads headers (and hashes only files whose sizes collide), so its
ratio to the baseline says whether it can become the bottleneck.
"""

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import soundfile as sf

from dsflow import log as dslog
from dsflow.alphabet import Alphabet
from dsflow.validate import validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_corpus(folder: str, n: int) -> str:
    rng = np.random.default_rng(0)
    rows = ["wav_filename,wav_filesize,transcript"]
    for i in range(n):
        samples = (rng.standard_normal(int(rng.uniform(1.0, 6.0) * 16000)) * 3000).astype(np.int16)
        name = f"clip{i:06d}.wav"
        sf.write(os.path.join(folder, name), samples, 16000, subtype="PCM_16")
        rows.append(f"{name},{os.path.getsize(os.path.join(folder, name))},the birch canoe slid on the smooth planks")
    csv = os.path.join(folder, "train.csv")
    with open(csv, "w") as f:
        f.write("\n".join(rows) + "\n")
    return csv


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    dslog.setup(None, level=40)  # errors only: the benchmark prints its own table
    alphabet = Alphabet.from_file(os.path.join(ROOT, "data", "alphabet.txt"))
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        csv = make_corpus(tmp, args.n)
        print(f"made {args.n} WAVs in {time.perf_counter() - t:.1f} s")
        files = [os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".wav")]

        t = time.perf_counter()
        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(lambda f: sf.read(f, dtype="int16"), files))
        base = time.perf_counter() - t

        t = time.perf_counter()
        out = os.path.join(tmp, "out")
        summary = validate("train", [csv], alphabet, f"{out}/v.csv", f"{out}/r.tsv", f"{out}/s.json",
                           f"{out}/audio", threads=args.threads)
        took = time.perf_counter() - t
    assert summary["rows_kept"] == args.n, summary
    print(f"{'':28s} {'seconds':>8s} {'rows/s':>9s}")
    print(f"{'baseline: decode every WAV':28s} {base:8.2f} {args.n / base:9.0f}")
    print(f"{'dsflow validate':28s} {took:8.2f} {args.n / took:9.0f}")
    print(f"validation is {base / took:.1f}x the speed of just decoding the audio "
          f"({summary['hours']:.1f} h of audio, {args.threads} threads)")


if __name__ == "__main__":
    main()
