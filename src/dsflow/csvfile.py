"""DeepSpeech's CSV format (`wav_filename,wav_filesize,transcript`, UTF-8): the one reader and writer.

As DeepSpeech reads it: extra columns are ignored, a relative `wav_filename` resolves against the CSV's own
folder (absolute paths are kept), `wav_filesize` is optional (missing: 0 for every row, file order kept) and
only orders the rows. Rows are numbered as the data rows of the file (1 = the first row after the header),
in every message and table that names a row.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from dsflow import UserError
from dsflow.atomic import atomic_open

COLUMNS = ("wav_filename", "wav_filesize", "transcript")
REQUIRED = ("wav_filename", "transcript")


def read(path: str | Path, columns: tuple[str, ...] = REQUIRED) -> pd.DataFrame:
    """A CSV as strings (nothing read as NaN), with `row` (1-based data row) and `path` (`wav_filename` resolved
    against the CSV's folder) added. `columns`: those that must be there; an absent `wav_filesize` reads as ""."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: CSV file does not exist") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e})") from None
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise UserError(f"{path}: not a valid CSV file: {e}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: header must be {','.join(COLUMNS)}; missing {missing}, found "
                        f"{list(frame.columns)}")
    if "wav_filesize" not in frame.columns:
        frame["wav_filesize"] = ""
    frame["row"] = range(1, len(frame) + 1)
    if "wav_filename" in frame.columns:
        base = os.path.dirname(os.path.abspath(path))
        frame["path"] = [os.path.normpath(os.path.join(base, w)) if w else "" for w in frame["wav_filename"]]
    return frame


def transcripts(paths: list[str | Path]) -> list[tuple[str, int, str]]:
    """(csv, row, transcript) of every row of the CSVs."""
    out = []
    for path in paths:
        frame = read(path, ("transcript",))
        out += [(str(path), row, text) for row, text in zip(frame["row"], frame["transcript"])]
    return out


def deepspeech_order(frame: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """The rows in DeepSpeech's order (wav_filesize ascending, ties in file order), `wav_filesize` as int64
    (an absent column: 0). A size that is not a whole number is an error naming the row."""
    sizes = frame["wav_filesize"].replace("", "0")
    numeric = pd.to_numeric(sizes, errors="coerce")
    bad = numeric.isna() | (numeric != numeric.round())
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raise UserError(f"{path}: row {frame['row'].iloc[i]}: wav_filesize {frame['wav_filesize'].iloc[i]!r} is "
                        "not a whole number")
    frame = frame.assign(wav_filesize=numeric.astype("int64"))
    return frame.sort_values("wav_filesize", kind="stable").reset_index(drop=True)


def write(path: str | Path, audio_paths, sizes, texts) -> None:
    """A DeepSpeech CSV (atomically), `wav_filename` relative to the CSV's folder."""
    folder = os.path.dirname(os.path.abspath(path))
    frame = pd.DataFrame({"wav_filename": [os.path.relpath(p, folder) for p in audio_paths],
                          "wav_filesize": list(sizes), "transcript": list(texts)}, columns=list(COLUMNS))
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        frame.to_csv(f, index=False, lineterminator="\n")
