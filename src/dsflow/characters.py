"""`dsflow alphabet`: DeepSpeech's util/check_characters.py. Lists the characters of CSV transcripts, refuses
transcripts that change under Unicode NFKC (unless --unicode), and writes an alphabet file of them.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from pathlib import Path
from typing import Iterable

from dsflow import UserError, csvfile
from dsflow.alphabet import Alphabet
from dsflow.flags import file_list
from dsflow.log import log


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
