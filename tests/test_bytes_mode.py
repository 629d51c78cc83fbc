"""bytes_output_mode: DeepSpeech's UTF8Alphabet (UTF-8 bytes as labels, 256 outputs) from the alphabet to the runtimes.

Unit tests of the alphabet, the features' labels, validation, scorer packages and DeepSpeech's utf8 beam search;
then one model end to end on a Greek sentence synthesized with espeak-ng: `dsflow validate`, `train` (n_hidden
100, learning rate 0.001, no dropout: the greedy transcript is exact after 400 epochs, measured; before that the
model outputs lone lead bytes, shown as U+FFFD), `evaluate`, `export`, `dsflow transcribe` (TFLite and SavedModel),
DeepSpeech 0.9.3's and Coqui STT 1.4's runtimes (they decode bytes mode from the serialized alphabet in the
metadata), a bytes output mode scorer from `dsflow build-lm` in dsflow's search and in both runtimes, `lm-optimize`
(CER), `export-checkpoint`. About 105 s in all on the 2-core machine (training 45 s).
"""

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dsflow import UserError, dataset, openfst, scorer, validate
from dsflow.alphabet import Alphabet, AlphabetError, UTF8Alphabet, from_config
from dsflow.cli import main
from dsflow.evaluate import sort_samples
from tests.conftest import DATA

BYTES = UTF8Alphabet()
DS = Path(__file__).parent / "data" / "deepspeech"  # files of DeepSpeech v0.9.3's data/smoke_test (MPL-2.0)
HAVE_KENLM = all((Path(sys.executable).parent / t).is_file() or shutil.which(t) for t in ("lmplz", "build_binary"))
needs_kenlm = pytest.mark.skipif(not HAVE_KENLM, reason="KenLM's lmplz/build_binary not built (scripts/setup.sh)")
GREEK = "καλημέρα κόσμε"  # "good morning, world": 14 characters, 27 UTF-8 bytes


# ---------------------------------------------------------------------------------------------- the alphabet

def test_utf8_alphabet_is_deepspeechs():
    assert len(BYTES) == 255 and BYTES.blank_index == 255 and BYTES.bytes_output_mode  # 256 outputs
    assert BYTES.encode("a") == [ord("a") - 1] and BYTES.encode(" ") == [31] and BYTES.labels.index(" ") == 31
    assert BYTES.encode("ё") == [0xD1 - 1, 0x91 - 1]  # two bytes, two labels
    assert BYTES.encode("€😀") == [b - 1 for b in "€😀".encode()] and len(BYTES.encode("€😀")) == 7
    for text in (GREEK, "съешь ещё этих мягких булок", "早上好", "naïve ’quotes’ 😀", "\x01\x7f"):
        assert BYTES.decode(BYTES.encode(text)) == text
        assert BYTES.can_encode(text) and BYTES.missing(text) == []
    assert not Alphabet.from_file(DATA / "alphabet.txt").bytes_output_mode


def test_only_nul_cannot_be_encoded():
    assert BYTES.missing("a\0b") == ["\0"] and not BYTES.can_encode("a\0")
    with pytest.raises(AlphabetError, match="NUL"):
        BYTES.encode("a\0")


def test_invalid_byte_sequences_decode_to_replacement_characters():
    """A model's output need not be UTF-8: each invalid part becomes U+FFFD; the raw bytes stay available."""
    labels = [b - 1 for b in b"\xd0\xb1\xd1"]  # 'б', then a lead byte without its continuation
    assert BYTES.decode_bytes(labels) == b"\xd0\xb1\xd1" and BYTES.decode(labels) == "б\ufffd"
    assert BYTES.decode([b - 1 for b in b"a\xffb\x91c"]) == "a\ufffdb\ufffdc"  # stray bytes
    assert BYTES.decode([b - 1 for b in b"\xe2\x82"]) == "\ufffd"  # a truncated 3-byte character
    assert BYTES.decode([]) == ""


