"""`dsflow transcribe`: the exported model streamed like DeepSpeech's native client, on real audio.

The model here has random (untrained) weights: its outputs are far from one-hot, so the probabilities themselves
are compared with the checkpoint network's, frame by frame (the transcript parity of a trained model is in
tests/test_export.py).
"""

import numpy as np
import pytest
import soundfile as sf

tf = pytest.importorskip("tensorflow")

from dsflow import export, mfcc, model, transcribe  # noqa: E402
from dsflow.alphabet import Alphabet  # noqa: E402
from dsflow.exported import ExportedModel  # noqa: E402
from dsflow.cli import main  # noqa: E402
from tests.conftest import DATA, LDC  # noqa: E402

N_STEPS = 4  # LDC93S1 has 145 frames: 36 full chunks and a partial one of 1 frame
META = {"sample_rate": 16000, "win_len_ms": 32.0, "win_step_ms": 20.0}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random n_hidden 24 network, exported with a float TFLite model, and once without TFLite."""
    tmp = tmp_path_factory.mktemp("exported")
    net = model.DeepSpeech(24, 29, seed=7)
    net.alphabet, net.checkpoint = Alphabet.from_file(DATA / "alphabet.txt"), "untrained"
    export.write_export(net, tmp / "float", export.options(export_tflite=True, export_quantize=False,
                                                           n_steps=N_STEPS), META)
    export.write_export(net, tmp / "no_tflite", export.options(n_steps=N_STEPS), META)
    return net, tmp


def reference(net, wav) -> np.ndarray:
    """The checkpoint network on the whole utterance (training features): softmax probabilities [T, C]."""
    samples, rate = sf.read(wav, dtype="int16")
    logits = net(mfcc.mfcc(samples, rate)[None]).numpy()[:, 0]
    return tf.nn.softmax(logits).numpy()


@pytest.mark.parametrize("savedmodel", [False, True], ids=["tflite", "savedmodel"])
def test_streamed_probabilities_equal_the_network_on_the_whole_utterance(exported, savedmodel):
    net, tmp = exported
    m = ExportedModel(tmp / "float", savedmodel)
    assert (m.kind, m.n_steps, m.n_hidden, m.n_classes) == ("savedmodel" if savedmodel else "tflite", N_STEPS, 24, 29)
    probs, seconds = transcribe.probabilities(m, LDC / "LDC93S1.wav")
    expected = reference(net, LDC / "LDC93S1.wav")
    assert probs.shape == expected.shape == (145, 29) and seconds == pytest.approx(2.925, abs=1e-3)
    np.testing.assert_allclose(probs, expected, atol=2e-6)
    assert transcribe.decode_probs(probs, m.alphabet) == transcribe.decode_probs(expected, m.alphabet) != ""


def test_the_graph_mfcc_is_the_training_features(exported):
    m = ExportedModel(exported[1] / "float")
    samples, _ = sf.read(LDC / "LDC93S1.wav", dtype="int16")
    audio = samples.astype(np.float32) / np.float32(32767)
    graph = np.concatenate([m.run("mfcc", input_samples=audio[i:i + 512])["mfccs"]
                            for i in range(0, len(audio) - 511, 320)])
    np.testing.assert_allclose(graph, mfcc.mfcc(samples, 16000), rtol=0, atol=1e-4)


def test_how_the_audio_is_cut_into_blocks_does_not_matter(exported):
    m = ExportedModel(exported[1] / "float")
    samples, _ = sf.read(LDC / "LDC93S1.wav", dtype="int16")
    whole = transcribe.Stream(m)
    whole.feed(samples)
    expected = whole.finish()
    stream, start, sizes = transcribe.Stream(m), 0, [1, 7, 511, 512, 320, 3333, 10000]
    for i in range(10 ** 6):
        if start >= len(samples):
            break
        stream.feed(samples[start:start + sizes[i % len(sizes)]])
        start += sizes[i % len(sizes)]
    np.testing.assert_array_equal(stream.finish(), expected)


def test_8khz_and_44khz_stereo_are_converted_with_sox(exported):
    m = ExportedModel(exported[1] / "float")
    with transcribe.model_rate_wav(LDC / "LDC93S1.wav", 16000) as wav:
        assert wav == LDC / "LDC93S1.wav"  # already 16 kHz mono 16-bit: read as is
    with transcribe.model_rate_wav(LDC / "LDC93S1_pcms16le_2_44100.wav", 16000) as wav:
        info = sf.info(str(wav))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.duration == pytest.approx(128985 / 44100, abs=1e-3)
    assert not wav.exists()  # the temporary conversion is gone
    for name in ("LDC93S1_pcms16le_1_8000.wav", "LDC93S1_pcms16le_2_44100.wav"):
        probs, seconds = transcribe.probabilities(m, LDC / name)
        assert probs.shape == (145, 29) and seconds == pytest.approx(2.925, abs=1e-3)


def test_audio_shorter_than_one_window_gives_an_empty_transcript(exported, tmp_path):
    m = ExportedModel(exported[1] / "float")
    sf.write(tmp_path / "short.wav", np.zeros(300, np.int16), 16000, subtype="PCM_16")
    probs, _ = transcribe.probabilities(m, tmp_path / "short.wav")
    assert probs.shape == (0, 29) and transcribe.transcribe(m, tmp_path / "short.wav") == ""


def test_cli_prints_the_transcript_or_one_line_per_file(exported, capsys):
    net, tmp = exported
    text = transcribe.decode_probs(reference(net, LDC / "LDC93S1.wav"), net.alphabet)
    assert main(["transcribe", str(tmp / "float"), str(LDC / "LDC93S1.wav")]) == 0
    assert capsys.readouterr().out == text + "\n"
    files = [LDC / "LDC93S1.wav", LDC / "LDC93S1_pcms16le_1_8000.wav"]
    assert main(["transcribe", "--savedmodel", str(tmp / "float"), *map(str, files)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == list(map(str, files)) and lines[0] == f"{files[0]}\t{text}"
    # A .tflite file or a SavedModel folder can be given directly.
    assert main(["transcribe", str(tmp / "float/output_graph.tflite"), str(files[0])]) == 0
    assert main(["transcribe", str(tmp / "float/saved_model"), str(files[0])]) == 0
    assert capsys.readouterr().out == f"{text}\n{text}\n"


@pytest.mark.parametrize("case, message", [
    ("missing_audio", "no such audio file"),
    ("not_audio", "cannot convert to 16-bit mono 16000 Hz audio"),
    ("no_tflite", "exported with export_tflite false); use --savedmodel"),
    ("not_an_export", "not an export folder"),
])
def test_cli_errors_name_the_file_and_the_fix(exported, tmp_path, capsys, case, message):
    tmp = exported[1]
    (tmp_path / "notes.wav").write_text("not audio\n")
    model_path, audio = {
        "missing_audio": (tmp / "float", tmp_path / "nope.wav"),
        "not_audio": (tmp / "float", tmp_path / "notes.wav"),
        "no_tflite": (tmp / "no_tflite", LDC / "LDC93S1.wav"),
        "not_an_export": (tmp_path, LDC / "LDC93S1.wav"),
    }[case]
    assert main(["transcribe", str(model_path), str(audio)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(model_path if case in ("no_tflite", "not_an_export") else audio) in err
