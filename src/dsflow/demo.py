"""The bundled demo corpus: Harvard sentences spoken by espeak-ng, laid out like a Common Voice release.

The output folder looks like a cv-corpus-6.1 language folder (what DeepSpeech's ``bin/import_cv2.py``
reads): ``clips/common_voice_en_NNNNNNNN.mp3`` (48 kHz mono MP3) and ``train.tsv``, ``dev.tsv``,
``test.tsv``, ``validated.tsv`` (= train + dev + test) with Common Voice's columns. How each clip was
synthesized (voice, variant, rate, pitch) goes to the extra file ``synthesis.tsv``.

The 72 Harvard lists of 10 sentences are split by list (1-60 train, 61-66 dev, 67-72 test), so no
dev/test sentence is ever trained on. Each sentence is spoken ``takes`` times by different speakers
(an espeak-ng voice + variant) at different rates. Speakers are dealt round-robin from one seeded
permutation in every split, so dev and test use the same speakers as train; rate and pitch come from
a random generator seeded by (seed, line). The same seed on the same espeak-ng/sox gives the same
files.

``--unseen_speakers`` makes instead a held-out test set of the test sentences (lists 67-72) spoken by speakers
the demo never uses: the other four espeak-ng English voices (accents) with six variants the demo does not use
(UNSEEN_VOICES x UNSEEN_VARIANTS = 24 speakers), rates and pitches drawn as above. It is laid out the same way
(its train.tsv and dev.tsv have no rows), so ``dsflow import-cv`` reads it and writes its test.csv, and its clips
go through the same MP3 and import as the demo's; clip numbers start at 90000001, never a demo clip's name.
"""

from __future__ import annotations

import csv
import hashlib
import random
import subprocess
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from dsflow import UserError
from dsflow.atomic import atomic_dir
from dsflow.text import validate_label_eng

LISTS, PER_LIST = 72, 10
SPLITS = {"train": (1, 60), "dev": (61, 66), "test": (67, 72)}  # Harvard list ranges, inclusive

# espeak-ng's own (non-mbrola) English voices, with their Common Voice 6.1 accent label. Four voices spoken by
# all ten variants, four takes a sentence: with all eight English voices (adding en-gb-scotland, en-029,
# en-gb-x-gbclan, en-gb-x-gbcwmd) and three takes, the demo's 10-minute training reached test CER 0.19
# instead of 0.15 (fewer clips per speaker; en-029 alone was at 0.27).
VOICES = {
    "en-us": "us",
    "en-us-nyc": "us",
    "en-gb": "england",
    "en-gb-x-rp": "england",
}
VARIANTS = ["m1", "m2", "m3", "m4", "m7", "f1", "f2", "f3", "f4", "f5"]
# Speakers for --unseen_speakers: espeak-ng's other four English voices (mbrola voices need mbrola, not installed),
# each with plain variants the demo never uses (pitch/formant settings; no robot, whisper or klatt variants).
UNSEEN_VOICES = {
    "en-gb-scotland": "scotland",
    "en-gb-x-gbclan": "england",  # Lancaster
    "en-gb-x-gbcwmd": "england",  # West Midlands
    "en-029": "other",  # Caribbean
}
UNSEEN_VARIANTS = ["m5", "m6", "m8", "Annie", "linda", "steph"]
FEMALE = {"f1", "f2", "f3", "f4", "f5", "Annie", "linda", "steph"}
UNSEEN_FIRST_CLIP = 90_000_001
AGES = ["twenties", "thirties", "fourties", "fifties"]  # Common Voice's spelling
RATES = list(range(130, 191, 5))  # words per minute; distinct within a sentence
PITCHES = [35, 50, 65]  # espeak-ng -p (0-99, 50 = the variant's own pitch)
DEFAULT_TAKES = 4

CV_COLUMNS = ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accent", "locale",
              "segment"]
SYNTHESIS_COLUMNS = ["path", "voice", "variant", "rate", "pitch"]


@dataclass(frozen=True)
class Clip:
    split: str
    line: int  # 1-based line of the text file
    take: int
    sentence: str
    path: str
    voice: str
    variant: str
    rate: int
    pitch: int


