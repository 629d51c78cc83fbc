"""DeepSpeech 0.9.3's CTC prefix beam search with a bytes output mode (UTF-8) scorer, for bytes_output_mode models.

Owns that search (dsflow.decode.Decoder runs it when the alphabet is the UTF8Alphabet and a scorer is given).
flashlight's LexiconDecoder, which dsflow uses for alphabet models, needs a token that ends each word (the space);
a UTF-8 scorer's "words" are characters that end with their last byte, and there the lexicon decoder cannot let
that byte repeat over frames. So this is a port of ds_ctcdecoder's algorithm (ctc_beam_search_decoder.cpp,
path_trie.cpp, scorer.cpp in utf8 mode), per frame:
  - the labels DeepSpeech's get_pruned_log_probs keeps (cutoff_prob, cutoff_top_n);
  - the prefixes sorted by score, min_cutoff = worst kept score + ln P(blank) - max(0, beta); once the beam is
    full a label stops at the first prefix with ln P(label) + score < min_cutoff;
  - blank: b += P; the same label: nb += P * nb_prev; a new label extends the prefix only where the vocabulary
    trie allows the byte (so only the vocabulary's characters are output, never a space), with
    ln P(label) + (b_prev if it repeats the last label else score), plus, when the byte completes a character,
    lm_alpha * ln P(character | previous characters) + lm_beta (KenLM; a character it does not know: -1000);
  - all prefixes move on (cur -> prev), the best beam_width are kept (score, then label, descending / ascending).
At the end a prefix that stops inside a character gets lm_alpha * -1000 + lm_beta, the empty one lm_beta (as
DeepSpeech's decode() scored them); the best prefix's bytes are the text. Differences: prefixes more than
`beam_threshold` (dsflow's key, as for the lexicon decoder) behind the best are dropped after each frame
(DeepSpeech kept beam_width of them; beam_threshold inf does too); a node's LM term is computed once and kept
(DeepSpeech recomputed the same value); characters of the vocabulary that the LM does not know are left out of
it (DeepSpeech scored them -1000). It runs in Python: on the 2.6 s test utterance of tests/test_bytes_mode.py,
beam 1024, about 0.5 s per second of audio with beam_threshold 15 and 3 s without (one core, busy machine).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dsflow import UserError

OOV_SCORE = -1000.0  # DeepSpeech's score of an n-gram with a word the LM does not know (natural log)
LN10 = math.log(10)  # KenLM scores are log10; DeepSpeech converted them to ln
NEG_INF = -math.inf


def _lse(a: float, b: float) -> float:
    """log(exp(a) + exp(b)), DeepSpeech's log_sum_exp."""
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


def _needed(lead: int) -> int:
    """Bytes of the character that starts with the byte `lead` (0: not a lead byte)."""
    return 1 if lead < 0x80 else 2 if lead >> 5 == 0x6 else 3 if lead >> 4 == 0xE else 4 if lead >> 3 == 0x1E else 0


class _Node:
    """A prefix (DeepSpeech's PathTrie node): its last label, the bytes of its unfinished character, its
    probabilities and the LM state after its last whole character."""

    __slots__ = ("label", "parent", "children", "b_prev", "nb_prev", "b_cur", "nb_cur", "score", "exists",
                 "partial", "lm_state", "lm_term")

    def __init__(self, label: int, parent, partial: bytes, lm_state, lm_term: float):
        self.label, self.parent, self.children = label, parent, {}
        self.b_prev = self.nb_prev = self.b_cur = self.nb_cur = self.score = NEG_INF
        self.exists = True
        self.partial, self.lm_state, self.lm_term = partial, lm_state, lm_term

    def remove(self) -> None:
        """DeepSpeech's PathTrie::remove: gone from the beam; freed with its parents once nothing hangs on it."""
        self.exists = False
        node = self
        while not node.children and not node.exists and node.parent is not None:
            del node.parent.children[node.label]
            node = node.parent

    def labels(self) -> list[int]:
        out, node = [], self
        while node.parent is not None:
            out.append(node.label)
            node = node.parent
        return out[::-1]


