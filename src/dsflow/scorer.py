"""The decoder's scorer files: KenLM language models and DeepSpeech's `.scorer` packages.

Owns reading both kinds and writing packages. A scorer is one of
  - an ARPA file: the vocabulary is its unigrams;
  - a KenLM binary (build_binary) with its word list `<path>.words` (one word per line; `dsflow build-lm`
    writes it);
  - a DeepSpeech/Coqui `.scorer` package (native_client/ctcdecode/scorer.cpp, generate_scorer_package.cpp):
      KenLM binary built with `-v` (no vocabulary strings after its search data), then, at the end of the
      LM's search data, int32 magic 'TRIE' (bytes "EIRT"), int32 version 6, 1 byte is_utf8_mode, float64
      default alpha, float64 default beta, then the vocabulary trie as an OpenFst ConstFst<StdArc>
      (dsflow.openfst): label = alphabet index + 1, every word followed by the space label; in UTF-8
      (bytes output) mode the labels are the bytes (UTF8Alphabet index + 1) and no space follows.
A bytes output mode scorer (is_utf8_mode) is DeepSpeech's character-based scorer: its "words" are single
characters (the LM was built from text with a space between every two characters, so it knows no space), the
decoder scores a character as soon as its last byte is output, and only the vocabulary's characters can be
output. It is for bytes_output_mode models only, and a character-mode package for alphabet models only.
The end of the LM's search data is where KenLM's loader stops mapping (lm/binary_format.cc LoadBinary):
header size + vocabulary size + search size, computed from the header's model type, n-gram counts and the
quantization / pointer-compression bits stored in the file (`kenlm_end`); KenLM ignores what follows, so the
decoder loads the package file itself as its language model.
"""

from __future__ import annotations

import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsflow import UserError, flags, openfst
from dsflow.alphabet import Alphabet
from dsflow.atomic import atomic_path

LM_ALPHA, LM_BETA = 0.931289039105002, 1.1834137581510284  # DeepSpeech 0.9.3's default lm_alpha, lm_beta
PACKAGE_MAGIC = b"EIRT"  # the C constant 'TRIE' (0x54524945) written little-endian
PACKAGE_VERSION = 6
PACKAGE_HEADER = struct.Struct("<4siBdd")  # magic, version, is_utf8_mode, default alpha, default beta
SPECIAL_WORDS = ("<s>", "</s>", "<unk>")

# ---------------------------------------------------------------------------------------------- KenLM

KENLM_MAGIC = b"mmap lm http://kheafield.com/code format version 5\n\0"  # kMagicBytes
KENLM_SANITY = (KENLM_MAGIC + b"\0" * (-(len(KENLM_MAGIC) + 1) % 8 + 1)  # the char array, ALIGN8(sizeof)
                + struct.pack("<fffIIIQ", 0.0, 1.0, -0.5, 1, 0xFFFFFFFF, 0, 1))
KENLM_PARAMS = struct.Struct("<B3xfI?3xI")  # FixedWidthParameters: order, probing multiplier, type, vocab, version
KENLM_TYPES = ("probing", "rest probing", "trie", "trie with quantization", "trie with array-compressed pointers",
               "trie with quantization and array-compressed pointers")


def _align8(n: int) -> int:
    return (n + 7) // 8 * 8


def _bits(n: int) -> int:
    return int(n).bit_length()  # KenLM's RequiredBits


def _probing_table(entries: int, multiplier: float, entry_size: int) -> int:
    buckets = max(entries + 1, int(np.float32(multiplier) * np.float32(entries)))
    return buckets * entry_size


class NotKenLM(ValueError):
    pass


