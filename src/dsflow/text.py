"""Transcript normalization of DeepSpeech's Common Voice importer (bin/import_cv2.py)."""

from __future__ import annotations

import re
import unicodedata

_REJECT = re.compile(r"[0-9(<\[\]&*{]")
_TO_SPACE = re.compile(r"[-_]")
_STRIP = re.compile(r'[.,;?!:"]')
_SPACES = re.compile(r" +")


def normalize_ascii(label: str) -> str:
    """`--normalize`: NFKD, then drop what is not ASCII (strips diacritics)."""
    return unicodedata.normalize("NFKD", label.strip()).encode("ascii", "ignore").decode("ascii", "ignore")


def validate_label_eng(label: str) -> str | None:
    """DeepSpeech's `validate_label_eng`: None when the label must be rejected, else the cleaned label."""
    if _REJECT.search(label):
        return None
    label = _TO_SPACE.sub(" ", label)
    label = _SPACES.sub(" ", label)
    label = _STRIP.sub("", label)
    label = label.strip().lower()
    return label or None
