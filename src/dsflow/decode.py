"""Decoding the acoustic model's output: greedy (best path) or DeepSpeech's CTC beam search with a KenLM scorer.

DeepSpeech 0.9.3 decoded with ds_ctcdecoder's prefix beam search (`beam_width`, `cutoff_prob`, `cutoff_top_n`)
and, when `scorer_path` was set, a word-level KenLM language model: each completed word w (closed by a space, or
the last word at the end) adds `lm_alpha * ln P(w | previous words) + lm_beta`, and only words in the scorer's
vocabulary trie can be spelled. ds_ctcdecoder has no wheels for current Python, so the beam search here is
flashlight-text's LexiconDecoder (the C++ decoder behind torchaudio's ctc_decoder, KenLM built in), set up with
DeepSpeech's meaning:
  lm_alpha      -> lm_weight = lm_alpha * ln(10)   (KenLM scores are log10; DeepSpeech converts them to ln)
  lm_beta       -> word_score (added once per word)
  beam_width    -> beam_size
  cutoff_prob,  -> per frame, only the most likely characters (blank included) until their probabilities sum
  cutoff_top_n     to cutoff_prob, at most cutoff_top_n, take part (DeepSpeech's get_pruned_log_probs); done
                   on the probabilities before the search, since flashlight would always try the blank
  vocabulary    -> the lexicon trie: each word is spelled as its letters followed by the space label, out-of-
                   vocabulary words are impossible (unk_score -inf), as with DeepSpeech's trie
  prefix merging-> log_add (paths of the same prefix are summed, as in a prefix beam search)
  end of the    -> one frame that can only be a space is appended, which closes the last word like DeepSpeech's
  utterance        end-of-utterance scoring; the end of the sentence is not scored, as in DeepSpeech (it never
                   asks the LM for </s>): flashlight adds lm_weight * log P(</s> | last words) to each final
                   hypothesis, which is taken out again before the best one is chosen
Differences that remain (bench/bench_parity.py measures them against DeepSpeech's own decoder): the searches
prune differently (DeepSpeech skips extensions below the beam's last prefix + ln P(blank) - lm_beta; here
hypotheses worse than the best by more than `beam_threshold`, natural-log units, default BEAM_THRESHOLD, are
dropped, and `smearing` "max" scores a partial word with the best unigram it can still become, where DeepSpeech
scores a word only when it is complete), hypotheses are merged by language-model state rather than by their
whole text, and spaces at the start or after a word's space are allowed as silence.

A scorer is a KenLM model plus its vocabulary (dsflow.scorer reads them): an ARPA file (its unigrams), a binary
model with `<scorer_path>.words`, or DeepSpeech's `.scorer` package (KenLM binary + vocabulary trie + default
alpha/beta in one file; KenLM loads the package file itself, ignoring what follows its search data). lm_alpha /
lm_beta left as None take the package's defaults, and for the other kinds DeepSpeech's flag defaults.

Without a scorer, decoding is greedy (DeepSpeech beam-searched without a language model too; see README).
A bytes_output_mode model (UTF8Alphabet) with its bytes output mode (character-based) scorer is searched by
dsflow.utf8_search, a port of DeepSpeech's own prefix beam search (the lexicon decoder needs a word-end token).

API for other modules:
    d = Decoder(alphabet, beam_width=1024, scorer_path="lm.scorer", lm_alpha=None, lm_beta=None)
    d.lm_alpha, d.lm_beta                 # the weights in use (None given: the scorer's defaults)
    d.decode(probs)                       # probs: [T, C] softmax probabilities of one utterance -> str
    d.set_alpha_beta(alpha, beta)         # new weights, same scorer (DeepSpeech's DS_SetScorerAlphaBeta)
    d.decode_batch([probs, ...], threads) # several utterances in parallel, same order
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from dsflow import UserError, scorer
from dsflow.alphabet import Alphabet
from dsflow.log import log

# Hypotheses this far (natural-log units) behind the best are dropped. DeepSpeech has no such cut; on the demo
# 15 gives the WER of 100 (within 0.001) at a seventh of the time (bench/bench_decode.py).
BEAM_THRESHOLD = 15.0
_EXCLUDED = -1e30  # log-probability of a character removed by cutoff_prob (finite: keeps log-add free of NaN)
_FLOOR = 1e-30  # probabilities are floored before log() so that an exact 0 does not give -inf


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


class Decoder:
    """Decodes softmax probabilities [T, C] (C = alphabet + blank, blank last) into text.

    With `scorer_path`, DeepSpeech's beam search with a KenLM scorer (see the module's doc); without, greedy.
    Bad scorer files raise UserError naming the file and the reason."""

    def __init__(self, alphabet: Alphabet, beam_width: int = 1024, scorer_path: str | Path | None = "",
                 lm_alpha: float | None = None, lm_beta: float | None = None,
                 cutoff_prob: float = 1.0, cutoff_top_n: int = 300, beam_threshold: float = BEAM_THRESHOLD,
                 smearing: str = "max"):
        if beam_width < 1 or cutoff_top_n < 1 or not 0 < cutoff_prob <= 1 or beam_threshold <= 0 or smearing not in (
                "max", "none"):
            raise UserError("decoder: beam_width and cutoff_top_n must be >= 1, 0 < cutoff_prob <= 1, "
                            "beam_threshold > 0 and smearing max or none")
        self.alphabet = alphabet
        self.beam_width, self.cutoff_prob, self.cutoff_top_n = beam_width, cutoff_prob, cutoff_top_n
        self.beam_threshold, self.smearing = beam_threshold, smearing
        self.scorer_path = str(scorer_path or "")
        self.lm_alpha, self.lm_beta = lm_alpha, lm_beta
        self._decoder = self._utf8 = None
        if self.scorer_path:
            self._load_scorer()
            self.set_alpha_beta(self.lm_alpha, self.lm_beta)

    @property
    def args(self) -> dict:
        """The constructor's arguments that rebuild this decoder (in another process)."""
        return dict(beam_width=self.beam_width, scorer_path=self.scorer_path, lm_alpha=self.lm_alpha,
                    lm_beta=self.lm_beta, cutoff_prob=self.cutoff_prob, cutoff_top_n=self.cutoff_top_n,
                    beam_threshold=self.beam_threshold, smearing=self.smearing)

    def _load_scorer(self) -> None:
        from flashlight.lib.text.decoder import SmearingMode, Trie
        from flashlight.lib.text.decoder.kenlm import KenLM
        from flashlight.lib.text.dictionary import Dictionary

        path = self.scorer_path
        if " " not in self.alphabet.labels:
            raise UserError(f"scorer_path: the alphabet {self.alphabet.source} has no space label, which a "
                            "word-level scorer needs to end words")
        found = scorer.load(path, self.alphabet)
        if self.lm_alpha is None:
            self.lm_alpha = found.default_alpha
        if self.lm_beta is None:
            self.lm_beta = found.default_beta
        if self.alphabet.bytes_output_mode:  # a character-based scorer: DeepSpeech's own search
            from dsflow.utf8_search import Utf8Search

            self._utf8 = Utf8Search(path, found.words, self.alphabet, self.lm_alpha, self.lm_beta)
            return
        self.words = ["<unk>"] + found.words
        try:
            self._lm = KenLM(str(path), Dictionary(self.words))
        except RuntimeError as e:
            raise UserError(f"scorer_path: {path} is not a KenLM model that loads ({e})") from None
        space, blank = self.alphabet.labels.index(" "), self.alphabet.blank_index
        trie = Trie(blank + 1, space)
        start = self._lm.start(False)
        unknown_score, unknown = self._lm.score(start, 0)[1], 0
        for i, w in enumerate(found.words, start=1):
            score = self._lm.score(start, i)[1]
            if score == unknown_score:  # a word the LM does not know: DeepSpeech scores it -1000, never chosen
                unknown += 1
                continue
            trie.insert(self.alphabet.encode(w) + [space], i, score)
        if unknown > len(found.words) / 2:
            why = (f"the package was built for another alphabet than {self.alphabet.source} (its labels are "
                   "alphabet indices)" if found.kind == "package" else "is it the word list of this model?")
            raise UserError(f"scorer_path: {path}: {unknown} of the {len(found.words)} words of its vocabulary "
                            f"are unknown to its language model; {why}")
        if unknown:
            log.warning("scorer_path: %s: %d of its %d words are unknown to its language model and cannot be "
                        "output (DeepSpeech scored them -1000)", path, unknown, len(found.words))
        trie.smear(getattr(SmearingMode, self.smearing.upper()))
        self._trie = trie  # the decoder keeps a reference, but keep ours too
        self._space = space

    def set_alpha_beta(self, lm_alpha: float, lm_beta: float) -> None:
        """Decode with these weights from now on (the scorer and its trie stay loaded)."""
        from flashlight.lib.text.decoder import CriterionType, LexiconDecoder, LexiconDecoderOptions

        if not self.scorer_path:
            raise ValueError("set_alpha_beta needs a scorer")
        self.lm_alpha, self.lm_beta = float(lm_alpha), float(lm_beta)
        if self._utf8 is not None:
            self._utf8.lm_alpha, self._utf8.lm_beta = self.lm_alpha, self.lm_beta
            return
        options = LexiconDecoderOptions(
            beam_size=self.beam_width, beam_size_token=self.cutoff_top_n, beam_threshold=self.beam_threshold,
            lm_weight=self.lm_alpha * math.log(10), word_score=self.lm_beta, unk_score=float("-inf"),
            sil_score=0.0, log_add=True, criterion_type=CriterionType.CTC)
        self._decoder = LexiconDecoder(options, self._trie, self._lm, self._space, self.alphabet.blank_index, 0, [],
                                       False)

    def emissions(self, probs) -> np.ndarray:
        """Natural-log probabilities after DeepSpeech's cutoff_prob pruning, plus the closing space frame."""
        probs = np.asarray(probs, dtype=np.float32)
        if probs.ndim != 2 or probs.shape[1] != self.alphabet.blank_index + 1:
            raise ValueError(f"probabilities of shape {probs.shape}: expected [T, {self.alphabet.blank_index + 1}]")
        logp = np.log(np.maximum(probs, _FLOOR))
        if self.cutoff_prob < 1.0 or self.cutoff_top_n < probs.shape[1]:
            # DeepSpeech's get_pruned_log_probs: per frame the most likely characters (the blank is one of
            # them) until their probabilities sum to cutoff_prob, at most cutoff_top_n
            order = np.argsort(-probs, axis=1, kind="stable")
            sorted_p = np.take_along_axis(probs, order, axis=1)
            keep_sorted = np.cumsum(sorted_p, axis=1) - sorted_p < self.cutoff_prob
            keep_sorted[:, self.cutoff_top_n:] = False
            keep = np.empty_like(keep_sorted)
            np.put_along_axis(keep, order, keep_sorted, axis=1)
            logp = np.where(keep, logp, _EXCLUDED)
        end = np.full((1, probs.shape[1]), _EXCLUDED, np.float32)
        end[0, self._space] = 0.0
        return np.ascontiguousarray(np.concatenate([logp, end]), dtype=np.float32)

    def decode(self, probs) -> str:
        """One utterance: probabilities [T, C] (only its real frames) -> transcript."""
        if self._utf8 is not None:
            return self._utf8.decode(probs, self.beam_width, self.cutoff_prob, self.cutoff_top_n, self.beam_threshold)
        if self._decoder is None:
            return greedy(probs, len(probs), self.alphabet)
        e = self.emissions(probs)
        results = self._decoder.decode(e.ctypes.data, e.shape[0], e.shape[1])
        if not results:
            return ""
        return " ".join(self.words[i] for i in self._best_without_end(results))

    def _best_without_end(self, results) -> list[int]:
        """The words of the final hypothesis that is best without the end-of-sentence term flashlight's decodeEnd
        adds to each (lm_weight * log10 P(</s> | its last words)), which DeepSpeech's decoder does not score."""
        states, lm_weight = {(): self._lm.start(False)}, self.lm_alpha * math.log(10)

        def state(words: tuple):  # the LM state after `words` (hypotheses share their beginnings)
            if words not in states:
                states[words] = self._lm.score(state(words[:-1]), words[-1])[0]
            return states[words]

        best, best_score = [], -math.inf
        for r in results:  # in flashlight's order: the first of equal scores wins
            words = tuple(i for i in r.words if i >= 0)
            score = r.score - lm_weight * self._lm.finish(state(words))[1]
            if score > best_score:
                best, best_score = list(words), score
        return best

    def decode_batch(self, probs_list, threads: int = 1) -> list[str]:
        """Several utterances, each [T_i, C], decoded in `threads` processes; results in input order."""
        probs_list = list(probs_list)
        threads = max(1, min(threads, len(probs_list), len(os.sched_getaffinity(0))))
        if not self.scorer_path or threads == 1:
            return [self.decode(p) for p in probs_list]
        # Processes, not threads: the C++ search holds the GIL. "spawn" because the caller may run TensorFlow.
        with ProcessPoolExecutor(threads, mp_context=get_context("spawn"), initializer=_init_worker,
                                 initargs=(self.alphabet, self.args)) as pool:
            chunk = max(1, len(probs_list) // (threads * 4))
            return list(pool.map(_decode_in_worker, probs_list, chunksize=chunk))


_worker: Decoder | None = None


def _init_worker(alphabet, args) -> None:
    global _worker
    _worker = Decoder(alphabet, **args)


def _decode_in_worker(probs) -> str:
    return _worker.decode(probs)
