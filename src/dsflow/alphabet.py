"""DeepSpeech's alphabet file format (util/text.py `Alphabet`), read exactly.

One label per line, UTF-8. A line starting with ``#`` is a comment, ``\\#`` is a literal ``#``,
empty lines are skipped, a line holding a single space is the space label, CRLF line ends are
accepted. The blank label of CTC is *not* in the file: it is index ``len(alphabet)``.
"""

from __future__ import annotations

import struct
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Iterable


class AlphabetError(ValueError):
    pass


class Alphabet:
    def __init__(self, labels: Iterable[str], source: str = "<labels>"):
        self.labels: list[str] = list(labels)
        self.source = source
        self._index: dict[str, int] = {}
        for i, label in enumerate(self.labels):
            if label in self._index:
                raise AlphabetError(f"{source}: label {label!r} appears twice")
            self._index[label] = i

    @classmethod
    def from_file(cls, path: str | Path) -> "Alphabet":
        path = Path(path)
        try:
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise AlphabetError(f"alphabet file {path} does not exist") from None
        except UnicodeDecodeError as e:
            raise AlphabetError(f"{path}: not UTF-8 ({e})") from None
        labels = []
        for line in text.split("\n"):
            line = line[:-1] if line.endswith("\r") else line
            if line.startswith("#"):
                continue
            if line.startswith("\\#"):
                line = "#" + line[2:]
            if line == "":
                continue
            labels.append(line)
        if not labels:
            raise AlphabetError(f"{path}: no labels")
        return cls(labels, source=str(path))

    def __len__(self) -> int:
        return len(self.labels)

    def size(self) -> int:
        return len(self.labels)

    @property
    def blank_index(self) -> int:
        return len(self.labels)

    def missing(self, text: str) -> list[str]:
        """Characters of ``text`` (codepoints, in order of first appearance) not in the alphabet."""
        seen = dict.fromkeys(c for c in text if c not in self._index)
        return list(seen)

    def can_encode(self, text: str) -> bool:
        return all(c in self._index for c in text)

    def encode(self, text: str) -> list[int]:
        try:
            return [self._index[c] for c in text]
        except KeyError:
            raise AlphabetError(
                f"cannot encode {text!r}: characters not in {self.source}: {self.missing(text)}"
            ) from None

    def decode(self, labels: Iterable[int]) -> str:
        return "".join(self.labels[i] for i in labels)

    def serialize(self) -> bytes:
        """DeepSpeech's `Alphabet::Serialize` (uint16 count, then (uint16 key, uint16 len, bytes))."""
        out = [struct.pack("<H", len(self.labels))]
        for i, label in enumerate(self.labels):
            raw = label.encode("utf-8")
            out.append(struct.pack("<HH", i, len(raw)) + raw)
        return b"".join(out)

    def to_file_text(self) -> str:
        lines = ["# Each line in this file represents the Unicode codepoint (UTF-8 encoded)",
                 "# associated with a numeric label.",
                 "# A line that starts with # is a comment. You can escape it with \\# if you wish",
                 "# to use '#' as a label."]
        lines += ["\\#" + label[1:] if label.startswith("#") else label for label in self.labels]
        lines.append("# The last (non-comment) line needs to end with a newline.")
        return "\n".join(lines) + "\n"


def characters_of(transcripts: Iterable[str], unicode_normalize: bool = True) -> tuple[Counter, list[str]]:
    """Count characters as DeepSpeech's check_characters.py does.

    Returns the character counts and the transcripts that change under NFKC (DeepSpeech exits on
    those unless `-unicode` is given; we report them).
    """
    counts: Counter = Counter()
    not_nfkc = []
    for t in transcripts:
        if unicode_normalize and unicodedata.normalize("NFKC", t) != t:
            not_nfkc.append(t)
        counts.update(t)
    return counts, not_nfkc


def generate(transcripts: Iterable[str]) -> Alphabet:
    """An alphabet of every character of the transcripts, space first, then in codepoint order."""
    counts, _ = characters_of(transcripts, unicode_normalize=False)
    chars = sorted(counts)
    if " " in chars:
        chars.remove(" ")
        chars.insert(0, " ")
    return Alphabet(chars, source="<generated>")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "alphabet",
        help="list the characters of CSV transcripts / write an alphabet file (DeepSpeech's check_characters.py)",
    )
    p.add_argument("--csv", required=True, help="comma-separated CSV files (transcript column)")
    p.add_argument("--output", help="write an alphabet file here (else print the characters)")
    p.add_argument("--unicode", action="store_true",
                   help="accept transcripts that change under NFKC (check_characters.py -unicode)")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from dsflow import UserError, csvfile
    from dsflow.config import file_list
    from dsflow.log import log

    transcripts = [text for _, _, text in csvfile.transcripts(file_list(args.csv))]
    counts, not_nfkc = characters_of(transcripts)
    if not_nfkc and not args.unicode:
        shown = "; ".join(f"{t!r} -> {unicodedata.normalize('NFKC', t)!r}" for t in not_nfkc[:10])
        raise UserError(
            f"{len(not_nfkc)} transcripts change under Unicode NFKC normalization (first: {shown}); "
            "normalize them, or pass --unicode to accept them as they are"
        )
    alphabet = generate(transcripts)
    if args.output:
        Path(args.output).write_text(alphabet.to_file_text(), encoding="utf-8")
        log.info("wrote %d labels to %s", len(alphabet), args.output)
    else:
        for label in alphabet.labels:
            print(f"{label!r}\t{counts[label]}")
    return 0