def test_serialized_as_deepspeech_and_read_back_as_bytes_mode():
    raw = BYTES.serialize()
    assert raw[:2] == struct.pack("<H", 255) and len(raw) == 2 + 255 * 5
    assert raw[2:7] == struct.pack("<HH", 0, 1) + b"\x01" and raw[-5:] == struct.pack("<HH", 254, 1) + b"\xff"
    back = Alphabet.deserialize(raw)
    assert isinstance(back, UTF8Alphabet) and back.labels == BYTES.labels
    english = Alphabet.from_file(DATA / "alphabet.txt")
    assert type(Alphabet.deserialize(english.serialize())) is Alphabet
    with pytest.raises(AlphabetError, match="not UTF-8"):
        Alphabet.deserialize(struct.pack("<HHH", 1, 0, 1) + b"\xff")
    with pytest.raises(AlphabetError, match="not a serialized alphabet"):
        Alphabet.deserialize(struct.pack("<HHH", 2, 0, 1) + b"a")
    with pytest.raises(AlphabetError, match="no alphabet file"):
        BYTES.to_file_text()


def test_from_config_picks_the_alphabet(tmp_path):
    assert isinstance(from_config(tmp_path / "not-there.txt", True), UTF8Alphabet)  # the file is not read
    assert from_config(DATA / "alphabet.txt").labels[1] == "a"
    with pytest.raises(AlphabetError, match="does not exist"):
        from_config(tmp_path / "not-there.txt", False)


def test_feature_records_give_byte_labels():
    """The tf.data parse of a features record: UTF-8 bytes - 1 (the character alphabet: codepoint indices)."""
    tf = pytest.importorskip("tensorflow")
    record = dataset.example(np.zeros((3, 26), np.float32), "ёж a", "x.wav", 0.06)
    item = dataset._parse(BYTES)(tf.constant(record))
    assert item["labels"].numpy().tolist() == BYTES.encode("ёж a") and item["label_lengths"].numpy() == 6
    english = Alphabet.from_file(DATA / "alphabet.txt")
    record = dataset.example(np.zeros((3, 26), np.float32), "ab a", "x.wav", 0.06)
    assert dataset._parse(english)(tf.constant(record))["labels"].numpy().tolist() == english.encode("ab a")


def test_validation_counts_bytes_for_ctc_and_accepts_any_script():
    def problems(text, alphabet, frames):
        row = validate.Row("x.csv", 1, "x.wav", "x.wav", "0", text)
        validate.check_transcript(row, alphabet, frames)
        return [reason for reason, _ in row.problems]

    english = Alphabet.from_file(DATA / "alphabet.txt")
    assert problems("ёж", english, 10) == ["not_in_alphabet"]
    assert problems("ёж", BYTES, 4) == [] and problems("ёж", BYTES, 3) == ["transcript_too_long"]  # 4 labels
    assert problems("a\0", BYTES, 10) == ["not_in_alphabet"] and problems("", BYTES, 10) == ["empty_transcript"]


def test_report_sorted_by_cer_in_bytes_mode():
    samples = [{"wav_filename": n, "loss": loss, "wer": w, "cer": c}
               for n, loss, w, c in (("a", 1, 0.0, 0.5), ("b", 2, 1.0, 0.1), ("c", 3, 0.5, 0.1))]
    assert [s["wav_filename"] for s in sort_samples(samples, "cer")] == ["c", "b", "a"]
    assert [s["wav_filename"] for s in sort_samples(samples)] == ["a", "c", "b"]


# ---------------------------------------------------------------------------------------------- scorers

def test_deepspeechs_bytes_package_is_read_and_rebuilt_byte_identical():
    """DeepSpeech's data/smoke_test/pruned_lm.bytes.scorer (generate_scorer_package, UTF-8 mode): its vocabulary
    read with the UTF8Alphabet, and its header + trie rebuilt from that vocabulary are its bytes."""
    path = DS / "pruned_lm.bytes.scorer"
    found = scorer.load(path, BYTES)
    assert found.kind == "package" and "".join(found.words) == "'abcdefghijklmnopqrstuvwxyz"
    package = scorer.read_package(path)
    header = scorer.PACKAGE_HEADER.pack(scorer.PACKAGE_MAGIC, 6, True, package.default_alpha, package.default_beta)
    trie = openfst.minimal_acceptor(scorer.encode_words(found.words, BYTES))
    assert header + openfst.write(trie, package.lm_end + len(header)) == path.read_bytes()[package.lm_end:]
    with pytest.raises(UserError, match="bytes output mode"):
        scorer.load(path, Alphabet.from_file(DATA / "alphabet.txt"))


