"""Fingerprints of the audio files that a split's CSVs list, computed when Snakemake builds the DAG: a rule's params,
so that an added, removed or changed audio file makes that split's stages stale (the CSVs themselves are inputs;
the audio they list is not).

A file counts by its content: its size and CRC-32C. Reading every file at each DAG build would be slow, so the
CRC of each file is cached with the file's size, modification time and inode (results/cache/audio-fingerprints.json,
written atomically: concurrent builds at worst recompute an entry); a file whose stat is unchanged is not read
again, one that was touched or replaced is. So touching a file without changing it re-runs nothing, and a
replaced file of the same name and size re-runs its split. The first build reads every file once.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import google_crc32c

from dsflow import csvfile
from dsflow.atomic import write_text

CACHE = Path("results/cache/audio-fingerprints.json")
CHUNK = 1 << 20


def _crc(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            crc = google_crc32c.extend(crc, chunk)
    return crc


class Cache:
    """path -> [size, mtime_ns, inode, crc], loaded once per process and saved when it grew."""

    def __init__(self, path: Path = CACHE):
        self.path, self.changed = Path(path), False
        try:
            self.entries = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.entries = {}

    def content(self, path: str) -> tuple[int, int] | None:
        """(size, CRC-32C) of the file at `path`, None if there is no such file."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        entry = self.entries.get(path)
        if entry and entry[:3] == [st.st_size, st.st_mtime_ns, st.st_ino]:
            return st.st_size, entry[3]
        crc = _crc(path)
        self.entries[path] = [st.st_size, st.st_mtime_ns, st.st_ino, crc]
        self.changed = True
        return st.st_size, crc

    def save(self) -> None:
        if self.changed:
            write_text(self.path, json.dumps(self.entries, separators=(",", ":")))
            self.changed = False


_caches: dict[Path, Cache] = {}
_memo: dict[tuple, str] = {}


def of_csvs(csvs: list[str], cache: Path = CACHE) -> str:
    """The fingerprint of the audio files the CSVs list, in their order (sizes and contents; missing files count as
    missing)."""
    return _fingerprint([p for csv in csvs for p in csvfile.audio_paths(csv)], ", ".join(csvs), cache)


def _fingerprint(paths: list[str], what: str, cache: Path) -> str:
    """Memoized per process: Snakemake may ask for a job's params several times."""
    key = (tuple(paths), str(cache))
    if key in _memo:
        return _memo[key]
    if Path(cache) not in _caches:
        _caches[Path(cache)] = Cache(Path(cache))
    store = _caches[Path(cache)]
    digest = hashlib.sha256()
    start = shown = time.monotonic()
    for i, path in enumerate(paths):
        found = store.content(path) if path else None
        digest.update(b"-\n" if found is None else b"%d %d\n" % found)
        if time.monotonic() - shown > 5:  # only the first build of a large corpus reads this long
            shown = time.monotonic()
            rate = (i + 1) / (shown - start)
            print(f"dsflow: fingerprinting the audio of {what}: {i + 1}/{len(paths)} files, {rate:.0f} files/s, "
                  f"ETA {(len(paths) - i - 1) / rate:.0f} s", file=sys.stderr, flush=True)
    store.save()
    _memo[key] = digest.hexdigest()[:16]
    return _memo[key]


def of_common_voice(cv_dir: str | Path, cache: Path = CACHE) -> str:
    """The fingerprint of the clips a Common Voice release's train/dev/test.tsv list (clips/<path>)."""
    import csv

    cv_dir = Path(cv_dir)
    paths = []
    for split in ("train", "dev", "test"):
        tsv = cv_dir / f"{split}.tsv"
        if tsv.is_file():
            with open(tsv, newline="", encoding="utf-8") as f:
                paths += [str(cv_dir / "clips" / row.get("path", "")) for row in
                          csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    return _fingerprint(paths, str(cv_dir), cache)


def of_checkpoint(path: str | Path) -> str:
    """The content of a checkpoint folder (its .index files, which hold every tensor's CRC, and its state files),
    or of a checkpoint prefix: training re-runs when the checkpoint it starts from changes, not when it is touched."""
    path = Path(path)
    files = sorted(path.glob("*.index")) + [path / n for n in ("checkpoint", "best_dev_checkpoint", "alphabet.txt")
                                            if (path / n).is_file()] if path.is_dir() else [Path(f"{path}.index")]
    digest = hashlib.sha256()
    for f in files:
        if f.is_file():
            digest.update(f.name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return digest.hexdigest()[:16]