def kenlm_end(path: str | Path) -> int:
    """The file offset where a KenLM binary's search data ends (KenLM's VocabStringReadingOffset); NotKenLM if
    the file is not a KenLM binary, ValueError if it is one this code cannot read (the message says why)."""
    with open(path, "rb") as f:
        head = f.read(len(KENLM_SANITY) + KENLM_PARAMS.size)
        if not head.startswith(b"mmap lm http://kheafield.com/code"):
            raise NotKenLM("not a KenLM binary")
        if len(head) < len(KENLM_SANITY) + KENLM_PARAMS.size:
            raise ValueError("truncated: the file ends inside the language model's header")
        if head[:len(KENLM_SANITY)] != KENLM_SANITY:
            raise ValueError("a KenLM binary of another format version or machine")
        order, multiplier, model, _vocab, version = KENLM_PARAMS.unpack_from(head, len(KENLM_SANITY))
        if not 2 <= order <= 255 or model >= len(KENLM_TYPES) or version != (0 if model < 2 else 1):
            raise ValueError(f"a KenLM binary with an unknown header (order {order}, type {model})")
        counts = f.read(8 * order)
        if len(counts) < 8 * order:
            raise ValueError("truncated: the file ends inside the language model's header")
        counts = struct.unpack(f"<{order}Q", counts)
        header = _align8(len(KENLM_SANITY) + KENLM_PARAMS.size + 8 * order)

        def config(offset: int, n: int) -> bytes:  # BinaryFormat::ReadForConfig
            f.seek(header + offset)
            data = f.read(n)
            if len(data) < n:
                raise ValueError("truncated: the file ends inside the language model's data")
            return data

        if model < 2:  # ProbingVocabulary + HashedSearch<BackoffValue or RestValue>
            vocab = 8 + _probing_table(counts[0], multiplier, 12)
            weights, middle_entry = (8, 16) if model == 0 else (12, 20)
            search = (counts[0] + 1) * weights + _probing_table(counts[-1], multiplier, 12)
            search += sum(_probing_table(c, multiplier, middle_entry) for c in counts[1:-1])
            return header + vocab + search
        vocab = 8 + 8 * counts[0]  # SortedVocabulary
        quantized, compressed = model in (3, 5), model in (4, 5)
        search = 0
        middle_bits, longest_bits = 63, 31
        if quantized:  # SeparatelyQuantize: its bit counts lead its tables
            q_version, prob_bits, backoff_bits = config(vocab, 3)
            if q_version != 2:
                raise ValueError(f"a KenLM binary with quantization version {q_version}")
            longest = (1 << prob_bits) * 4
            search = (order - 2) * ((1 << backoff_bits) * 4 + longest) + longest + 8
            middle_bits, longest_bits = prob_bits + backoff_bits, prob_bits
        search += (counts[0] + 2) * 16  # trie unigrams
        chop_limit = 0
        if compressed and order > 2:  # ArrayBhiksha: its version and bits lead the first middle
            b_version, chop_limit = config(vocab + search, 2)
            if b_version != 0:
                raise ValueError(f"a KenLM binary with pointer compression version {b_version}")
        for i in range(1, order - 1):
            entries, max_next = counts[i] + 1, counts[i + 1]
            required = inline = _bits(max_next)
            if compressed:
                chop = min(range(min(required, chop_limit) + 1),  # ChopBits: the first minimum
                           key=lambda c: (max_next >> (required - c)) * 64 - entries * c)
                search += 8 * (2 + (max_next >> (required - chop))) + 7
                inline = required - chop
            search += (entries * (_bits(counts[0]) + middle_bits + inline) + 7) // 8 + 8
        search += ((1 + counts[-1]) * (_bits(counts[0]) + longest_bits) + 7) // 8 + 8
        return header + vocab + search


# ---------------------------------------------------------------------------------------------- packages

@dataclass
class Package:
    lm_end: int  # where the KenLM data ends and the package header starts
    utf8: bool
    default_alpha: float
    default_beta: float
    trie: openfst.Acceptor