def test_config_check_wants_a_scorer_of_the_models_mode():
    from dsflow import config as dscfg

    config = {"scorer_path": str(DS / "pruned_lm.bytes.scorer"), "alphabet_config_path": str(DATA / "alphabet.txt"),
              "lm_alpha": None, "lm_beta": None, "bytes_output_mode": True}
    assert dscfg.check_scorer(config) == []
    (problem,) = dscfg.check_scorer({**config, "bytes_output_mode": False})
    assert "pruned_lm.bytes.scorer: a bytes output mode (UTF-8) scorer, for models trained with bytes_output_mode" \
        in problem


def _probs(frames: list[str | None]) -> np.ndarray:
    """Probabilities [T, 256]: 0.9 on a frame's byte label (None: the blank), the rest spread evenly."""
    out = np.full((len(frames), 256), 0.1 / 255, np.float32)
    for t, ch in enumerate(frames):
        out[t, 255 if ch is None else BYTES.encode(ch)[0]] = 0.9
    return out


def test_utf8_beam_search_with_deepspeechs_bytes_scorer():
    """Letters held over several frames (the last byte of a character repeated: what flashlight's lexicon search
    cannot do without a word-end token), only the vocabulary's characters, and no space: DeepSpeech's search."""
    from dsflow.decode import Decoder

    decoder = Decoder(BYTES, 64, DS / "pruned_lm.bytes.scorer")
    assert decoder.decode(_probs(["s", "s", None, "h", "h", "e", "e", None])) == "she"
    assert decoder.decode(_probs(["s", None, "h", " ", " ", "e", None])) == "she"  # no space in its vocabulary
    assert decoder.decode(_probs(["a", None, "7", None, "b"])) == "ab"  # nor a digit
    assert decoder.decode(_probs([None, None])) == ""
    greedy = Decoder(BYTES)  # without a scorer: greedy, spaces and all
    assert greedy.decode(_probs(["s", "s", None, "h", " ", "e"])) == "sh e"


def test_scorer_of_the_other_mode_or_with_words_is_refused(tmp_path):
    english = Alphabet.from_file(DATA / "alphabet.txt")
    (tmp_path / "lm.arpa").write_text("\\data\\\nngram 1=3\n\n\\1-grams:\n-1\t<s>\n-1\t</s>\n-1\tword\n\n\\end\\\n")
    with pytest.raises(UserError, match="character-based scorer .* e.g. \\['word'\\]"):
        scorer.load(tmp_path / "lm.arpa", BYTES)
    assert scorer.load(tmp_path / "lm.arpa", english).words == ["word"]


@needs_kenlm
def test_scorer_package_command_in_bytes_mode(tmp_path, capfd):
    from dsflow import lm

    (tmp_path / "text.txt").write_text("да нет\nнет да да\n", encoding="utf-8")
    lm.build([str(tmp_path / "text.txt")], "", str(tmp_path / "lm.binary"), order=2, bytes_output_mode=True)
    assert (tmp_path / "lm.binary.words").read_text(encoding="utf-8").split() == ["а", "д", "е", "н", "т"]
    (tmp_path / "vocab.txt").write_text("д а н е т", encoding="utf-8")
    assert main(["scorer-package", "--bytes_output_mode", "true", "--lm", str(tmp_path / "lm.binary"), "--vocab",
                 str(tmp_path / "vocab.txt"), "--package", str(tmp_path / "lm.scorer"), "--default_alpha", "0.5",
                 "--default_beta", "1"]) == 0
    package = scorer.read_package(tmp_path / "lm.scorer")
    assert package.utf8 and sorted(bytes(p) for p in package.trie.paths()) == sorted(
        c.encode() for c in "данет")  # each character's two bytes, no space label
    assert main(["scorer-package", "--lm", str(tmp_path / "lm.binary"), "--vocab", str(tmp_path / "vocab.txt"),
                 "--package", str(tmp_path / "x.scorer"), "--default_alpha", "0.5", "--default_beta", "1"]) == 2
    assert "give --alphabet, or --bytes_output_mode true" in capfd.readouterr().err
    assert not (tmp_path / "x.scorer").exists()