class Utf8Search:
    """The search over one scorer: `decode(probs)` -> text; lm_alpha / lm_beta may change between calls."""

    def __init__(self, scorer_path: str | Path, words: list[str], alphabet, lm_alpha: float, lm_beta: float):
        from flashlight.lib.text.decoder.kenlm import KenLM
        from flashlight.lib.text.dictionary import Dictionary

        self.alphabet, self.lm_alpha, self.lm_beta = alphabet, lm_alpha, lm_beta
        self.blank = alphabet.blank_index
        try:
            self.lm = KenLM(str(scorer_path), Dictionary(["<unk>"] + words))
        except RuntimeError as e:
            raise UserError(f"scorer_path: {scorer_path} is not a KenLM model that loads ({e})") from None
        start = self.lm.start(False)
        unknown = self.lm.score(start, 0)[1]
        # the vocabulary trie (DeepSpeech's dictionary FST): the byte prefixes of its characters
        self.index = {w.encode("utf-8"): i for i, w in enumerate(words, start=1)
                      if self.lm.score(start, i)[1] != unknown}
        if not self.index:
            raise UserError(f"scorer_path: {scorer_path}: none of its characters is known to its language model")
        self.prefixes = {w[:n] for w in self.index for n in range(1, len(w) + 1)}
        self.next_labels: dict[bytes, list[int]] = {}  # partial character -> the labels that may follow it
        for p in sorted(self.prefixes):
            self.next_labels.setdefault(p[:-1], []).append(p[-1] - 1)

    def _child(self, node: _Node, label: int) -> _Node | None:
        """PathTrie::get_path_trie: the prefix extended by `label`, None where the vocabulary forbids it."""
        child = node.children.get(label)
        if child is not None:
            if not child.exists:
                child.exists = True
                child.b_prev = child.nb_prev = child.b_cur = child.nb_cur = NEG_INF
            return child
        partial = node.partial + bytes([label + 1])
        if partial not in self.prefixes:
            return None
        lm_state, lm_term = node.lm_state, 0.0
        if len(partial) == _needed(partial[0]):  # a whole character: score it, start the next one
            lm_state, log10 = self.lm.score(node.lm_state, self.index[partial])
            lm_term, partial = self.lm_alpha * log10 * LN10 + self.lm_beta, b""
        child = _Node(label, node, partial, lm_state, lm_term)
        node.children[label] = child
        return child

    def _pruned(self, probs: np.ndarray, cutoff_prob: float, cutoff_top_n: int) -> list[float]:
        """DeepSpeech's get_pruned_log_probs for one frame: ln(p + FLT_MIN) of the labels it keeps, -inf for the
        others."""
        keep = np.arange(len(probs))
        if cutoff_prob < 1.0 or cutoff_top_n < len(probs):
            keep = np.argsort(-probs, kind="stable")
            n = cutoff_top_n
            if cutoff_prob < 1.0:
                cum = np.cumsum(probs[keep].astype(np.float64))
                n = min(int(np.searchsorted(cum, cutoff_prob)) + 1, cutoff_top_n)
            keep = keep[:n]
        logs = np.full(len(probs), NEG_INF)
        logs[keep] = np.log(probs[keep].astype(np.float64) + np.finfo(np.float32).tiny)
        return logs.tolist()

    def decode(self, probs, beam_width: int = 1024, cutoff_prob: float = 1.0, cutoff_top_n: int = 300,
               beam_threshold: float = math.inf) -> str:
        """One utterance's probabilities [T, 256] -> the text of the best prefix. Prefixes more than
        `beam_threshold` behind the best are dropped after each frame (dsflow's beam_threshold; DeepSpeech: inf)."""
        probs = np.asarray(probs, dtype=np.float32)
        root = _Node(-1, None, b"", self.lm.start(False), 0.0)
        root.score = root.b_prev = 0.0
        beam = [root]
        for frame in probs:
            beam.sort(key=lambda p: (-p.score, p.label))
            kept = beam[:beam_width]
            full = len(kept) == beam_width
            blank = float(frame[self.blank])
            min_cutoff = kept[-1].score + (math.log(blank) if blank > 0 else NEG_INF) - max(0.0, self.lm_beta)
            logs = self._pruned(frame, cutoff_prob, cutoff_top_n)
            # DeepSpeech loops over labels, then over the sorted prefixes until ln P(label) + score < min_cutoff.
            # Here the prefixes are the outer loop and each tries only the labels that can change something (the
            # blank, its own last label, the bytes its vocabulary state allows): every node receives the same
            # terms in the same order, so the sums are the same.
            for prefix in kept:
                if prefix.score == NEG_INF:
                    continue
                floor = min_cutoff - prefix.score if full else NEG_INF
                logp = logs[self.blank]
                if logp > NEG_INF and logp >= floor:
                    prefix.b_cur = _lse(prefix.b_cur, logp + prefix.score)
                labels = self.next_labels.get(prefix.partial, ())
                if prefix.label >= 0 and prefix.label not in labels:
                    labels = (prefix.label, *labels)
                for label in labels:
                    logp = logs[label]
                    if logp == NEG_INF or logp < floor:
                        continue
                    if label == prefix.label:
                        prefix.nb_cur = _lse(prefix.nb_cur, logp + prefix.nb_prev)
                    child = self._child(prefix, label)
                    if child is None:
                        continue
                    if label != prefix.label:
                        log_p = logp + prefix.score
                    elif prefix.b_prev > NEG_INF:
                        log_p = logp + prefix.b_prev
                    else:
                        continue
                    child.nb_cur = _lse(child.nb_cur, log_p + child.lm_term)
            beam = []
            stack = [root]  # PathTrie::iterate_to_vec: every prefix that exists moves on
            while stack:
                node = stack.pop()
                stack.extend(node.children.values())
                if node.exists:
                    node.b_prev, node.nb_prev = node.b_cur, node.nb_cur
                    node.b_cur = node.nb_cur = NEG_INF
                    node.score = _lse(node.b_prev, node.nb_prev)
                    beam.append(node)
            beam.sort(key=lambda p: (-p.score, p.label))
            keep, cut = min(beam_width, len(beam)), beam[0].score - beam_threshold
            while keep > 1 and beam[keep - 1].score < cut:
                keep -= 1
            for node in beam[keep:]:
                node.remove()
            beam = beam[:keep]
        best = max(beam, key=lambda p: (self._final_score(p), -p.label))
        return self.alphabet.decode(best.labels())

    def _final_score(self, node: _Node) -> float:
        """DecoderState::decode: the prefix's score, plus the LM's word for one that stops inside a character
        (an unknown n-gram) or is empty."""
        if node.parent is None:
            return node.score + self.lm_beta  # no n-gram: ln P = 0
        if node.partial:
            return node.score + self.lm_alpha * OOV_SCORE + self.lm_beta
        return node.score