def read_sentences(path: str | Path) -> list[str]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{path}: text file does not exist") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 ({e})") from None
    if len(lines) != LISTS * PER_LIST:
        raise UserError(f"{path}: has {len(lines)} lines, expected {LISTS * PER_LIST} "
                        f"(the {LISTS} Harvard lists of {PER_LIST} sentences, one sentence a line)")
    sentences = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            raise UserError(f"{path}: row {n}: empty line")
        if validate_label_eng(line) is None:
            raise UserError(f"{path}: row {n}: {line!r} would be rejected by import_cv2's label filter "
                            "(digits or one of ( < [ ] & * {)")
        sentences.append(line)
    return sentences


def speakers(seed: int) -> list[tuple[str, str]]:
    """All (voice, variant) pairs, in the seeded order in which every split deals them out."""
    pairs = [(v, var) for v in VOICES for var in VARIANTS]
    random.Random(f"{seed}:speakers").shuffle(pairs)
    return pairs


def plan(sentences: list[str], takes: int, seed: int, limit_lists: int | None = None) -> list[Clip]:
    if not 1 <= takes <= len(RATES):
        raise UserError(f"--takes {takes}: must be 1 to {len(RATES)} (takes of a sentence get distinct rates)")
    if limit_lists is not None and limit_lists < 1:
        raise UserError(f"--limit_lists {limit_lists}: must be at least 1")
    order = speakers(seed)
    clips = []
    for split, (first, last) in SPLITS.items():
        if limit_lists is not None:
            last = min(last, first + limit_lists - 1)
        for line in range((first - 1) * PER_LIST + 1, last * PER_LIST + 1):
            rng = random.Random(f"{seed}:{line}")
            rates = rng.sample(RATES, takes)
            for take in range(takes):
                k = (line - (first - 1) * PER_LIST - 1) * takes + take  # index of the clip in its split
                voice, variant = order[k % len(order)]
                clips.append(Clip(split, line, take, sentences[line - 1],
                                  f"common_voice_en_{(line - 1) * takes + take + 1:08d}.mp3",
                                  voice, variant, rates[take], rng.choice(PITCHES)))
    return clips


def plan_unseen(sentences: list[str], takes: int, seed: int, limit_lists: int | None = None) -> list[Clip]:
    """The held-out test set: the test sentences, `takes` each, by the unseen speakers dealt round-robin."""
    if not 1 <= takes <= len(RATES):
        raise UserError(f"--takes {takes}: must be 1 to {len(RATES)} (takes of a sentence get distinct rates)")
    if limit_lists is not None and limit_lists < 1:
        raise UserError(f"--limit_lists {limit_lists}: must be at least 1")
    pairs = [(v, var) for v in UNSEEN_VOICES for var in UNSEEN_VARIANTS]
    random.Random(f"{seed}:unseen-speakers").shuffle(pairs)
    first, last = SPLITS["test"]
    if limit_lists is not None:
        last = min(last, first + limit_lists - 1)
    clips = []
    for k, line in enumerate(range((first - 1) * PER_LIST + 1, last * PER_LIST + 1)):
        rng = random.Random(f"{seed}:unseen:{line}")
        rates = rng.sample(RATES, takes)
        for take in range(takes):
            voice, variant = pairs[(k * takes + take) % len(pairs)]
            clips.append(Clip("test", line, take, sentences[line - 1],
                              f"common_voice_en_{UNSEEN_FIRST_CLIP + k * takes + take:08d}.mp3",
                              voice, variant, rates[take], rng.choice(PITCHES)))
    return clips


def client_id(voice: str, variant: str) -> str:
    """A stable 128-hex-digit id per synthetic speaker, shaped like Common Voice's (SHA-512) client_id."""
    return hashlib.sha512(f"dsflow-demo-corpus:{voice}+{variant}".encode()).hexdigest()


def cv_row(clip: Clip) -> list[str]:
    variants = VARIANTS + UNSEEN_VARIANTS
    return [client_id(clip.voice, clip.variant), clip.path, clip.sentence, "2", "0",
            AGES[variants.index(clip.variant) % len(AGES)],
            "female" if clip.variant in FEMALE else "male", {**VOICES, **UNSEEN_VOICES}[clip.voice], "en", ""]