# ---------------------------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def greek(tmp_path_factory):
    """GREEK spoken by espeak-ng (16 kHz mono 16-bit, sox without dither so that the audio is always the same),
    validated, featurized and trained in bytes mode through `dsflow` until the best-dev greedy transcript is exact
    (400 epochs, then 50 more at a time), then exported."""
    from dsflow import checkpoints
    from dsflow.decode import greedy

    tmp = tmp_path_factory.mktemp("bytes")
    subprocess.run(["espeak-ng", "-v", "el", "-s", "130", "-w", str(tmp / "raw.wav"), GREEK], check=True)
    wav = tmp / "el.wav"
    subprocess.run(["sox", str(tmp / "raw.wav"), "-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer",
                    str(wav), "-D"], check=True)
    (tmp / "el.csv").write_text(f"wav_filename,wav_filesize,transcript\n{wav},{wav.stat().st_size},{GREEK}\n",
                                encoding="utf-8")
    english = str(DATA / "alphabet.txt")  # not read in bytes mode (DeepSpeech ignored it too)
    assert main(["validate", "--split", "train", "--csv", str(tmp / "el.csv"), "--alphabet_config_path", english,
                 "--bytes_output_mode", "true", "--out_csv", str(tmp / "valid.csv"), "--rejects",
                 str(tmp / "rejects.tsv"), "--summary", str(tmp / "summary.json"), "--audio_dir", str(tmp)]) == 0
    assert json.loads((tmp / "summary.json").read_text())["rows_kept"] == 1
    assert main(["features", "--csv", str(tmp / "valid.csv"), "--out_dir", str(tmp / "features")]) == 0
    args = ["train", "--train_features", str(tmp / "features"), "--dev_features", str(tmp / "features"),
            "--alphabet_config_path", english, "--bytes_output_mode", "true", "--work_dir", str(tmp / "work"),
            "--checkpoint_dir", str(tmp / "ckpt"), "--checkpoint_secs", "0", "--n_hidden", "100", "--learning_rate",
            "0.001", "--dropout_rate", "0", "--train_batch_size", "1", "--dev_batch_size", "1"]
    for epochs in range(400, 801, 50):
        assert main([*args, "--epochs", str(epochs)]) == 0
        net = checkpoints.load_model(tmp / "ckpt", "best")
        batch = next(iter(dataset.load(tmp / "features", net.alphabet, 1, train=False)))
        text = greedy(net(batch["features"]).numpy()[:, 0], int(batch["feature_lengths"][0]), net.alphabet)
        if text == GREEK:
            break
    assert text == GREEK, f"after {epochs} epochs: {text!r}"
    assert main(["export", "--checkpoint_dir", str(tmp / "ckpt"), "--export_dir", str(tmp / "export"),
                 "--export_tflite", "true"]) == 0
    return {"tmp": tmp, "wav": wav, "net": net}


@pytest.mark.slow
def test_checkpoint_folder_records_bytes_mode(greek):
    from dsflow import checkpoints

    ckpt = greek["tmp"] / "ckpt"
    assert json.loads((ckpt / "flags.json").read_text())["bytes_output_mode"] is True
    assert not (ckpt / "alphabet.txt").exists()  # no file can hold the byte labels
    net = checkpoints.load_model(ckpt)
    assert isinstance(net.alphabet, UTF8Alphabet) and net.n_classes == 256


@pytest.mark.slow
def test_evaluate_in_bytes_mode(greek):
    tmp = greek["tmp"]
    assert main(["evaluate", "--checkpoint_dir", str(tmp / "ckpt"), "--test_features", str(tmp / "features"),
                 "--test_output_file", str(tmp / "out.json"), "--metrics", str(tmp / "metrics.json")]) == 0
    (sample,) = json.loads((tmp / "out.json").read_text(encoding="utf-8"))
    assert sample["src"] == sample["res"] == GREEK and sample["char_length"] == 14  # characters, not bytes
    assert json.loads((tmp / "metrics.json").read_text())[str(tmp / "features")]["cer"] == 0.0


@pytest.mark.slow
def test_export_and_dsflow_transcribe(greek):
    from dsflow.exported import ExportedModel

    tmp, wav = greek["tmp"], greek["wav"]
    meta = json.loads((tmp / "export" / "metadata.json").read_text())
    assert meta["bytes_output_mode"] is True and meta["alphabet"] is None and meta["n_classes"] == 256
    assert not (tmp / "export" / "alphabet.txt").exists()
    for savedmodel in (False, True):
        model = ExportedModel(tmp / "export", savedmodel)
        assert isinstance(model.alphabet, UTF8Alphabet) and model.n_classes == 256
    for extra in ([], ["--savedmodel"]):
        out = subprocess.run([sys.executable, "-m", "dsflow", "transcribe", *extra, str(tmp / "export"), str(wav)],
                             capture_output=True, text=True, check=True)
        assert out.stdout == GREEK + "\n"


