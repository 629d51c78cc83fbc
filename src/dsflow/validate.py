"""Validation of one split's DeepSpeech CSVs before any feature or GPU work.

Every problem is a (row, reason) pair in the rejection table. What happens to the row depends on
the reason's kind and the policy:

- error: the row cannot be trained on; policy `drop` drops it (listed), policy `fail` fails the job.
- convert: wrong sample rate / channels / sample format; converted with sox when
  `normalize_sample_rate` is on (DeepSpeech master's flag), else an error.
- fixed: the row is kept with a corrected value (a stale `wav_filesize`).
- warning: kept, listed (the same audio or sentence in train and in dev/test: DeepSpeech's own smoke
  test trains and tests on one file, so this cannot be an error by default).
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from dsflow import UserError, atomic, csvfile, flags
from dsflow.alphabet import Alphabet, from_config
from dsflow.flags import file_list
from dsflow.audio import PCM16, ConversionError, NotWav, WavInfo, convert, probe
from dsflow.log import DETAIL, SHOW, Progress, log
from dsflow.mfcc import n_frames, window_samples

ERROR, CONVERT, FIXED, WARNING = "error", "convert", "fixed", "warning"
REASONS = {
    "missing_file": (ERROR, "audio file does not exist"),
    "empty_file": (ERROR, "audio file is empty (0 bytes)"),
    "not_wav": (ERROR, "not a readable WAV file"),
    "truncated": (ERROR, "WAV file holds fewer samples than its header declares"),
    "no_audio": (ERROR, "WAV file has zero duration"),
    "empty_transcript": (ERROR, "transcript is empty"),
    "not_in_alphabet": (ERROR, "transcript has characters outside the alphabet"),
    "not_nfkc": (ERROR, "transcript changes under Unicode NFKC normalization"),
    "transcript_too_long": (ERROR, "more CTC labels than feature frames (CTC cannot align it)"),
    "duplicate_row": (ERROR, "the same audio file is listed again"),
    "duplicate_audio": (ERROR, "identical audio content as an earlier row"),
    "wrong_sample_rate": (CONVERT, "sample rate differs from audio_sample_rate"),
    "wrong_channels": (CONVERT, "not mono"),
    "wrong_sample_format": (CONVERT, "not 16-bit signed PCM"),
    "filesize_mismatch": (FIXED, "wav_filesize differs from the file's size; corrected"),
    "audio_in_train": (WARNING, "the same audio is in the training set"),
    "sentence_in_train": (WARNING, "the same transcript is in the training set"),
}
ACTIONS = {ERROR: "dropped", CONVERT: "converted", FIXED: "fixed", WARNING: "kept"}


@dataclass(eq=False)  # rows are compared by identity: two rows may hold the same values
class Row:
    csv: str
    row: int  # 1-based data row of the CSV (the header is row 0)
    wav_filename: str  # as written in the CSV
    path: str  # resolved against the CSV's folder, as DeepSpeech does
    wav_filesize: str
    transcript: str
    info: WavInfo | None = None
    problems: list[tuple[str, str]] = field(default_factory=list)

    def add(self, reason: str, detail: str = "") -> None:
        self.problems.append((reason, detail))


def read_csvs(csvs: list[str]) -> list[Row]:
    rows = []
    for csv in csvs:
        frame = csvfile.read(csv)
        rows += [Row(csv, row, wav, path, size, text) for row, wav, path, size, text in zip(
            frame["row"], frame["wav_filename"], frame["path"], frame["wav_filesize"], frame["transcript"])]
    return rows


def ctc_min_frames(labels) -> int:
    """Frames CTC needs: one per label plus a blank between each pair of repeated labels."""
    return len(labels) + sum(a == b for a, b in zip(labels, labels[1:]))


def _probe_file(row: Row) -> None:
    if not row.path or not os.path.isfile(row.path):
        row.add("missing_file", row.path or "(empty wav_filename)")
        return
    size = os.path.getsize(row.path)
    if size == 0:
        row.add("empty_file")
        return
    try:
        row.info = info = probe(row.path)
    except NotWav as e:
        row.add("not_wav", str(e))
        return
    if info.truncated:
        row.add("truncated", f"header declares {info.declared_frames} frames, file holds {info.frames}")
        row.info = None
        return
    if info.frames == 0:
        row.add("no_audio")
        row.info = None
        return
    if row.wav_filesize != str(size):
        row.add("filesize_mismatch", f"CSV says {row.wav_filesize or '(empty)'}, file has {size} bytes")


def _content_hash(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


def _same_content_groups(paths: list[str]) -> dict[str, str]:
    """Path -> content hash, computed only for files whose size equals another file's size."""
    by_size = defaultdict(list)
    for p in paths:
        by_size[os.path.getsize(p)].append(p)
    return {p: _content_hash(p) for group in by_size.values() if len(group) > 1 for p in group}


