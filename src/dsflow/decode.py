"""Decoding the model's output. Greedy (best path) only for now; the beam search with a scorer comes later."""

from __future__ import annotations

import numpy as np

from dsflow.alphabet import Alphabet


def greedy(logits, length: int, alphabet: Alphabet) -> str:
    """Best-path CTC decoding of one utterance: argmax per frame over the first `length` frames of
    `logits` (or probabilities) [T, C], merge repeats, drop the blank (the last class)."""
    logits = np.asarray(logits)
    if logits.shape[-1] != alphabet.blank_index + 1:
        raise ValueError(f"{logits.shape[-1]} classes, but the alphabet has {len(alphabet)} labels + blank")
    best = np.argmax(logits[: int(length)], axis=-1)
    if best.size == 0:
        return ""
    keep = np.concatenate([[True], best[1:] != best[:-1]]) & (best != alphabet.blank_index)
    return alphabet.decode(best[keep].tolist())
