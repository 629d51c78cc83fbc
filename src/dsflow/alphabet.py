"""DeepSpeech's alphabet file format (util/text.py `Alphabet`), read exactly.

One label per line, UTF-8. A line starting with ``#`` is a comment, ``\\#`` is a literal ``#``,
empty lines are skipped, a line holding a single space is the space label, CRLF line ends are
accepted. The blank label of CTC is *not* in the file: it is index ``len(alphabet)``.
"""

from __future__ import annotations

import struct
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

    @classmethod
    def deserialize(cls, data: bytes, source: str = "<serialized>") -> "Alphabet":
        """The inverse of `serialize` (DeepSpeech's Alphabet::Deserialize)."""
        (count,), pos, labels = struct.unpack_from("<H", data), 2, {}
        for _ in range(count):
            key, size = struct.unpack_from("<HH", data, pos)
            labels[key] = data[pos + 4:pos + 4 + size].decode("utf-8")
            pos += 4 + size
        return cls([labels[i] for i in range(count)], source=source)

    def to_file_text(self) -> str:
        lines = ["# Each line in this file represents the Unicode codepoint (UTF-8 encoded)",
                 "# associated with a numeric label.",
                 "# A line that starts with # is a comment. You can escape it with \\# if you wish",
                 "# to use '#' as a label."]
        lines += ["\\#" + label[1:] if label.startswith("#") else label for label in self.labels]
        lines.append("# The last (non-comment) line needs to end with a newline.")
        return "\n".join(lines) + "\n"