def _runtimes():
    from dsflow import runtimes

    try:
        return [runtimes.Runtime.load(name) for name in ("deepspeech-tflite", "stt")]
    except UserError as e:
        pytest.skip(f"runtimes not installed: {e}")


@pytest.mark.slow
def test_deepspeech_and_coqui_runtimes_decode_the_bytes(greek):
    """They know bytes mode only by the metadata's serialized alphabet (255 one-byte labels): their beam search
    concatenates the labels' bytes, which is the UTF-8 text."""
    import soundfile as sf

    samples, _ = sf.read(greek["wav"], dtype="int16")
    for runtime in _runtimes():
        with runtime.model(greek["tmp"] / "export" / "output_graph.tflite") as model:
            assert model.stt(samples) == GREEK, runtime.name


@pytest.mark.slow
@needs_kenlm
def test_bytes_scorer_in_dsflow_and_in_the_runtimes(greek):
    """A bytes output mode scorer from `dsflow build-lm`: a character LM with no space, so DeepSpeech's search
    outputs the characters without spaces; dsflow's port and both runtimes agree. lm-optimize minimizes CER."""
    import soundfile as sf

    tmp, wav = greek["tmp"], greek["wav"]
    (tmp / "lm.txt").write_text(f"{GREEK}\nκαλή σου μέρα\nκόσμε μου\n", encoding="utf-8")
    assert main(["build-lm", "--text", str(tmp / "lm.txt"), "--alphabet_config_path", str(DATA / "alphabet.txt"),
                 "--bytes_output_mode", "true", "--output", str(tmp / "lm.binary"), "--package",
                 str(tmp / "lm.scorer")]) == 0
    expected = GREEK.replace(" ", "")
    out = subprocess.run([sys.executable, "-m", "dsflow", "transcribe", "--scorer", str(tmp / "lm.scorer"),
                          str(tmp / "export"), str(wav)], capture_output=True, text=True, check=True)
    assert out.stdout == expected + "\n"
    samples, _ = sf.read(wav, dtype="int16")
    for runtime in _runtimes():
        with runtime.model(tmp / "export" / "output_graph.tflite") as model:
            model.enable_scorer(tmp / "lm.scorer")
            assert model.stt(samples) == expected, runtime.name
    assert main(["lm-optimize", "--checkpoint_dir", str(tmp / "ckpt"), "--test_features", str(tmp / "features"),
                 "--scorer_path", str(tmp / "lm.scorer"), "--output", str(tmp / "best.json"), "--n_trials",
                 "2"]) == 0
    best = json.loads((tmp / "best.json").read_text())
    assert best["objective"] == "cer" and best["cer"] == pytest.approx(1 / 14)  # the space


@pytest.mark.slow
def test_deepspeech_checkpoint_of_a_bytes_model(greek, tmp_path):
    """`export-checkpoint` writes --bytes_output_mode into DeepSpeech's flags.txt and no alphabet.txt; loading that
    folder gives the 256-class model back (flags.txt says bytes mode; or the bytes_output_mode flag)."""
    from dsflow import checkpoints

    assert main(["export-checkpoint", "--checkpoint_dir", str(greek["tmp"] / "ckpt"), "--output_dir",
                 str(tmp_path / "ds")]) == 0
    assert "--bytes_output_mode" in (tmp_path / "ds" / "flags.txt").read_text().split()
    assert not (tmp_path / "ds" / "alphabet.txt").exists()
    net = checkpoints.load_model(tmp_path / "ds")
    assert isinstance(net.alphabet, UTF8Alphabet) and net.n_classes == 256
    (tmp_path / "ds" / "flags.txt").unlink()
    with pytest.raises(UserError, match="256 classes, but .* has 28 labels .* bytes_output_mode for 256 classes"):
        checkpoints.load_model(tmp_path / "ds", alphabet_path=DATA / "alphabet.txt")
    assert isinstance(checkpoints.load_model(tmp_path / "ds", bytes_output_mode=True).alphabet, UTF8Alphabet)