def read_package(path: str | Path, lm_end: int | None = None) -> Package:
    """Parse a .scorer package; ValueError says what is wrong (the caller names the file)."""
    lm_end = kenlm_end(path) if lm_end is None else lm_end
    size = os.path.getsize(path)
    if size < lm_end:
        raise ValueError(f"truncated: the language model needs {lm_end} bytes, the file has {size}")
    with open(path, "rb") as f:
        f.seek(lm_end)
        tail = f.read()
    if len(tail) < PACKAGE_HEADER.size:
        raise ValueError("no vocabulary trie after the language model (a KenLM binary, not a .scorer package)"
                         if not tail else "truncated: the package header is incomplete")
    magic, version, utf8, alpha, beta = PACKAGE_HEADER.unpack_from(tail)
    if magic != PACKAGE_MAGIC:
        raise ValueError("no DeepSpeech scorer header after the language model")
    if version != PACKAGE_VERSION:
        raise ValueError(f"scorer package version {version}, DeepSpeech 0.9.3 reads version {PACKAGE_VERSION}; "
                         "rebuild it (`dsflow build-lm --package`, or generate_scorer_package of DeepSpeech 0.9)")
    try:
        trie, end = openfst.read(tail, PACKAGE_HEADER.size, offset=lm_end)
    except openfst.FstError as e:
        raise ValueError(f"bad vocabulary trie: {e}") from None
    if end != len(tail):
        raise ValueError(f"{len(tail) - end} unexpected bytes after the vocabulary trie")
    return Package(lm_end, bool(utf8), alpha, beta, trie)


def encode_words(words, alphabet: Alphabet) -> list[list[int]]:
    """Trie label sequences of DeepSpeech's add_word_to_dictionary: index + 1, then space (character mode); the
    UTF-8 bytes (= UTF8Alphabet index + 1), no space (bytes output mode)."""
    end = [] if alphabet.bytes_output_mode else [alphabet.encode(" ")[0] + 1]
    return [[i + 1 for i in alphabet.encode(w)] + end for w in words]


def package_words(package: Package, alphabet: Alphabet) -> list[str]:
    """The vocabulary of a package spelled with `alphabet`; ValueError if it does not fit."""
    if package.utf8 != alphabet.bytes_output_mode:
        raise ValueError("a bytes output mode (UTF-8) scorer, for models trained with bytes_output_mode; use a "
                         "scorer built for your alphabet" if package.utf8 else
                         "a scorer built for an alphabet; a bytes_output_mode model needs a bytes output mode scorer "
                         "(`dsflow build-lm --bytes_output_mode true --package ...`)")
    if package.utf8:
        try:
            return [bytes(path).decode("utf-8") for path in package.trie.paths()]
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"its vocabulary is not UTF-8 bytes ({e})") from None
    labels = alphabet.labels
    space = labels.index(" ") + 1 if " " in labels else None
    words = []
    for path in package.trie.paths():
        if not path or path[-1] != space or any(not 1 <= x <= len(labels) for x in path):
            bad = [x for x in path if not 1 <= x <= len(labels)]
            why = (f"label {bad[0] - 1} is not in the alphabet {alphabet.source} ({len(labels)} labels)" if bad
                   else f"a word that does not end with the space label of {alphabet.source}")
            raise ValueError(f"its vocabulary does not fit the alphabet: {why}; was it built for another alphabet?")
        words.append("".join(labels[x - 1] for x in path[:-1]))
    return words


def write_package(lm_path: str | Path, words, alphabet: Alphabet, package: str | Path,
                  default_alpha: float = LM_ALPHA, default_beta: float = LM_BETA) -> Path:
    """generate_scorer_package: the KenLM binary `lm_path` (built with -v), the header and the vocabulary trie
    of `words` (those outside the alphabet and <s>, </s>, <unk> are left out, as DeepSpeech did); a bytes output
    mode package (--force_bytes_output_mode) for a UTF8Alphabet."""
    if " " not in alphabet.labels:
        raise UserError(f"{alphabet.source}: a scorer package needs a space label in the alphabet")
    try:
        lm_end = kenlm_end(lm_path)
    except ValueError as e:
        raise UserError(f"{lm_path}: {e}; a scorer package needs a KenLM binary (build_binary -v)") from None
    if os.path.getsize(lm_path) != lm_end:
        raise UserError(f"{lm_path}: data follows the language model (built without build_binary's -v, or "
                        "already a package); build it with -v")
    kept = sorted({w for w in words if w not in SPECIAL_WORDS and alphabet.can_encode(w)})
    if not kept:
        raise UserError(f"{package}: no word of the vocabulary can be spelled with {alphabet.source}")
    trie = openfst.minimal_acceptor(encode_words(kept, alphabet))
    header = PACKAGE_HEADER.pack(PACKAGE_MAGIC, PACKAGE_VERSION, alphabet.bytes_output_mode, default_alpha,
                                 default_beta)
    with atomic_path(package) as tmp:
        shutil.copyfile(lm_path, tmp)
        with open(tmp, "ab") as f:
            f.write(header + openfst.write(trie, lm_end + len(header)))
    return Path(package)


