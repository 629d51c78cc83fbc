"""`snakemake -n` on 10,000- and 100,000-clip corpora (target: <= 3 s at 100,000), against the 1-clip LDC93S1 config.

    python bench/bench_dryrun.py [--n 10000,100000] [--repeat 3] [--run-features]

A scratch copy of the workflow gets N real short WAVs (0.3 to 1.5 s of noise, 16 kHz) in train/dev/test CSVs
(80/10/10). Timed, best of --repeat, each a fresh `python -m snakemake -n` process as a user would run it:
  startup   `snakemake --version`: Snakemake's own start-up (imports, executor plugins), for scale
  baseline  the same workflow with the 1-row LDC93S1 CSVs in all three splits
  first     the N-clip config's first dry run: it fingerprints every listed audio file (reads each once)
  fresh     the N-clip config again, nothing run yet (every job pending; the fingerprints come from their cache,
            each file only stat()ed)
  after     (--run-features) the N-clip config after validation and features really ran (their metadata
            and checksums recorded; train/evaluate pending)
The DAG has one job per stage and split, not per clip; what scales with N is the audio fingerprint (a stat per
file, its CRC from the cache): the ratio to the baseline says what it costs.
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.workflow import workdir  # noqa: E402  (the scratch copy the workflow tests use)
from common import cpu_line  # noqa: E402

SENTENCE = "the birch canoe slid on the smooth planks"


def make_corpus(folder: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    (folder / "clips").mkdir(parents=True)
    rows = []
    for i in range(n):
        samples = (rng.standard_normal(int(rng.uniform(0.3, 1.5) * 16000)) * 3000).astype(np.int16)
        name = f"clips/clip{i:06d}.wav"
        sf.write(folder / name, samples, 16000, subtype="PCM_16")
        rows.append(f"{name},{(folder / name).stat().st_size},{SENTENCE}\n")
    cut = [0, int(n * 0.8), int(n * 0.9), n]
    config = []
    for split, a, b in zip(("train", "dev", "test"), cut, cut[1:]):
        (folder / f"{split}.csv").write_text("wav_filename,wav_filesize,transcript\n" + "".join(rows[a:b]))
        config.append(f"{split}_files={folder.name}/{split}.csv")
    return config


def dry_run_seconds(wd: Path, config: list[str], repeat: int, args=("-n", "--config", "common_voice_dir=")
                    ) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the best of `repeat` dry runs (CPU time: the process and its children;
    on a shared machine it says what the run costs when wall time is inflated by other load)."""
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "snakemake", *args, *config],
                              cwd=wd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        best = min(best, (wall, cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime))
        if done.returncode != 0:
            sys.exit(f"snakemake -n failed:\n{done.stdout}\n{done.stderr}")
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", default="10000,100000", help="comma-separated corpus sizes")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--run-features", action="store_true", help="also time -n after validation and features ran")
    args = ap.parse_args()
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    print(cpu_line())
    with tempfile.TemporaryDirectory() as tmp:
        wd = workdir(Path(tmp))
        ldc = [f"{s}_files=data/ldc93s1/ldc93s1.csv" for s in ("train", "dev", "test")]
        startup = dry_run_seconds(wd, [], args.repeat, ["--version"])
        base = dry_run_seconds(wd, ldc, args.repeat)
        print(f"{'case':<48} {'wall s':>7} {'CPU s':>7} {'wall x baseline':>16}")
        show = lambda name, r: print(f"{name:<48} {r[0]:7.2f} {r[1]:7.2f} {r[0] / base[0]:16.2f}")  # noqa: E731
        show("snakemake --version (its own start-up)", startup)
        show("baseline: 1 clip (LDC93S1)", base)
        for n in map(int, args.n.split(",")):
            t = time.perf_counter()
            big = make_corpus(wd / f"bench_corpus_{n}", n)
            print(f"(made {n} WAVs in {time.perf_counter() - t:.1f} s)")
            show(f"first: {n} clips, fingerprints read", dry_run_seconds(wd, big, 1))
            show(f"fresh: {n} clips, nothing run", dry_run_seconds(wd, big, args.repeat))
            if args.run_features:
                t = time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "snakemake", "--cores", str(os.cpu_count()), "--until",
                                       "features", "--config", "common_voice_dir=", *big], cwd=wd,
                                      capture_output=True, text=True)
                if done.returncode != 0:
                    sys.exit(f"validation/features failed:\n{done.stdout[-3000:]}")
                print(f"(validation + features of {n} clips ran in {time.perf_counter() - t:.0f} s)")
                show(f"after: {n} clips, features done", dry_run_seconds(wd, big, args.repeat))
        print("target: <= 3 s for the 100,000-clip dry run")


if __name__ == "__main__":
    main()
