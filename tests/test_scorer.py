"""DeepSpeech's .scorer packages (dsflow.scorer, dsflow.openfst): byte-identical to generate_scorer_package,
DeepSpeech's own packages read, every KenLM binary type's end found, packages built by `dsflow build-lm`
decoded with, and bad packages named. The runtimes' view of a package: tests/test_scorer_runtime.py."""

import hashlib
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from dsflow import UserError, openfst, scorer
from dsflow import config as dscfg
from dsflow import flags
from dsflow.alphabet import Alphabet
from dsflow.cli import main
from tests.conftest import DATA, LDC, ROOT

ALPHABET = Alphabet.from_file(DATA / "alphabet.txt")
DS = Path(__file__).parent / "data" / "deepspeech"  # files of DeepSpeech v0.9.3's data/smoke_test (MPL-2.0)
HAVE_KENLM = all((Path(sys.executable).parent / t).is_file() or shutil.which(t) for t in ("lmplz", "build_binary"))
needs_kenlm = pytest.mark.skipif(not HAVE_KENLM, reason="KenLM's lmplz/build_binary not built (scripts/setup.sh)")

# DeepSpeech's data/smoke_test/pruned_lm.scorer (439,040 bytes, made by generate_scorer_package from
# vocab.pruned.txt with data/alphabet.txt, --default_alpha 0.75 --default_beta 1.85): its KenLM data ends at
# 266,112; what follows (package header + vocabulary trie, 172,928 bytes) has this SHA-256.
PRUNED_LM_END = 266112
PRUNED_LM_TAIL_SHA256 = "3045964a38fb728d41364a7cee453417a520a011c7ef9bf99129ec715a0bf5d0"


def test_the_package_tail_is_byte_identical_to_generate_scorer_package():
    words = (DS / "vocab.pruned.txt").read_text().split()
    trie = openfst.minimal_acceptor(scorer.encode_words(sorted(set(words)), ALPHABET))
    # generate_scorer_package parses the defaults as C floats and stores them as doubles
    header = scorer.PACKAGE_HEADER.pack(b"EIRT", 6, 0, float(np.float32(0.75)), float(np.float32(1.85)))
    tail = header + openfst.write(trie, PRUNED_LM_END + len(header))
    assert len(tail) == 172928
    assert hashlib.sha256(tail).hexdigest() == PRUNED_LM_TAIL_SHA256
    assert (trie.num_states, len(trie.labels)) == (3451, 6488)  # a minimized trie: 3,540 words, 27,663 bytes
    back, end = openfst.read(tail, len(header), PRUNED_LM_END)
    assert end == len(tail)
    spelled = sorted("".join(ALPHABET.labels[x - 1] for x in path[:-1]) for path in back.paths())
    assert spelled == sorted(set(words))


def test_deepspeech_bytes_mode_package_is_read_and_refused():
    path = DS / "pruned_lm.bytes.scorer"  # order 2, plain trie (KenLM type 2), UTF-8 mode
    assert scorer.kenlm_end(path) == 3056
    package = scorer.read_package(path)
    assert package.utf8 and package.lm_end == 3056
    assert (package.default_alpha, package.default_beta) == (float(np.float32(scorer.LM_ALPHA)),
                                                             float(np.float32(scorer.LM_BETA)))
    paths = list(package.trie.paths())
    assert len(paths) == 27 and all(len(p) == 1 for p in paths)  # its vocabulary: single bytes
    assert bytes(p[0] for p in paths) == b"'abcdefghijklmnopqrstuvwxyz"
    rebuilt = openfst.write(openfst.minimal_acceptor(paths), 3056 + 25)  # a final state with arcs, top-sorted
    assert rebuilt == path.read_bytes()[3056 + 25:]
    with pytest.raises(UserError, match=r"pruned_lm.bytes.scorer: a bytes output mode \(UTF-8\) scorer"):
        scorer.load(path, ALPHABET)


def test_const_fst_round_trip_at_any_alignment():
    rng = np.random.default_rng(1)
    words = {tuple(rng.integers(1, 6, rng.integers(1, 7)).tolist()) for _ in range(200)}
    fst = openfst.minimal_acceptor(words)
    assert sorted(map(tuple, fst.paths())) == sorted(words)
    for offset in range(16):
        data = b"x" * offset + openfst.write(fst, offset)
        back, end = openfst.read(data, offset)
        assert end == len(data)
        assert back.start == fst.start and np.array_equal(back.final, fst.final)
        assert np.array_equal(back.labels, fst.labels) and np.array_equal(back.nexts, fst.nexts)
        with pytest.raises(openfst.FstError, match="ends early"):
            openfst.read(data[:-1], offset)


