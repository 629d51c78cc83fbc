"""MP3 -> 16 kHz mono 16-bit WAV conversion speed of `dsflow import-cv`: sox CLI vs ffmpeg CLI vs pydub.

    python bench/bench_import.py [--n 10000] [--threads 1,2] [--tools sox,ffmpeg,pydub] [--cache DIR]

Generates --n Common-Voice-like MP3s once into --cache (48 kHz mono 64 kb/s, about 5 s of espeak-ng
speech each: 50 distinct clips of two Harvard sentences, hard-linked under --n names), then converts
all of them with each tool and thread count through the importer's own `convert` (temp name +
os.replace) and prints clips/second, as a ratio to sox with 1 thread, and the best block's rate
(the clips are timed in 10 blocks, each converted by every tool in turn: other jobs on a shared
machine slow every tool alike, and the best block shows the rate of a quiet machine). Finally times a whole
`import_cv` run over a fake release of the --n clips (train.tsv), and its re-run that reuses the WAVs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dsflow import audio, importer
from dsflow.atomic import atomic_path
from dsflow.log import setup

ROOT = Path(__file__).resolve().parents[1]
DISTINCT = 50


def make_clips(cache: Path, n: int) -> list[Path]:
    clips = cache / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    sentences = (ROOT / "data/text/harvard_sentences.txt").read_text().splitlines()
    base = []
    for i in range(DISTINCT):
        mp3 = cache / f"base{i:02d}.mp3"
        if not mp3.exists():
            wav = cache / f"base{i:02d}.wav"
            subprocess.run(["espeak-ng", "-w", str(wav), f"{sentences[2 * i]} {sentences[2 * i + 1]}"], check=True)
            subprocess.run(["sox", "-G", str(wav), "-r", "48000", "-c", "1", "-C", "64", str(mp3)], check=True)
            wav.unlink()
        base.append(mp3)
    paths = []
    for i in range(n):
        mp3 = clips / f"common_voice_xx_{i:07d}.mp3"
        if not mp3.exists():
            os.link(base[i % DISTINCT], mp3)
        paths.append(mp3)
    return paths


def pydub_convert(src: Path, wav: Path, rate: int = 16000) -> int:
    """pydub's usual way: ffprobe + ffmpeg decode into memory, pydub resamples (audioop) and writes the WAV."""
    from pydub import AudioSegment

    with atomic_path(wav) as tmp:
        audio = AudioSegment.from_file(src, "mp3").set_frame_rate(rate).set_channels(1).set_sample_width(2)
        audio.export(tmp, format="wav")
        frames = audio.wav_frames(tmp, rate)
    return frames


def convert_block(tool: str, clips: list[Path], out: Path, threads: int) -> float:
    """Seconds to convert `clips` into `out` (emptied first) with `threads` parallel conversions."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    def job(mp3: Path) -> int:
        wav = out / (mp3.stem + ".wav")
        return pydub_convert(mp3, wav) if tool == "pydub" else audio.convert(mp3, wav, 16000, tool)

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        frames = list(pool.map(job, clips))
    secs = time.perf_counter() - start
    assert all(f and f > 16000 for f in frames), f"{tool}: a clip did not convert to a >1 s 16 kHz WAV"
    return secs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000, help="number of clips (default 10000)")
    p.add_argument("--threads", default="1,2", help="thread counts to time (default 1,2)")
    p.add_argument("--tools", default="sox,ffmpeg,pydub", help="converters to time (default sox,ffmpeg,pydub)")
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "dsflow-bench-import"),
                   help="where the MP3s are generated once (default: $TMPDIR/dsflow-bench-import)")
    p.add_argument("--no-import", action="store_true", help="skip the whole-import timing")
    args = p.parse_args()
    setup()
    cache = Path(args.cache)
    clips = make_clips(cache, args.n)
    durations = []
    for mp3 in sorted(cache.glob("base*.mp3")):
        info = subprocess.run(["soxi", "-D", str(mp3)], capture_output=True, text=True, check=True)
        durations.append(float(info.stdout))
    print(f"{args.n} clips ({DISTINCT} distinct, {min(durations):.1f}-{max(durations):.1f} s, "
          f"mean {sum(durations) / len(durations):.1f} s), {os.cpu_count()} CPUs", flush=True)

    # The clips are timed in blocks, each block converted by every (tool, threads) in turn, so that
    # other load on the machine spreads over all of them rather than skewing one.
    configs = [(tool, t) for tool in args.tools.split(",") for t in map(int, args.threads.split(","))]
    # The best block is the one least disturbed by other jobs on a shared machine.
    seconds = dict.fromkeys(configs, 0.0)
    best = dict.fromkeys(configs, 0.0)
    work = cache / "out"
    block = max(args.n // 10, 1)
    for start in range(0, args.n, block):
        chunk = clips[start:start + block]
        rates = []
        for tool, threads in configs:
            secs = convert_block(tool, chunk, work, threads)
            seconds[tool, threads] += secs
            best[tool, threads] = max(best[tool, threads], len(chunk) / secs)
            rates.append(f"{tool} x{threads} {len(chunk) / secs:.1f}/s")
        print(f"  clips {start}-{start + len(chunk)}: {', '.join(rates)}", flush=True)
    rows = [(f"convert {tool}", t, s, best[tool, t]) for (tool, t), s in seconds.items()]
    shutil.rmtree(work, ignore_errors=True)

    if not args.no_import:
        release = cache / "release"
        shutil.rmtree(release, ignore_errors=True)
        release.mkdir()
        os.symlink(cache / "clips", release / "clips")
        header = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccent\tlocale\tsegment\n"
        sentence = "the birch canoe slid on the smooth planks"
        body = "".join(f"c\t{mp3.name}\t{sentence}\t2\t0\t\t\t\txx\t\n" for mp3 in clips)
        (release / "train.tsv").write_text(header + body)
        (release / "dev.tsv").write_text(header)
        (release / "test.tsv").write_text(header)
        threads = max(map(int, args.threads.split(",")))
        for label in ("import-cv sox", "import-cv re-run (reuse)"):
            start = time.perf_counter()
            importer.import_cv(release, work / "csv", work / "wavs", None, threads=threads)
            rows.append((label, threads, time.perf_counter() - start, None))
        shutil.rmtree(work, ignore_errors=True)

    base = next((s for name, t, s, _ in rows if name == "convert sox" and t == 1), rows[0][2])
    print(f"\n{'what':<28}{'threads':>8}{'seconds':>10}{'clips/s':>10}{'vs sox x1':>11}{'best block':>12}")
    for name, threads, seconds, top in rows:
        print(f"{name:<28}{threads:>8}{seconds:>10.1f}{args.n / seconds:>10.1f}{base / seconds:>10.2f}x"
              + (f"{top:>10.1f}/s" if top else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