def check_audio_format(row: Row, sample_rate: int) -> None:
    info = row.info
    if info.sample_rate != sample_rate:
        row.add("wrong_sample_rate", f"{info.sample_rate} Hz, expected {sample_rate} Hz")
    if info.channels != 1:
        row.add("wrong_channels", f"{info.channels} channels")
    if info.subtype != PCM16:
        row.add("wrong_sample_format", info.subtype)


def check_transcript(row: Row, alphabet: Alphabet, frames: int | None) -> None:
    text = row.transcript
    if not text:
        row.add("empty_transcript")
        return
    nfkc = unicodedata.normalize("NFKC", text)
    if nfkc != text:
        row.add("not_nfkc", f"NFKC form: {nfkc!r} ({changed_codepoints(text, nfkc)})")
    missing = alphabet.missing(text)
    if missing:
        row.add("not_in_alphabet", " ".join(f"{c!r} (U+{ord(c):04X})" for c in missing))
    elif frames is not None and ctc_min_frames(alphabet.encode(text)) > frames:
        row.add("transcript_too_long", f"{ctc_min_frames(alphabet.encode(text))} CTC steps needed, {frames} frames")


def changed_codepoints(text: str, normalized: str) -> str:
    """Where two strings that may look identical differ, as code points: 'U+0075 U+0308 -> U+00FC; ...'."""
    import difflib

    def points(s: str) -> str:
        return " ".join(f"U+{ord(c):04X}" for c in s) or "(nothing)"

    ops = difflib.SequenceMatcher(None, text, normalized, autojunk=False).get_opcodes()
    return "; ".join(f"{points(text[a:b])} -> {points(normalized[c:d])}" for tag, a, b, c, d in ops if tag != "equal")


def _converted_name(row: Row) -> str:
    digest = hashlib.sha1(row.path.encode()).hexdigest()[:12]
    return f"{digest}_{Path(row.path).stem}.wav"