def set_defaults(path: str | Path, default_alpha: float, default_beta: float, output: str | Path | None = None):
    """A copy of the package `path` at `output` (default: `path` itself, replaced atomically) whose header holds
    new default alpha/beta."""
    try:
        package = read_package(path)
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: not a scorer package whose defaults can be set: {e}") from None
    with atomic_path(output or path) as tmp:
        shutil.copyfile(path, tmp)
        with open(tmp, "r+b") as f:
            f.seek(package.lm_end)
            f.write(PACKAGE_HEADER.pack(PACKAGE_MAGIC, PACKAGE_VERSION, package.utf8, default_alpha, default_beta))
    return Path(output or path)


# ---------------------------------------------------------------------------------------------- any scorer

@dataclass
class Scorer:
    path: Path
    kind: str  # "arpa", "kenlm" (binary + .words) or "package"
    words: list[str]
    default_alpha: float = LM_ALPHA  # a package's header, else DeepSpeech's flag defaults
    default_beta: float = LM_BETA


def words_path(path: str | Path) -> Path:
    """The vocabulary file that goes with a binary KenLM model."""
    return Path(f"{path}.words")


def is_arpa(path: str | Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    return head.startswith(b"\\data\\")


def arpa_words(path: str | Path) -> list[str]:
    """The unigrams of an ARPA file, without <s>, </s> and <unk>."""
    words, in_unigrams = [], False
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("\\"):
                if in_unigrams:
                    break
                in_unigrams = line == "\\1-grams:"
            elif in_unigrams and line:
                word = line.split("\t")[1] if "\t" in line else line.split()[1]
                words.append(word)
    return [w for w in words if w not in SPECIAL_WORDS]


def load(path: str | Path, alphabet: Alphabet) -> Scorer:
    """Any kind of scorer's vocabulary (spelled with `alphabet`) and default alpha/beta; UserError naming the
    file and the reason for a missing, truncated or unreadable one, a package of the other mode (bytes output or
    alphabet), a package of another version, words outside the alphabet, or (bytes output mode) words longer
    than one character."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"scorer_path: {path} does not exist")
    try:
        if is_arpa(path):
            scorer = Scorer(path, "arpa", arpa_words(path))
        else:
            try:
                lm_end = kenlm_end(path)
            except NotKenLM:
                lm_end = None  # KenLM's own loader will say what it is not
            except ValueError as e:
                raise UserError(f"scorer_path: {path}: {e}") from None
            if lm_end is not None and os.path.getsize(path) != lm_end and not _has_vocab_strings(path):
                try:
                    package = read_package(path, lm_end)
                    words = package_words(package, alphabet)
                except ValueError as e:
                    raise UserError(f"scorer_path: {path}: {e}") from None
                scorer = Scorer(path, "package", words, package.default_alpha, package.default_beta)
            else:
                vocab = words_path(path)
                if not vocab.is_file():
                    raise UserError(f"scorer_path: {path} is a binary KenLM model, but its word list {vocab} does "
                                    "not exist (one word per line; `dsflow build-lm` writes it), and it is not a "
                                    ".scorer package")
                scorer = Scorer(path, "kenlm", [w for w in vocab.read_text(encoding="utf-8").split()
                                                if w not in SPECIAL_WORDS])
    except UnicodeDecodeError as e:
        raise UserError(f"scorer_path: {path}: not UTF-8 text ({e})") from None
    bad = [w for w in scorer.words if not alphabet.can_encode(w)]
    if bad:
        raise UserError(f"scorer_path: {path}: {len(bad)} of its words use characters outside the alphabet "
                        f"{alphabet.source}, e.g. {bad[:5]}")
    long = [w for w in scorer.words if len(w) > 1] if alphabet.bytes_output_mode else []
    if long:
        raise UserError(f"scorer_path: {path}: a bytes_output_mode model needs a character-based scorer (every "
                        f"word one character, DeepSpeech's bytes output mode scorer), but {len(long)} of its words "
                        f"are longer, e.g. {long[:5]}; build one with `dsflow build-lm --bytes_output_mode true`")
    if not scorer.words:
        raise UserError(f"scorer_path: {path}: the language model has no words")
    return scorer


def _has_vocab_strings(path: Path) -> bool:
    """Whether a KenLM binary was built with its vocabulary strings (without -v): FixedWidthParameters."""
    with open(path, "rb") as f:
        f.seek(len(KENLM_SANITY))
        return KENLM_PARAMS.unpack(f.read(KENLM_PARAMS.size))[3]


# ---------------------------------------------------------------------------------------------- commands

def add_parser(sub) -> None:
    p = sub.add_parser("scorer-package", help="DeepSpeech's generate_scorer_package: a .scorer package from a "
                                              "KenLM binary (build_binary -v) and a vocabulary", description=__doc__)
    a = p.add_argument
    a("--alphabet", help="the model's alphabet (words outside it are left out, as DeepSpeech did); not used with "
                         "--bytes_output_mode")
    a("--bytes_output_mode", nargs="?", const=True, default=False, type=flags.cli_bool, metavar="true|false",
      help="a bytes output mode (UTF-8, character-based) package for a bytes_output_mode model, as "
           "generate_scorer_package --force_bytes_output_mode true")
    a("--lm", required=True, help="KenLM binary built with build_binary -v (e.g. `dsflow build-lm` output)")
    a("--vocab", required=True, help="the vocabulary: words separated by whitespace")
    a("--package", required=True, help="the .scorer file to write")
    a("--default_alpha", type=float, required=True)
    a("--default_beta", type=float, required=True)
    p.set_defaults(func=_package)
    p = sub.add_parser("scorer-set-defaults", help="write new default lm_alpha/lm_beta into a .scorer package "
                                                   "(e.g. the best pair of `dsflow lm-optimize`)")
    a = p.add_argument
    a("scorer", help="the .scorer package")
    a("--default_alpha", type=float, help="new default lm_alpha")
    a("--default_beta", type=float, help="new default lm_beta")
    a("--from_json", help="take lm_alpha and lm_beta from this JSON file (`dsflow lm-optimize --output`)")
    a("--output", help="write the changed package here (default: replace the scorer itself, atomically)")
    p.set_defaults(func=_set_defaults)


def _package(args) -> int:
    from dsflow.alphabet import AlphabetError, from_config
    from dsflow.log import log

    if not args.alphabet and not args.bytes_output_mode:
        raise UserError("scorer-package: give --alphabet, or --bytes_output_mode true")
    try:
        alphabet = from_config(args.alphabet, args.bytes_output_mode)
        words = Path(args.vocab).read_text(encoding="utf-8").split()
    except (AlphabetError, OSError, UnicodeDecodeError) as e:
        raise UserError(f"scorer-package: {e}") from None
    write_package(args.lm, words, alphabet, args.package, args.default_alpha, args.default_beta)
    log.info("wrote %s", args.package)
    return 0


def _set_defaults(args) -> int:
    import json

    from dsflow.log import log

    alpha, beta = args.default_alpha, args.default_beta
    if args.from_json:
        try:
            best = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
            alpha, beta = float(best["lm_alpha"]), float(best["lm_beta"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{args.from_json}: no lm_alpha/lm_beta to read ({e})") from None
    if alpha is None or beta is None:
        raise UserError("scorer-set-defaults: give --default_alpha and --default_beta, or --from_json")
    out = set_defaults(args.scorer, alpha, beta, args.output)
    log.info("%s: default lm_alpha %r, lm_beta %r", out, alpha, beta)
    return 0
