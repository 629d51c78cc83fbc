"""DeepSpeech's alphabet file format (util/text.py `Alphabet`), read exactly.

One label per line, UTF-8. A line starting with ``#`` is a comment, ``\\#`` is a literal ``#``,
empty lines are skipped, a line holding a single space is the space label, CRLF line ends are
accepted. The blank label of CTC is *not* in the file: it is index ``len(alphabet)``.

`UTF8Alphabet` is DeepSpeech's alphabet of `bytes_output_mode` (native_client/alphabet.h): no file, 255 labels,
label i is the byte i + 1 of the transcript's UTF-8 encoding (byte 0 has no label), so the model has 256 outputs
with the blank. `from_config` picks one of the two as DeepSpeech's util/config.py did; everything else uses the
same methods (encode, decode, labels, serialize) whichever it is.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterable


class AlphabetError(ValueError):
    pass


class Alphabet:
    bytes_output_mode = False  # True for UTF8Alphabet

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
        """The inverse of `serialize` (DeepSpeech's Alphabet::Deserialize). The labels of a UTF8Alphabet are
        the single bytes 1..255, which no alphabet file can hold (bytes >= 0x80 alone are not UTF-8), so they
        give a UTF8Alphabet: DeepSpeech's runtime likewise knows bytes mode only by these labels (it decodes
        by concatenating the labels' bytes)."""
        try:
            (count,), pos, labels = struct.unpack_from("<H", data), 2, {}
            for _ in range(count):
                key, size = struct.unpack_from("<HH", data, pos)
                labels[key] = bytes(data[pos + 4:pos + 4 + size])
                pos += 4 + size
            raw = [labels[i] for i in range(count)]
        except (struct.error, KeyError) as e:
            raise AlphabetError(f"{source}: not a serialized alphabet ({e!r})") from None
        if raw == UTF8Alphabet.RAW_LABELS:
            return UTF8Alphabet()
        try:
            return cls([label.decode("utf-8") for label in raw], source=source)
        except UnicodeDecodeError as e:
            raise AlphabetError(f"{source}: a label is not UTF-8 ({e})") from None

    def to_file_text(self) -> str:
        lines = ["# Each line in this file represents the Unicode codepoint (UTF-8 encoded)",
                 "# associated with a numeric label.",
                 "# A line that starts with # is a comment. You can escape it with \\# if you wish",
                 "# to use '#' as a label."]
        lines += ["\\#" + label[1:] if label.startswith("#") else label for label in self.labels]
        lines.append("# The last (non-comment) line needs to end with a newline.")
        return "\n".join(lines) + "\n"


class UTF8Alphabet(Alphabet):
    """DeepSpeech's UTF8Alphabet (bytes_output_mode): label i <-> the byte i + 1 of the UTF-8 text. `labels` are the
    bytes as one-character strings (chr(byte): ' ' is the space label 31, as in DeepSpeech)."""

    bytes_output_mode = True
    RAW_LABELS = [bytes([b]) for b in range(1, 256)]

    def __init__(self):
        super().__init__([chr(b) for b in range(1, 256)], source="bytes_output_mode (UTF-8 bytes)")

    def missing(self, text: str) -> list[str]:
        """Any text is UTF-8 bytes; only NUL has no label (DeepSpeech's EncodeSingle aborts on it)."""
        return ["\0"] if "\0" in text else []

    def can_encode(self, text: str) -> bool:
        return "\0" not in text

    def encode(self, text: str) -> list[int]:
        if "\0" in text:
            raise AlphabetError(f"cannot encode {text!r}: the NUL character has no label in bytes_output_mode")
        return [b - 1 for b in text.encode("utf-8")]

    def decode_bytes(self, labels: Iterable[int]) -> bytes:
        """The bytes of a label sequence (what DeepSpeech's runtime returns, as a C string)."""
        return bytes(i + 1 for i in labels)

    def decode(self, labels: Iterable[int]) -> str:
        """The text of a label sequence. A sequence that is not valid UTF-8 (a model's output may be) gives
        U+FFFD for each invalid part (Python's "replace"); DeepSpeech's ds_ctcdecoder raised UnicodeDecodeError
        in evaluation there, and its native client returned the raw bytes."""
        return self.decode_bytes(labels).decode("utf-8", "replace")

    def serialize(self) -> bytes:
        """DeepSpeech's Serialize of the UTF8Alphabet: 255 labels of one raw byte each."""
        return struct.pack("<H", 255) + b"".join(struct.pack("<HH", i, 1) + raw
                                                 for i, raw in enumerate(self.RAW_LABELS))

    def to_file_text(self) -> str:
        raise AlphabetError("bytes_output_mode has no alphabet file (its labels are the 255 byte values)")


def from_config(alphabet_config_path: str | Path, bytes_output_mode: bool = False) -> Alphabet:
    """The model's alphabet as DeepSpeech's util/config.py chose it: with bytes_output_mode the UTF8Alphabet (the
    alphabet file is then not read), else the alphabet file."""
    return UTF8Alphabet() if bytes_output_mode else Alphabet.from_file(alphabet_config_path)