def test_minimal_acceptor_merges_suffixes_and_knows_a_string():
    fst = openfst.minimal_acceptor([(1, 3), (2, 3)])  # "a " and "b ": the space state and the final are shared
    assert fst.num_states == 3 and len(fst.labels) == 3
    assert openfst.properties(fst) & openfst.NOT_STRING
    one = openfst.minimal_acceptor([(4, 2, 1)])
    assert one.num_states == 4 and openfst.properties(one) & openfst.STRING
    assert openfst.properties(one) & openfst.TOP_SORTED


def lm_tool(name):
    local = Path(sys.executable).parent / name
    return str(local) if local.is_file() else shutil.which(name)


@needs_kenlm
def test_kenlm_end_of_search_data_for_every_binary_type(tmp_path):
    import subprocess

    text = tmp_path / "text.txt"
    shutil.copyfile(LDC / "vocab.txt", text)
    types = set()
    for order in (1, 2, 3):
        subprocess.run([lm_tool("lmplz"), "--order", str(order), "--discount_fallback", "-S", "10%", "-T",
                        str(tmp_path), "--text", str(text), "--arpa", str(tmp_path / f"{order}.arpa")], check=True,
                       capture_output=True)
    arpa = tmp_path / "3.arpa"
    rest = ["-r", f"{tmp_path / '1.arpa'} {tmp_path / '2.arpa'}", "probing"]  # KenLM type 1, rest costs
    for args in (["probing"], ["-p", "3.7", "probing"], rest, ["trie"], ["-q", "8", "trie"], ["-a", "3", "trie"],
                 ["-a", "255", "-q", "8", "trie"], ["-q", "5", "-b", "3", "-a", "255", "trie"]):
        for no_vocab in (True, False):
            out = tmp_path / "lm.binary"
            subprocess.run([lm_tool("build_binary")] + (["-v"] if no_vocab else []) + args + [str(arpa), str(out)],
                           check=True, capture_output=True)
            size = out.stat().st_size
            end = scorer.kenlm_end(out)
            types.add(scorer.KENLM_PARAMS.unpack_from(out.read_bytes(), len(scorer.KENLM_SANITY))[2])
            assert end == size if no_vocab else end < size, args  # without -v the vocabulary strings follow
    assert types == set(range(6))  # every model type KenLM has


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """`dsflow build-lm --package` from DeepSpeech's smoke-test vocab.txt."""
    if not HAVE_KENLM:
        pytest.skip("KenLM's lmplz/build_binary not built (scripts/setup.sh)")
    out = tmp_path_factory.mktemp("lm")
    assert main(["--log", str(out / "log"), "build-lm", "--text", str(LDC / "vocab.txt"), "--alphabet_config_path",
                 str(DATA / "alphabet.txt"), "--output", str(out / "lm.binary"), "--package", str(out / "lm.scorer"),
                 "--default_alpha", "0.5", "--default_beta", "2.25"]) == 0
    return out / "lm.scorer"


@needs_kenlm
def test_build_lm_writes_a_package_that_loads_with_its_defaults(package):
    binary = package.with_name("lm.binary")
    data = package.read_bytes()
    assert data.startswith(binary.read_bytes()) and data[binary.stat().st_size:][:4] == b"EIRT"
    found = scorer.load(package, ALPHABET)
    assert found.kind == "package" and (found.default_alpha, found.default_beta) == (0.5, 2.25)
    assert found.words == sorted(set((LDC / "vocab.txt").read_text().split()))
    assert "wrote the scorer package" in (package.parent / "log").read_text()
    from dsflow.decode import Decoder

    d = Decoder(ALPHABET, 16, package)
    assert (d.lm_alpha, d.lm_beta) == (0.5, 2.25)
    assert (Decoder(ALPHABET, 16, package, 1.5, 0.0).lm_alpha, Decoder(ALPHABET, 16, binary).lm_alpha) == \
        (1.5, scorer.LM_ALPHA)  # explicit weights win; a plain KenLM model has DeepSpeech's defaults
    # the same search with the package as with the binary + its word list
    probs = spelled("she had yur dark suit")
    assert Decoder(ALPHABET, 64, package, 1.0, 1.0).decode(probs) == "she had your dark suit"
    assert Decoder(ALPHABET, 64, binary, 1.0, 1.0).decode(probs) == "she had your dark suit"


def spelled(text: str) -> np.ndarray:
    """Probabilities [T, C]: each character of `text` at 0.6 (its neighbours in the alphabet 0.1 each),
    a blank frame between characters."""
    out = []
    for c in text:
        frame = np.full(ALPHABET.blank_index + 1, 1e-4, np.float32)
        i = ALPHABET.encode(c)[0]
        frame[i] = 0.6
        frame[(i + 1) % len(ALPHABET)] = frame[i - 1] = 0.1
        out += [frame / frame.sum(), np.eye(ALPHABET.blank_index + 1, dtype=np.float32)[-1] * 0.9 + 0.1 / 29]
    return np.array(out)


