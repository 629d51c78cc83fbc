"""The demo model on speakers it never heard: CER/WER on the held-out "unseen speakers" test set.

`dsflow demo-corpus --unseen_speakers` speaks the demo's test sentences (Harvard lists 67-72) with espeak-ng's other
four English voices (en-gb-scotland, en-gb-x-gbclan, en-gb-x-gbcwmd, en-029) and variants the demo never uses; this
script synthesizes it once (cached in --cache), imports and computes its features like the workflow, and evaluates
one or more trained checkpoint folders on it (greedy, and with the demo's scorer when given), next to their own test
set's numbers (results/evaluate/metrics.json of the run that made them, when given).

    python bench/bench_unseen.py results/checkpoints [other/checkpoints ...] [--scorer results/lm/lm.scorer]
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
    args = p.parse_args()
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


if __name__ == "__main__":
    main()