def validate(
    split: str,
    csvs: list[str],
    alphabet: Alphabet,
    out_csv: str,
    rejects: str,
    summary: str,
    audio_dir: str,
    sample_rate: int = 16000,
    win_len_ms: float = 32,
    win_step_ms: float = 20,
    policy: str = "drop",
    normalize_sample_rate: bool = True,
    train_csvs: list[str] = (),
    threads: int = 1,
) -> dict:
    window, step = window_samples(sample_rate, win_len_ms, win_step_ms)
    rows = read_csvs(csvs)
    log.info("validating %s: %d rows from %s", split, len(rows), ", ".join(csvs))

    with Progress(f"validate {split}: checking audio", len(rows), "rows") as progress, \
            ThreadPoolExecutor(max(1, threads)) as pool:
        for _ in pool.map(_probe_file, rows):
            progress.update()

    seen: dict[str, Row] = {}
    for row in rows:
        if row.path and row.path in seen:
            first = seen[row.path]
            row.add("duplicate_row", f"same file as {first.csv} row {first.row}")
            row.info = None
        elif row.path:
            seen[row.path] = row
    readable = [r for r in rows if r.info is not None]
    hashes = _same_content_groups([r.path for r in readable])
    first_by_hash: dict[str, Row] = {}
    for row in readable:
        h = hashes.get(row.path)
        if h is None:
            continue
        if h in first_by_hash:
            first = first_by_hash[h]
            row.add("duplicate_audio", f"same content as {first.wav_filename} ({first.csv} row {first.row})")
        else:
            first_by_hash[h] = row

    for row in rows:
        frames = None
        if row.info is not None:
            check_audio_format(row, sample_rate)
            resampled = round(row.info.frames * sample_rate / row.info.sample_rate)
            frames = n_frames(resampled, window, step)
        check_transcript(row, alphabet, frames)

    if train_csvs:
        _check_overlap(rows, read_csvs(list(train_csvs)))

    def kind(reason: str) -> str:
        k = REASONS[reason][0]
        return ERROR if k == CONVERT and not normalize_sample_rate else k

    bad = [r for r in rows if any(kind(reason) == ERROR for reason, _ in r.problems)]
    bad_ids = {id(r) for r in bad}
    to_convert = [r for r in rows if id(r) not in bad_ids and any(kind(reason) == CONVERT for reason, _ in r.problems)]
    os.makedirs(audio_dir, exist_ok=True)
    if to_convert:
        def convert_row(row: Row) -> None:
            dst = os.path.join(audio_dir, _converted_name(row))
            try:
                convert(row.path, dst, sample_rate)
                row.path = dst
            except ConversionError as e:
                row.add("not_wav", f"conversion failed: {e}")

        with Progress(f"validate {split}: converting", len(to_convert), "files") as progress, \
                ThreadPoolExecutor(max(1, threads)) as pool:
            for _ in pool.map(convert_row, to_convert):
                progress.update()
        bad += [r for r in to_convert if r.problems[-1][0] == "not_wav"]
        bad_ids = {id(r) for r in bad}

    dropped = "failed" if policy == "fail" else "dropped"
    table = [
        {"csv": r.csv, "row": r.row, "wav_filename": r.wav_filename, "reason": reason,
         "action": dropped if id(r) in bad_ids and kind(reason) != WARNING else ACTIONS[kind(reason)],
         "detail": detail}
        for r in rows for reason, detail in r.problems
    ]
    kept = [r for r in rows if id(r) not in bad_ids]
    hours = sum(r.info.duration for r in kept) / 3600
    result = {
        "split": split,
        "csv_files": list(csvs),
        "rows": len(rows),
        "rows_kept": len(kept),
        "rows_dropped": len(bad),
        "hours": round(hours, 4),
        "hours_dropped": round(sum(r.info.duration for r in bad if r.info) / 3600, 4),
        "policy": policy,
        "problems": {f"{reason} ({action})": n for (reason, action), n
                     in sorted(Counter((t["reason"], t["action"]) for t in table).items())},
        "characters_not_in_alphabet": dict(Counter(
            c for r in rows for reason, _ in r.problems if reason == "not_in_alphabet" for c in alphabet.missing(r.transcript)
        )),
    }
    _report(result, table)
    if policy == "fail" and bad:
        raise UserError(
            f"validation of {split} failed: {len(bad)} of {len(rows)} rows have errors (validation_policy: fail); "
            "each is listed with its file, row and reason in the job's log"
        )
    if not kept:
        reasons = ", ".join(f"{what} {n}" for what, n in result["problems"].items() if "dropped" in what)
        raise UserError(f"validation of {split} kept none of the {len(rows)} rows of {', '.join(csvs)} "
                        f"({reasons or 'the CSV has no rows'}); each row is listed with its file, row and reason in the job's log")
    atomic.write_text(rejects, pd.DataFrame(table, columns=["csv", "row", "wav_filename", "reason", "action",
                                                             "detail"]).to_csv(sep="\t", index=False))
    atomic.write_text(summary, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    csvfile.write(out_csv, [r.path for r in kept], [os.path.getsize(r.path) for r in kept],
                  [r.transcript for r in kept])
    return result


def _check_overlap(rows: list[Row], train: list[Row]) -> None:
    train_paths = {r.path for r in train}
    train_text = {r.transcript for r in train if r.transcript}
    train_existing = [r.path for r in train if r.path and os.path.isfile(r.path)]
    sizes = {os.path.getsize(p) for p in train_existing}
    candidates = {id(r): r for r in rows if r.info is not None and r.path not in train_paths
                  and os.path.getsize(r.path) in sizes}
    train_hashes = set()
    if candidates:
        wanted = {os.path.getsize(r.path) for r in candidates.values()}
        train_hashes = {_content_hash(p) for p in train_existing if os.path.getsize(p) in wanted}
    for row in rows:
        if row.path in train_paths:
            row.add("audio_in_train", "same file")
        elif id(row) in candidates and _content_hash(row.path) in train_hashes:
            row.add("audio_in_train", "same content")
        if row.transcript in train_text:
            row.add("sentence_in_train", row.transcript)


def _report(result: dict, table: list[dict]) -> None:
    for t in table:
        log_fn = log.error if t["action"] in ("dropped", "failed") else log.warning
        log_fn("%s row %d (%s): %s, %s%s", t["csv"], t["row"], t["wav_filename"], t["reason"], t["action"],
               f": {t['detail']}" if t["detail"] else "", extra=DETAIL)
    log.info("%s: %d rows, %d kept (%.3f h), %d dropped", result["split"], result["rows"], result["rows_kept"],
             result["hours"], result["rows_dropped"], extra=SHOW)
    for what, n in sorted(result["problems"].items()):
        log.info("  %-40s %d", what, n, extra=SHOW)
    if result["characters_not_in_alphabet"]:
        log.info("  characters not in the alphabet: %s", ", ".join(
            f"{c!r} x{n}" for c, n in result["characters_not_in_alphabet"].items()), extra=SHOW)


def add_parser(sub) -> None:
    p = sub.add_parser("validate", help="validate one split's CSVs (audio, transcripts, alphabet, leakage)")
    p.add_argument("--split", required=True)
    p.add_argument("--csv", required=True, help="comma-separated CSV files of the split")
    flags.add_option(p, "alphabet_config_path", required=True)
    p.add_argument("--out_csv", required=True)
    p.add_argument("--rejects", required=True, help="rejection table (TSV)")
    p.add_argument("--summary", required=True, help="summary (JSON)")
    p.add_argument("--audio_dir", required=True, help="where converted audio goes")
    flags.add_options(p, "validate")
    p.add_argument("--train_csv", default="", help="training CSVs, to flag dev/test rows that leak from train")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=_main)


def _main(args) -> int:
    flags.check(args, "validate")
    validate(
        args.split, file_list(args.csv), from_config(args.alphabet_config_path, args.bytes_output_mode), args.out_csv,
        args.rejects, args.summary, args.audio_dir, args.audio_sample_rate, args.feature_win_len, args.feature_win_step,
        args.validation_policy, args.normalize_sample_rate, file_list(args.train_csv), args.threads,
    )
    return 0