def _run(cmd: list[str], what: str, **kwargs) -> bytes:
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=120, **kwargs)
    except FileNotFoundError:
        raise UserError(f"{cmd[0]} is not on PATH (the demo corpus needs espeak-ng and sox with MP3 support)") \
            from None
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip()
        raise UserError(f"{what}: {' '.join(cmd)} failed (exit {done.returncode}): {err}")
    return done.stdout


def synthesize(clip: Clip, clips_dir: Path) -> None:
    """espeak-ng to WAV, then sox to a 48 kHz mono 64 kbit/s MP3 (-R: repeatable output)."""
    what = f"{clip.path} (line {clip.line}, {clip.voice}+{clip.variant})"
    wav = _run(["espeak-ng", "-v", f"{clip.voice}+{clip.variant}", "-s", str(clip.rate), "-p", str(clip.pitch),
                "--stdout", clip.sentence], what)
    _run(["sox", "-R", "-V1", "-t", "wav", "-", "-r", "48000", "-c", "1", "-C", "64",
          str(clips_dir / clip.path)], what, input=wav)


def _write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def build(text: str | Path, out: str | Path, takes: int = DEFAULT_TAKES, seed: int = 0,
          limit_lists: int | None = None, threads: int = 1, unseen_speakers: bool = False) -> list[Clip]:
    """Build the corpus (or with `unseen_speakers` the held-out test set) in a temporary sibling of `out`, then
    move it into place."""
    from dsflow.log import Progress, log

    clips = (plan_unseen if unseen_speakers else plan)(read_sentences(text), takes, seed, limit_lists)
    out = Path(out)
    with atomic_dir(out) as tmp:
        (tmp / "clips").mkdir()
        log.info("synthesizing %d clips (%d takes of %d sentences) into %s with %d threads",
                 len(clips), takes, len(clips) // takes, out, threads)
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool, \
                Progress("synthesizing", len(clips), "clips") as progress:
            futures = [pool.submit(synthesize, clip, tmp / "clips") for clip in clips]
            try:
                for future in as_completed(futures):
                    future.result()
                    progress.update()
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
        for split in SPLITS:
            _write_tsv(tmp / f"{split}.tsv", CV_COLUMNS, [cv_row(c) for c in clips if c.split == split])
        _write_tsv(tmp / "validated.tsv", CV_COLUMNS, [cv_row(c) for c in clips])
        _write_tsv(tmp / "synthesis.tsv", SYNTHESIS_COLUMNS,
                   [[c.path, c.voice, c.variant, str(c.rate), str(c.pitch)] for c in clips])
    for split in SPLITS:
        n = sum(c.split == split for c in clips)
        log.info("%s: %d clips of %d sentences", split, n, n // takes)
    return clips


def add_parser(sub) -> None:
    p = sub.add_parser("demo-corpus",
                       help="synthesize the Harvard-sentence demo corpus with espeak-ng, as a Common Voice folder")
    p.add_argument("--text", required=True, help="the 720 Harvard sentences, one a line (lists of 10)")
    p.add_argument("--out", required=True, help="output folder (replaced atomically when complete)")
    p.add_argument("--takes", type=int, default=DEFAULT_TAKES,
                   help=f"clips per sentence, each by another speaker and rate (default {DEFAULT_TAKES}: ~1.5 h)")
    p.add_argument("--limit_lists", type=int, default=None,
                   help="only the first K Harvard lists of each split (train, dev, test), for tests")
    p.add_argument("--threads", type=int, default=1, help="parallel synthesis processes (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the voice/rate/pitch choices (default 0)")
    p.add_argument("--unseen_speakers", action="store_true",
                   help="instead: a test set of the test sentences by 24 speakers the demo never uses (other "
                        "espeak-ng English voices and variants), in the same Common Voice layout (test.tsv)")
    p.set_defaults(func=_main)


def _main(args) -> int:
    build(args.text, args.out, takes=args.takes, seed=args.seed, limit_lists=args.limit_lists,
          threads=args.threads, unseen_speakers=args.unseen_speakers)
    return 0
