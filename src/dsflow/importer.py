"""Common Voice importer: DeepSpeech's bin/import_cv2.py, with every dropped clip reported.

Reads ``train.tsv``, ``dev.tsv`` and ``test.tsv`` of a Common Voice release folder, converts the
MP3s in ``clips/`` to 16-bit mono PCM WAVs in a separate cache folder (atomically, in parallel,
reusing WAVs converted by an earlier run) and writes DeepSpeech CSVs whose ``wav_filename`` is
relative to the CSV's folder. Clips are dropped as import_cv2 drops them, in its order: the label
filters (``--normalize``, ``validate_label_eng``, the alphabet), then ``too_short`` / ``too_long``.
Each dropped clip is a row of ``rejected.tsv`` (tab-separated, fields holding quotes are quoted:
read it with ``pandas.read_csv(path, sep="\t", dtype=str, keep_default_na=False)``);
``summary.json`` holds the counts per split.

Differences from import_cv2: clips whose label is rejected are not converted (so a row with a bad
label *and* bad audio is reported as a label problem, and "from" hours count converted clips only);
a clip whose MP3 decodes to no samples is ``conversion_failed`` rather than ``too_short``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dsflow import UserError
from dsflow import csvfile, flags, text
from dsflow.atomic import atomic_open
from dsflow.audio import CONVERTERS, ConversionError, convert, wav_frames
from dsflow.log import SHOW, Progress, log

SPLITS = ("train", "dev", "test")
REQUIRED_COLUMNS = ("path", "sentence")
REASONS = ("label_invalid", "not_in_alphabet", "missing_audio", "conversion_failed", "too_short", "too_long")
REJECTED_COLUMNS = ("split", "tsv_row", "path", "sentence", "reason", "detail")
def wav_path(wav_dir: Path, clip: str) -> Path:
    """Where the WAV of clip `clip` (the TSV's `path`, e.g. common_voice_id_123.mp3) is cached."""
    return wav_dir / (os.path.splitext(os.path.basename(clip))[0] + ".wav")


def read_tsv(path: Path):
    """A Common Voice TSV as strings: quoting off (sentences contain quotes), nothing read as NaN."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False,
                            encoding="utf-8", skip_blank_lines=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise UserError(f"{path}: cannot read the TSV: {e}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: no column {', '.join(missing)} (columns found: {list(frame.columns)}); "
                        "a Common Voice TSV has a header line with path and sentence columns")
    return frame


def clean_label(sentence: str, alphabet=None, normalize: bool = False) -> tuple[str | None, str, str]:
    """import_cv2's label_filter_fun: (label, "", "") or (None, reason, detail)."""
    label = text.normalize_ascii(sentence) if normalize else sentence
    cleaned = text.validate_label_eng(label)
    if cleaned is None:
        bad = "".join(dict.fromkeys(text._REJECT.findall(label)))
        return None, "label_invalid", f"contains {bad!r}" if bad else "empty after cleaning"
    if alphabet is not None:
        missing = alphabet.missing(cleaned)
        if missing:
            return None, "not_in_alphabet", "characters not in the alphabet: " + " ".join(map(repr, missing))
    return cleaned, "", ""


@dataclass
class Row:
    split: str
    tsv_row: int
    path: str
    sentence: str
    label: str | None = None
    reason: str = ""
    detail: str = ""
    frames: int = 0


def convert_all(clips: list[str], clips_dir: Path, wav_dir: Path, rate: int, threads: int,
                tool: str) -> tuple[dict[str, tuple[int, str, str]], dict[str, int]]:
    """Convert the clips not yet in `wav_dir`: {clip: (frames, reason, detail)} and counts."""
    results: dict[str, tuple[int, str, str]] = {}
    todo = []
    for clip in clips:
        wav, mp3 = wav_path(wav_dir, clip), clips_dir / clip
        # a WAV older than its clip (the clip changed since) is converted again
        fresh = clip and wav.exists() and mp3.is_file() and wav.stat().st_mtime >= mp3.stat().st_mtime
        frames = wav_frames(wav, rate) if fresh else None
        if frames:
            results[clip] = (frames, "", "")
        elif not clip or not (clips_dir / clip).is_file():
            results[clip] = (0, "missing_audio", f"{clips_dir / clip} not found" if clip else "empty path")
        else:
            todo.append(clip)
    missing = sum(1 for r in results.values() if r[1])
    counts = {"reused": len(results) - missing, "missing": missing, "converted": 0, "failed": 0}
    log.info("%d clips with accepted labels: reusing %d WAVs already in %s, %d MP3s missing, converting %d "
             "with %s (%d threads)", len(clips), counts["reused"], wav_dir, missing, len(todo), tool, threads)
    if not todo:
        return results, counts
    _check_converter(tool)

    def job(clip: str) -> tuple[int, str, str]:
        try:
            return convert(clips_dir / clip, wav_path(wav_dir, clip), rate, tool), "", ""
        except ConversionError as e:
            return 0, "conversion_failed", str(e)

    with Progress("converting", len(todo), "clips") as progress, ThreadPoolExecutor(threads) as pool:
        batch = 64 * threads  # bounded, so that a million clips do not make a million futures
        for start in range(0, len(todo), batch):
            chunk = todo[start:start + batch]
            for clip, result in zip(chunk, pool.map(job, chunk)):
                results[clip] = result
                counts["failed" if result[1] else "converted"] += 1
                progress.update()
    return results, counts


def _check_converter(tool: str) -> None:
    if shutil.which(tool) is None:
        package = "sox libsox-fmt-mp3" if tool == "sox" else tool
        raise UserError(f"{tool} is not on PATH; install it (Debian: apt-get install {package}) "
                        "or pick another --converter")
    if tool == "sox":
        formats = subprocess.run(["sox", "-h"], capture_output=True, text=True).stdout
        line = next((ln for ln in formats.splitlines() if ln.startswith("AUDIO FILE FORMATS:")), "")
        if "mp3" not in line.split():
            raise UserError("sox cannot read MP3 (no mp3 in `sox -h`'s AUDIO FILE FORMATS); install "
                            "libsox-fmt-mp3, or use --converter ffmpeg")


def _hms(secs: float) -> str:  # import_cv2's secs_to_hours
    hours, remainder = divmod(secs, 3600)
    minutes, seconds = divmod(remainder, 60)
    return "%d:%02d:%02d" % (hours, minutes, seconds)


def import_cv(cv_dir: str | Path, out_dir: str | Path, wav_dir: str | Path, alphabet=None,
              normalize: bool = False, max_secs: float = 10.0, threads: int = 1, sample_rate: int = 16000,
              tool: str = "sox") -> dict:
    """Import a Common Voice release folder; returns the summary (also written to summary.json)."""
    cv_dir, out_dir, wav_dir = Path(cv_dir), Path(out_dir), Path(wav_dir)
    clips_dir = cv_dir / "clips"
    if not cv_dir.is_dir():
        raise UserError(f"{cv_dir}: Common Voice folder not found")
    if not clips_dir.is_dir():
        raise UserError(f"{clips_dir}: no clips/ folder (a Common Voice release folder holds the MP3s in clips/)")

    rows: list[Row] = []
    tsvs: dict[str, str | None] = {}
    for split in SPLITS:
        tsv = cv_dir / f"{split}.tsv"
        if not tsv.is_file():
            if split != "dev":
                raise UserError(f"{tsv}: not found (a Common Voice release folder has train.tsv, dev.tsv "
                                "and test.tsv)")
            log.warning("%s: not found; writing a dev.csv without rows", tsv)
            tsvs[split] = None
            continue
        tsvs[split] = str(tsv)
        frame = read_tsv(tsv)
        for i, (path, sentence) in enumerate(zip(frame["path"], frame["sentence"]), start=1):
            row = Row(split, i, path, sentence)
            row.label, row.reason, row.detail = clean_label(sentence, alphabet, normalize)
            rows.append(row)

    splits_of: dict[str, set[str]] = {}
    for row in rows:
        splits_of.setdefault(row.path, set()).add(row.split)
    shared = [p for p, s in splits_of.items() if len(s) > 1]
    if shared:
        log.warning("%d clips appear in more than one split (first: %s)", len(shared), shared[0])

    wav_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = list(dict.fromkeys(row.path for row in rows if not row.reason))
    audio, counts = convert_all(wanted, clips_dir, wav_dir, sample_rate, threads, tool)
    for row in rows:
        if row.reason:
            continue
        row.frames, row.reason, row.detail = audio[row.path]
        if row.reason:
            continue
        secs = row.frames / sample_rate
        steps = int(row.frames / sample_rate * 1000 / 10 / 2)
        if steps < len(row.label):
            row.reason = "too_short"
            row.detail = (f"{row.frames} frames ({secs:.2f} s) = {steps} 20-ms steps < "
                          f"{len(row.label)} characters")
        elif secs > max_secs:
            row.reason, row.detail = "too_long", f"{secs:.2f} s > {max_secs:g} s"

    summary = {"cv_dir": str(cv_dir), "sample_rate": sample_rate, "max_secs": max_secs, "normalize": normalize,
               "filter_alphabet": alphabet is not None, "wavs": counts, "splits": {}}
    for split in SPLITS:
        mine = [r for r in rows if r.split == split]
        kept = [r for r in mine if not r.reason]
        wavs = [wav_path(wav_dir, r.path) for r in kept]
        csvfile.write(out_dir / f"{split}.csv", wavs, [w.stat().st_size for w in wavs], [r.label for r in kept])
        dropped = {reason: sum(r.reason == reason for r in mine) for reason in REASONS}
        imported_frames = sum(r.frames for r in kept)
        total_frames = sum(r.frames for r in mine)
        summary["splits"][split] = {
            "tsv": tsvs[split], "rows": len(mine), "imported": len(kept),
            "hours": round(imported_frames / sample_rate / 3600, 6),
            "total_hours": round(total_frames / sample_rate / 3600, 6), "dropped": dropped}
        _report(split, len(kept), dropped, imported_frames / sample_rate, total_frames / sample_rate, max_secs)

    with atomic_open(out_dir / "rejected.tsv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(REJECTED_COLUMNS)
        for r in rows:
            if r.reason:
                writer.writerow([r.split, r.tsv_row, r.path, r.sentence, r.reason, r.detail])
    with atomic_open(out_dir / "summary.json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    n_rejected = sum(1 for r in rows if r.reason)
    log.info("wrote %s/{train,dev,test}.csv, summary.json and rejected.tsv (%d dropped clips)", out_dir, n_rejected)
    return summary


def _report(split: str, imported: int, dropped: dict[str, int], imported_secs: float, total_secs: float,
            max_secs: float) -> None:
    """import_cv2's print_import_report, per split, then the finer reasons of rejected.tsv."""
    log.info("%s: Imported %d samples.", split, imported)
    failed = dropped["conversion_failed"] + dropped["missing_audio"]
    invalid = dropped["label_invalid"] + dropped["not_in_alphabet"]
    if failed:
        log.info("%s: Skipped %d samples that failed upon conversion.", split, failed)
    if invalid:
        log.info("%s: Skipped %d samples that failed on transcript validation.", split, invalid)
    if dropped["too_short"]:
        log.info("%s: Skipped %d samples that were too short to match the transcript.", split, dropped["too_short"])
    if dropped["too_long"]:
        log.info("%s: Skipped %d samples that were longer than %g seconds.", split, dropped["too_long"], max_secs)
    log.info("%s: Final amount of imported audio: %s from %s.", split, _hms(imported_secs), _hms(total_secs),
             extra=SHOW)
    reasons = ", ".join(f"{k} {v}" for k, v in dropped.items() if v)
    if reasons:
        log.info("%s: dropped by reason (see rejected.tsv): %s", split, reasons)


def add_parser(sub) -> None:
    p = sub.add_parser("import-cv", help="import a Common Voice release folder (DeepSpeech's bin/import_cv2.py)")
    p.add_argument("--cv_dir", required=True, help="release folder with train/dev/test.tsv and clips/")
    p.add_argument("--out_dir", required=True,
                   help="writes {train,dev,test}.csv, rejected.tsv and summary.json here")
    p.add_argument("--wav_dir", required=True,
                   help="WAV cache folder (outside --cv_dir); WAVs already there are reused")
    flags.add_option(p, "alphabet_config_path", default="",
                     help="alphabet file; with import_filter_alphabet, clips whose label it cannot encode are dropped")
    flags.add_options(p, "import-cv")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="conversions run in parallel (default: number of CPUs)")
    p.add_argument("--converter", choices=CONVERTERS, default="sox", help="MP3 decoder (default sox, the faster)")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from dsflow.alphabet import AlphabetError, from_config

    flags.check(args, "import-cv")
    if args.threads < 1:
        raise UserError("--threads must be at least 1")
    alphabet = None
    if args.import_filter_alphabet:
        if not args.alphabet_config_path and not args.bytes_output_mode:
            raise UserError("import-cv: give --alphabet_config_path FILE, or --import_filter_alphabet false to keep "
                            "every character")
        try:
            alphabet = from_config(args.alphabet_config_path, args.bytes_output_mode)
        except AlphabetError as e:
            raise UserError(str(e)) from None
    import_cv(args.cv_dir, args.out_dir, args.wav_dir, alphabet, args.import_normalize, args.import_max_secs,
              args.threads, args.audio_sample_rate, args.converter)
    return 0
