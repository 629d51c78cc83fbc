"""DeepSpeech's error rates (util/evaluate_tools.py): per sample and per corpus."""

from __future__ import annotations

from dsflow import UserError


def sample_result(wav_filename: str, src: str, res: str, loss: float) -> dict:
    """DeepSpeech's process_decode_result: one sample's distances and rates, keys in its order."""
    from rapidfuzz.distance import Levenshtein

    ref_words = src.split()
    if not ref_words:  # DeepSpeech divides by zero here
        raise UserError(f"{wav_filename}: the reference transcript {src!r} has no words; WER/CER are undefined")
    char_distance, word_distance = Levenshtein.distance(src, res), Levenshtein.distance(ref_words, res.split())
    return {"wav_filename": wav_filename, "src": src, "res": res, "loss": float(loss),
            "char_distance": char_distance, "char_length": len(src),
            "word_distance": word_distance, "word_length": len(ref_words),
            "cer": char_distance / len(src), "wer": word_distance / len(ref_words)}


def corpus_rates(samples: list[dict]) -> tuple[float, float]:
    """DeepSpeech's wer_cer_batch: summed distances over summed reference lengths, each capped at 1.0."""
    wer = sum(s["word_distance"] for s in samples) / sum(s["word_length"] for s in samples)
    cer = sum(s["char_distance"] for s in samples) / sum(s["char_length"] for s in samples)
    return min(wer, 1.0), min(cer, 1.0)
