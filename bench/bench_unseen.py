"""The demo model on speakers it never heard: CER/WER on the held-out "unseen speakers" test set.

`dsflow demo-corpus --unseen_speakers` speaks the demo's test sentences (Harvard lists 67-72) with espeak-ng's other
four English voices (en-gb-scotland, en-gb-x-gbclan, en-gb-x-gbcwmd, en-029) and variants the demo never uses; this
script synthesizes it once (cached in --cache), imports and computes its features like the workflow, and evaluates
one or more trained checkpoint folders on it (greedy, and with the demo's scorer when given), next to their own test
set's numbers (results/evaluate/metrics.json of the run that made them, when given).

    python bench/bench_unseen.py results/checkpoints [other/checkpoints ...] [--scorer results/lm/lm.scorer]
    python bench/bench_unseen.py results/checkpoints --breakdown     # what makes a speaker unseen

--breakdown evaluates greedily on the same test sentences (2 clips each, 120 clips a set) spoken by four kinds of
speaker, to separate the two things the unseen set changes: the demo's voices with its variants (a control: it should
match the demo's test CER), the demo's voices with the unseen variants (other formants and pitch), the unseen voices
(accents: other pronunciation rules) with the demo's variants, both unseen; and each unseen voice alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dsflow(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "dsflow", *args], check=True, cwd=ROOT)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="trained checkpoint folders to evaluate")
    p.add_argument("--scorer", default="", help="also decode with this scorer (beam 1024)")
    p.add_argument("--cache", default=str(ROOT / "results/cache/unseen"), help="where the unseen set is kept")
    p.add_argument("--takes", type=int, default=4, help="clips per sentence (the demo's 4)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--breakdown", action="store_true", help="CER by kind of speaker instead (see above)")
    args = p.parse_args()
    if args.breakdown:
        return breakdown(args)
    cache = Path(args.cache).resolve()
    args.checkpoints = [str(Path(c).resolve()) for c in args.checkpoints]
    args.scorer = str(Path(args.scorer).resolve()) if args.scorer else ""
    cv, imported, features = cache / "cv" / "en", cache / "import", cache / "features"
    if not (features / "index.csv").exists():
        dsflow("demo-corpus", "--text", "data/text/harvard_sentences.txt", "--out", str(cv), "--takes",
               str(args.takes), "--threads", str(args.threads), "--unseen_speakers")
        dsflow("import-cv", "--cv_dir", str(cv), "--out_dir", str(imported), "--wav_dir", str(cache / "wav"),
               "--alphabet_config_path", "data/alphabet.txt", "--threads", str(args.threads))
        dsflow("features", "--csv", str(imported / "test.csv"), "--out_dir", str(features), "--threads",
               str(args.threads))
    rows = []
    for checkpoint in args.checkpoints:
        for scorer in ["", args.scorer] if args.scorer else [""]:
            out = cache / "eval" / f"{abs(hash((checkpoint, scorer))):x}.json"
            dsflow("evaluate", "--checkpoint_dir", checkpoint, "--test_features", str(features), "--test_batch_size",
                   "16", "--report_count", "0", "--scorer_path", scorer, "--metrics", str(out), "--threads",
                   str(args.threads))
            (result,) = json.loads(out.read_text()).values()
            rows.append((checkpoint, "greedy" if not scorer else f"beam 1024, {Path(scorer).name}", result))
    print(f"\nunseen speakers: {features} ({rows[0][2]['samples']} clips)\n")
    print("| checkpoint | decoding | WER | CER |\n|---|---|---:|---:|")
    for checkpoint, decoding, r in rows:
        print(f"| {checkpoint} | {decoding} | {r['wer']:.3f} | {r['cer']:.3f} |")


def breakdown(args) -> None:
    import random
    from concurrent.futures import ThreadPoolExecutor

    from dsflow import audio, demo
    from dsflow.text import validate_label_eng

    sentences = demo.read_sentences(ROOT / "data/text/harvard_sentences.txt")
    first, last = demo.SPLITS["test"]
    lines = list(range((first - 1) * demo.PER_LIST + 1, last * demo.PER_LIST + 1))
    seen_v, unseen_v = list(demo.VOICES), list(demo.UNSEEN_VOICES)
    sets = {"demo voices, demo variants (control)": (seen_v, demo.VARIANTS),
            "demo voices, unseen variants": (seen_v, demo.UNSEEN_VARIANTS),
            "unseen voices, demo variants": (unseen_v, demo.VARIANTS),
            "unseen voices, unseen variants": (unseen_v, demo.UNSEEN_VARIANTS),
            **{f"{v} alone, demo variants": ([v], demo.VARIANTS) for v in unseen_v}}
    rng = random.Random(0)
    table = []
    for n, (name, (voices, variants)) in enumerate(sets.items()):
        folder = Path(args.cache).resolve() / "breakdown" / str(n)
        clips_dir = folder / "clips"
        clips_dir.mkdir(parents=True, exist_ok=True)
        pairs = [(v, x) for v in voices for x in variants]
        clips = [demo.Clip("test", line, take, sentences[line - 1], f"{line}_{take}.mp3",
                           *pairs[(2 * k + take) % len(pairs)], rng.choice(demo.RATES), rng.choice(demo.PITCHES))
                 for k, line in enumerate(lines) for take in range(2)]

        def make(clip):
            wav = folder / Path(clip.path).with_suffix(".wav").name
            if not wav.exists():
                demo.synthesize(clip, clips_dir)  # the demo's way: espeak-ng, a 48 kHz MP3, sox to 16 kHz
                audio.convert(clips_dir / clip.path, wav)
            return f"{wav},{wav.stat().st_size},{validate_label_eng(clip.sentence)}"

        with ThreadPoolExecutor(args.threads) as pool:
            rows = list(pool.map(make, clips))
        (folder / "test.csv").write_text("\n".join(["wav_filename,wav_filesize,transcript", *rows]) + "\n")
        if not (folder / "features" / "index.csv").exists():
            dsflow("features", "--csv", str(folder / "test.csv"), "--out_dir", str(folder / "features"),
                   "--threads", str(args.threads))
        for checkpoint in args.checkpoints:
            out = folder / f"eval-{abs(hash(checkpoint)):x}.json"
            dsflow("evaluate", "--checkpoint_dir", checkpoint, "--test_features", str(folder / "features"),
                   "--test_batch_size", "16", "--report_count", "0", "--scorer_path", "", "--metrics", str(out),
                   "--threads", str(args.threads))
            (result,) = json.loads(out.read_text()).values()
            table.append((name, checkpoint, result))
    print("\n| speakers (120 clips each) | checkpoint | greedy WER | greedy CER |\n|---|---|---:|---:|")
    for name, checkpoint, r in table:
        print(f"| {name} | {checkpoint} | {r['wer']:.3f} | {r['cer']:.3f} |")


if __name__ == "__main__":
    main()
