"""`dsflow build-lm`: a KenLM n-gram language model (the decoder's scorer) from text, as DeepSpeech's
data/lm/generate_lm.py did with KenLM's own tools.

Input: text files (one sentence per line) and/or DeepSpeech CSVs (their `transcript` column). Each line is
NFKC-normalized, its whitespace collapsed; empty lines are skipped; a line with characters outside the alphabet
is an error naming the file, the line and the characters. Then KenLM's `lmplz` (ARPA; `--discount_fallback` so
that small corpora work) and `build_binary` (DeepSpeech's `trie -a 255 -q 8`) make `--output`, and the
vocabulary goes to `<output>.words` (one word per line), which the decoder needs next to a binary model.
With `--package`, also DeepSpeech's `.scorer` package (generate_scorer_package: that binary, the default
alpha/beta and the vocabulary trie in one file; dsflow.scorer writes it), which DeepSpeech's and Coqui STT's
clients load too.
With `--bytes_output_mode true`, DeepSpeech's character-based scorer for a bytes output mode model: the text is
rewritten as its characters with a space between every two (its own spaces dropped, as DeepSpeech's
documentation builds it: KenLM splits words at whitespace, so the model knows no space), each character is a
"word", and the package is a bytes output mode (UTF-8) one.
`lmplz` and `build_binary` are looked up next to the Python interpreter (scripts/setup.sh builds them into
.venv/bin), then on PATH.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import unicodedata
from collections import Counter
from pathlib import Path

from dsflow import UserError, csvfile, flags, scorer
from dsflow.alphabet import Alphabet, AlphabetError, from_config
from dsflow.atomic import atomic_path, write_text
from dsflow.log import SHOW, log


def add_parser(sub) -> None:
    p = sub.add_parser("build-lm", help="build a KenLM language model (scorer) from text or CSV transcripts",
                       description=__doc__)
    a = p.add_argument
    a("--text", required=True, help="comma-separated text files (a sentence per line) or CSVs (transcript column)")
    flags.add_option(p, "alphabet_config_path", required=True,
                     help="the model's alphabet; every character must be in it")
    a("--output", required=True, help="the KenLM binary model to write (and <output>.words)")
    a("--arpa", help="also keep the ARPA model here")
    flags.add_options(p, "build-lm")
    a("--prune", default="0 0 1", help="lmplz --prune thresholds per order (DeepSpeech: 0 0 1)")
    a("--memory", default="10%", help="lmplz -S: memory for sorting (KenLM's default of 80%% is too greedy)")
    a("--package", help="also write DeepSpeech's .scorer package here (the binary + vocabulary trie + defaults)")
    a("--default_alpha", type=float, default=scorer.LM_ALPHA, help="the package's default lm_alpha (DeepSpeech's)")
    a("--default_beta", type=float, default=scorer.LM_BETA, help="the package's default lm_beta (DeepSpeech's)")
    p.set_defaults(func=_main)


def _main(args) -> int:
    build(args.text.split(","), args.alphabet_config_path, args.output, args.lm_order, args.prune, args.memory,
          args.arpa, args.package, args.default_alpha, args.default_beta, args.bytes_output_mode)
    return 0


def tool(name: str) -> str:
    """A KenLM program: next to this Python (the venv's bin), else on PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise UserError(f"KenLM's {name} was not found next to {sys.executable} or on PATH; "
                        "run scripts/setup.sh (it builds lmplz and build_binary into .venv/bin)")
    return found


def read_sentences(paths: list[str], alphabet: Alphabet) -> list[str]:
    """The normalized sentences of every input file; UserError naming each bad line (up to 20)."""
    sentences, errors = [], []
    for path in [p.strip() for p in paths if p.strip()]:
        if not Path(path).is_file():
            raise UserError(f"{path}: text file does not exist")
        try:
            if path.endswith(".csv"):
                lines = [(f"row {row}", t) for _, row, t in csvfile.transcripts([path])]
            else:
                text = Path(path).read_text(encoding="utf-8")
                lines = [(f"line {i}", t) for i, t in enumerate(text.splitlines(), start=1)]
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text ({e})") from None
        for where, line in lines:
            line = " ".join(unicodedata.normalize("NFKC", line).split())
            if not line:
                continue
            missing = alphabet.missing(line.replace(" ", ""))
            if missing:
                errors.append(f"{path}: {where}: characters not in the alphabet {missing}: {line[:80]!r}")
            sentences.append(line)
    if errors:
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise UserError(f"{len(errors)} lines of the language model's text cannot be spelled with the alphabet "
                        f"{alphabet.source}:\n  " + "\n  ".join(errors[:20]) + more)
    if not sentences:
        raise UserError(f"no text in {', '.join(paths)}")
    return sentences


def build(paths: list[str], alphabet_path: str, output: str, order: int = 5, prune: str = "0 0 1",
          memory: str = "10%", arpa: str | None = None, package: str | None = None,
          default_alpha: float = scorer.LM_ALPHA, default_beta: float = scorer.LM_BETA,
          bytes_output_mode: bool = False) -> Path:
    try:
        alphabet = from_config(alphabet_path, bytes_output_mode)
    except AlphabetError as e:
        raise UserError(f"alphabet_config_path: {e}") from None
    if order < 1:
        raise UserError("--order must be >= 1")
    sentences = read_sentences(paths, alphabet)
    if alphabet.bytes_output_mode:  # DeepSpeech's character-based scorer: a "word" per character, no spaces
        sentences = [" ".join(s.replace(" ", "")) for s in sentences]
    words = Counter(w for s in sentences for w in s.split())
    log.info("language model text: %d sentences, %d words, %d distinct", len(sentences), sum(words.values()),
             len(words))
    prune_args = prune.split()[:order]
    lmplz, build_binary = tool("lmplz"), tool("build_binary")
    output = Path(output)
    with tempfile.TemporaryDirectory(prefix="dsflow-lm-") as tmp:
        text_file, arpa_file = Path(tmp) / "text.txt", Path(tmp) / "lm.arpa"
        text_file.write_text("\n".join(sentences) + "\n", encoding="utf-8")
        cmd = [lmplz, "--order", str(order), "--discount_fallback", "-S", memory, "-T", tmp, "--text",
               str(text_file), "--arpa", str(arpa_file)] + (["--prune", *prune_args] if prune_args else [])
        _run(cmd)
        if arpa:
            with atomic_path(arpa) as out:
                shutil.copyfile(arpa_file, out)
        write_text(f"{output}.words", "".join(w + "\n" for w in sorted(words)))
        with atomic_path(output) as out:
            _run([build_binary, "-a", "255", "-q", "8", "-v", "trie", str(arpa_file), str(out)])
    log.info("wrote %s (%d bytes) and %s.words", output, output.stat().st_size, output, extra=SHOW)
    if package:
        scorer.write_package(output, words, alphabet, package, default_alpha, default_beta)
        log.info("wrote the scorer package %s (%d bytes; default lm_alpha %r, lm_beta %r)", package,
                 Path(package).stat().st_size, default_alpha, default_beta, extra=SHOW)
    return output


def _run(cmd: list[str]) -> None:
    log.info("running %s", " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True)
    for line in (done.stdout + done.stderr).splitlines():
        if line.strip():
            log.info("  %s", line)
    if done.returncode != 0:
        raise UserError(f"{Path(cmd[0]).name} failed (exit {done.returncode}); its output is in the log above")