@needs_kenlm
def test_bad_packages_are_named_with_the_reason(package, tmp_path):
    data = package.read_bytes()
    end = scorer.kenlm_end(package)
    bad = tmp_path / "old.scorer"
    bad.write_bytes(data[:end] + struct.pack("<4si", b"EIRT", 5) + data[end + 8:])
    with pytest.raises(UserError, match=r"old.scorer: scorer package version 5, DeepSpeech 0.9.3 reads version 6"):
        scorer.load(bad, ALPHABET)
    for kept, why in ((data[:-100], r"bad vocabulary trie: the FST ends early"),
                      (data[:end + 10], r"truncated: the package header is incomplete"),
                      (data[:1000], r"truncated: the file ends inside the language model's data"),
                      (data[:end - 1], rf"truncated: the language model needs {end} bytes, the file has {end - 1}")):
        bad.write_bytes(kept)
        with pytest.raises(UserError, match=f"old.scorer: {why}"):
            scorer.load(bad, ALPHABET)
    small = Alphabet([" "] + list("abcdefghijklm"), "small.txt")  # the trie's labels go up to "z"
    with pytest.raises(UserError, match=r"lm.scorer: its vocabulary does not fit the alphabet: label \d+ is not in "
                                        r"the alphabet small.txt \(14 labels\)"):
        scorer.load(package, small)
    from dsflow.decode import Decoder

    shuffled = Alphabet([" "] + list("zyxwvutsrqponmlkjihgfedcba'"), "shuffled.txt")  # same size, other order
    with pytest.raises(UserError, match=r"words of its vocabulary are unknown to its language model; the "
                                        r"package was built for another alphabet than shuffled.txt"):
        Decoder(shuffled, 8, package)


@needs_kenlm
def test_config_check_loads_a_package(package, tmp_path):
    config = flags.defaults()
    config.update(train_files="data/ldc93s1/ldc93s1.csv", scorer_path=str(package))
    assert dscfg.check(config, base=ROOT) == []
    broken = tmp_path / "broken.scorer"
    broken.write_bytes(package.read_bytes()[:-50])
    config.update(scorer_path=str(broken))
    assert any("broken.scorer: bad vocabulary trie: the FST ends early" in e for e in dscfg.check(config, base=ROOT))


@needs_kenlm
def test_scorer_set_defaults_rewrites_only_the_header(package, tmp_path):
    copy = tmp_path / "tuned.scorer"
    shutil.copyfile(package, copy)
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"lm_alpha": 0.123, "lm_beta": 4.5}))
    assert main(["scorer-set-defaults", str(copy), "--from_json", str(best)]) == 0
    found = scorer.load(copy, ALPHABET)
    assert (found.default_alpha, found.default_beta) == (0.123, 4.5)
    old, new = package.read_bytes(), copy.read_bytes()
    end = scorer.kenlm_end(package)
    assert len(old) == len(new) and old[:end + 9] == new[:end + 9] and old[end + 25:] == new[end + 25:]
    assert not list(tmp_path.glob(".*.part"))
    assert main(["scorer-set-defaults", str(copy), "--default_alpha", "1", "--default_beta", "2", "--output",
                 str(tmp_path / "other.scorer")]) == 0
    assert scorer.load(tmp_path / "other.scorer", ALPHABET).default_alpha == 1.0
    assert main(["scorer-set-defaults", str(package.with_name("lm.binary")), "--default_alpha", "1",
                 "--default_beta", "2"]) == 2  # not a package: UserError


@needs_kenlm
def test_scorer_package_command_is_generate_scorer_package(package, tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("she had your\ndark suit <unk> ÉCOLE zzz\n")  # <unk> and words outside the alphabet left out
    out = tmp_path / "small.scorer"
    log = tmp_path / "log"
    assert main(["--log", str(log), "scorer-package", "--alphabet", str(DATA / "alphabet.txt"), "--lm",
                 str(package.with_name("lm.binary")), "--vocab", str(vocab), "--package", str(out),
                 "--default_alpha", "0.75", "--default_beta", "1.85"]) == 0
    assert scorer.load(out, ALPHABET).words == ["dark", "had", "she", "suit", "your", "zzz"]
    from dsflow.decode import Decoder

    # "zzz" is not in the language model: DeepSpeech scored it -1000, so it never comes out
    assert Decoder(ALPHABET, 16, out, 1.0, 1.0).decode(spelled("she zzz")) == "she"
    assert "1 of its 6 words are unknown to its language model" in log.read_text()
    assert main(["scorer-package", "--alphabet", str(DATA / "alphabet.txt"), "--lm", str(package), "--vocab",
                 str(vocab), "--package", str(tmp_path / "again.scorer"), "--default_alpha", "1",
                 "--default_beta", "1"]) == 2  # a package is not a bare LM
