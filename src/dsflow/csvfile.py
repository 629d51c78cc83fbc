"""DeepSpeech's CSV format (`wav_filename,wav_filesize,transcript`, UTF-8): the one reader and writer.

As DeepSpeech reads it: extra columns are ignored, a relative `wav_filename` resolves against the CSV's own
folder (absolute paths are kept), `wav_filesize` is optional (missing: 0 for every row, file order kept) and
only orders the rows. Rows are numbered as the data rows of the file (1 = the first row after the header),
in every message and table that names a row.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from dsflow import UserError
from dsflow.atomic import atomic_open

COLUMNS = ("wav_filename", "wav_filesize", "transcript")
REQUIRED = ("wav_filename", "transcript")


def resolve(csv_path: str | Path, wav_filename: str) -> str:
    """A `wav_filename` of the CSV at `csv_path` as a path (relative ones against the CSV's folder; "" stays "")."""
    return _resolve(os.path.dirname(os.path.abspath(csv_path)), wav_filename)


def _resolve(folder: str, wav_filename: str) -> str:
    return os.path.normpath(os.path.join(folder, wav_filename)) if wav_filename else ""


def _missing_columns(path, found: list[str], columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in found]
    if missing:
        raise UserError(f"{path}: header must be {','.join(COLUMNS)}; missing {missing}, found {list(found)}")


def check_header(path: str | Path) -> None:
    """UserError unless the CSV exists and its header has wav_filename and transcript (reads one line)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
    except FileNotFoundError:
        raise UserError(f"{path}: CSV file does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: not a readable UTF-8 CSV file: {e}") from None
    _missing_columns(path, header, REQUIRED)


def audio_paths(path: str | Path) -> list[str]:
    """The audio files a CSV lists, resolved, in its order; with the standard library only (Snakemake calls this
    when it builds the DAG, where importing pandas would cost more than reading the file)."""
    check_header(path)
    folder = os.path.dirname(os.path.abspath(path))
    with open(path, newline="", encoding="utf-8") as f:
        return [_resolve(folder, row.get("wav_filename") or "") for row in csv.DictReader(f)]


def read(path: str | Path, columns: tuple[str, ...] = REQUIRED):
    """A CSV as a DataFrame of strings (nothing read as NaN), with `row` (1-based data row) and `path`
    (`wav_filename` resolved against the CSV's folder) added. `columns`: those that must be there; an absent
    `wav_filesize` reads as ""."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: CSV file does not exist") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e})") from None
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise UserError(f"{path}: not a valid CSV file: {e}") from None
    _missing_columns(path, list(frame.columns), columns)
    if "wav_filesize" not in frame.columns:
        frame["wav_filesize"] = ""
    frame["row"] = range(1, len(frame) + 1)
    if "wav_filename" in frame.columns:
        folder = os.path.dirname(os.path.abspath(path))
        frame["path"] = [_resolve(folder, w) for w in frame["wav_filename"]]
    return frame


def transcripts(paths: list[str | Path]) -> list[tuple[str, int, str]]:
    """(csv, row, transcript) of every row of the CSVs."""
    out = []
    for path in paths:
        frame = read(path, ("transcript",))
        out += [(str(path), row, text) for row, text in zip(frame["row"], frame["transcript"])]
    return out


def deepspeech_order(frame, path: str | Path):
    """The rows in DeepSpeech's order (wav_filesize ascending, ties in file order), `wav_filesize` as int64
    (an absent column: 0). A size that is not a whole number is an error naming the row."""
    import pandas as pd

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
    import pandas as pd

    folder = os.path.dirname(os.path.abspath(path))
    frame = pd.DataFrame({"wav_filename": [os.path.relpath(p, folder) for p in audio_paths],
                          "wav_filesize": list(sizes), "transcript": list(texts)}, columns=list(COLUMNS))
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        frame.to_csv(f, index=False, lineterminator="\n")
