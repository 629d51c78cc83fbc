"""dsflow's exported .tflite in DeepSpeech 0.9.3's and Coqui STT 1.4's own C libraries (dsflow.runtimes).

DeepSpeech's CI check, against its real runtimes: the LDC93S1 smoke-test model (n_hidden 100, lr 0.001, dropout
0.05, batch 1, train = dev = the one utterance), trained with `dsflow train` and exported with `dsflow export`,
transcribes LDC93S1 exactly in libdeepspeech (TFLite build) and libstt, quantized and float, whole and streamed;
the 44.1 kHz stereo copy after sox, and the 8 kHz copy with a model trained at 8 kHz. `dsflow transcribe` reads the
same file, and one whose tensors only match DeepSpeech's interface by name.

The runtimes come from `bash scripts/fetch_runtimes.sh` (part of scripts/setup.sh); without them these tests skip.
"""

import numpy as np
import pytest
import soundfile as sf

tf = pytest.importorskip("tensorflow")

from dsflow import UserError, dataset, runtimes, tflite, transcribe  # noqa: E402
from dsflow.cli import main  # noqa: E402
from tests.conftest import LDC, sox_samples, stream_in_chunks  # noqa: E402

SENTENCE = "she had your dark suit in greasy wash water all year"
RUNTIMES = ("deepspeech-tflite", "stt")


def _missing() -> str:
    for name in (*RUNTIMES, "deepspeech"):
        try:
            runtimes.library_path(name)
        except UserError as e:
            return str(e)
    return ""


pytestmark = pytest.mark.skipif(bool(_missing()), reason=f"runtimes not installed: {_missing()}")


def rewritten(src, dst, change) -> None:
    """`src` with `change(model_object)` applied, written to `dst`."""
    s = tflite._schema()
    data = src.read_bytes()
    m = s.ModelT.InitFromObj(s.Model.GetRootAsModel(data, 0))
    change(m)
    dst.write_bytes(tflite._pack(m, len(data)))


# ---------------------------------------------------------------------------------------------- the libraries

def test_both_deepspeech_builds_and_stt_live_in_one_process(tiny_tflite):
    """Each library is loaded RTLD_LOCAL: the TensorFlow build (which reads only .pb/.pbmm) refuses the .tflite
    with its protobuf error, while the TFLite build beside it, and libstt, load it."""
    builds = {name: runtimes.Runtime.load(name) for name in ("deepspeech", "deepspeech-tflite", "stt")}
    assert {n: r.version for n, r in builds.items()} == {"deepspeech": "0.9.3", "deepspeech-tflite": "0.9.3",
                                                         "stt": "1.4.0"}
    with pytest.raises(UserError, match=r"Error reading the proto buffer model file. \(error 0x3005\)"):
        builds["deepspeech"].model(tiny_tflite)
    for name in RUNTIMES:
        with builds[name].model(tiny_tflite) as m:
            assert (m.sample_rate, m.beam_width) == (16000, 77)
            m.set_beam_width(5)
            assert m.beam_width == 5


def test_a_missing_runtime_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DSFLOW_RUNTIMES_DIR", str(tmp_path))
    with pytest.raises(UserError, match="scripts/fetch_runtimes.sh") as e:
        runtimes.Runtime.load("stt")
    assert str(tmp_path / "stt" / "libstt.so") in str(e.value)


def test_a_refused_model_gives_the_runtimes_own_reason(tiny_tflite, tmp_path):
    """TF 2.21's per-channel hybrid FULLY_CONNECTED (version 12) is what the export must avoid."""
    rewritten(tiny_tflite, tmp_path / "v12.tflite", lambda m: setattr(_code(m, "FULLY_CONNECTED"), "version", 12))
    for name in RUNTIMES:
        with pytest.raises(UserError) as e:
            runtimes.Runtime.load(name).model(tmp_path / "v12.tflite")
        assert "Interpreter failed. (error 0x3002)" in str(e.value)
        assert "Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'" in str(e.value)


def _code(m, name):
    s = tflite._schema()
    (oc,) = [oc for oc in m.operatorCodes
             if max(oc.builtinCode, oc.deprecatedBuiltinCode) == getattr(s.BuiltinOperator, name)]
    return oc


def test_the_op_version_table_is_what_both_runtimes_register(tiny_tflite, tmp_path):
    """dsflow.tflite.MAX_VERSIONS: every op the export writes loads at its listed version in both runtimes, and
    one version more is refused by at least one of them (so the table is neither too strict nor too lax)."""
    s = tflite._schema()
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    m = s.ModelT.InitFromObj(s.Model.GetRootAsModel(tiny_tflite.read_bytes(), 0))
    used = {names[max(oc.builtinCode, oc.deprecatedBuiltinCode)] for oc in m.operatorCodes} - {"CUSTOM"}
    assert used == set(tflite.MAX_VERSIONS)

    def loads(op, version) -> list[bool]:
        rewritten(tiny_tflite, tmp_path / "probe.tflite", lambda m: setattr(_code(m, op), "version", version))
        ok = []
        for name in RUNTIMES:
            try:
                runtimes.Runtime.load(name).model(tmp_path / "probe.tflite").close()
                ok.append(True)
            except UserError as e:
                assert f"Didn't find op for builtin opcode '{op}' version '{version}'" in str(e)
                ok.append(False)
        return ok

    for op, version in tflite.MAX_VERSIONS.items():
        assert loads(op, version) == [True, True], op
        assert False in loads(op, version + 1), op


# ---------------------------------------------------------------------------------------------- LDC93S1

@pytest.mark.slow
@pytest.mark.parametrize("kind", ["quantized", "float"])
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_runtimes_transcribe_ldc93s1_exactly(ldc16k, runtime, kind, tmp_path):
    with runtimes.Runtime.load(runtime).model(ldc16k[kind]) as m:
        assert (m.sample_rate, m.beam_width) == (16000, 500)  # export_beam_width's default
        assert m.stt(sf.read(LDC / "LDC93S1.wav", dtype="int16")[0]) == SENTENCE
        assert m.stt(sox_samples(LDC / "LDC93S1_pcms16le_2_44100.wav", 16000, tmp_path)) == SENTENCE


@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_runtimes_streaming_api_fed_small_chunks(ldc16k, runtime):
    samples = sf.read(LDC / "LDC93S1.wav", dtype="int16")[0]
    with runtimes.Runtime.load(runtime).model(ldc16k["quantized"]) as m:
        final, partial = stream_in_chunks(m, samples)
    assert final == SENTENCE
    assert len(partial) == 3 and partial[0] and all(SENTENCE.startswith(p) for p in partial)
    assert len(partial[0]) < len(partial[1]) < len(partial[2]) < len(SENTENCE)


@pytest.mark.slow
def test_dsflow_transcribe_gives_the_same_transcript(ldc16k, capsys):
    wavs = [str(LDC / "LDC93S1.wav"), str(LDC / "LDC93S1_pcms16le_2_44100.wav")]
    for kind in ("quantized", "float"):
        assert main(["transcribe", str(ldc16k[kind]), *wavs]) == 0
        assert capsys.readouterr().out.splitlines() == [f"{w}\t{SENTENCE}" for w in wavs]


@pytest.mark.slow
def test_the_float_tflite_is_the_checkpoint_network(ldc16k):
    """dsflow transcribe's streamed probabilities from the float .tflite equal the checkpoint network's on the
    whole utterance (training features); the quantized file stays close and has the same best path."""
    batch = next(iter(dataset.load(ldc16k["features"], ldc16k["net"].alphabet, 1, train=False)))
    expected = tf.nn.softmax(ldc16k["net"](batch["features"])[:, 0]).numpy()
    probs = {kind: transcribe.probabilities(transcribe.ExportedModel(ldc16k[kind]), LDC / "LDC93S1.wav")[0]
             for kind in ("float", "quantized")}
    assert probs["float"].shape == expected.shape == (145, 29)
    np.testing.assert_allclose(probs["float"], expected, atol=1e-5)
    assert np.abs(probs["quantized"] - expected).max() < 0.1
    assert (probs["quantized"].argmax(1) == expected.argmax(1)).all()


@pytest.mark.slow
def test_dsflow_transcribe_reads_a_deepspeech_interface_file_it_did_not_write(ldc16k, tmp_path, capsys):
    """Another writer's file: inputs and outputs in another order, every other tensor renamed, no
    metadata_language (DeepSpeech wrote it only when set), no export folder around it. DeepSpeech's runtime and
    dsflow transcribe both find the tensors by name."""
    def scramble(m):
        graph = m.subgraphs[0]
        keep = {*tflite.INPUTS, *tflite.OUTPUTS, *tflite.REQUIRED_METADATA}
        for i, t in enumerate(graph.tensors):
            if t.name.decode() not in keep:
                t.name = f"tensor_{i}".encode()
        graph.inputs = graph.inputs[::-1]
        graph.outputs = np.array([i for i in graph.outputs[::-1] if graph.tensors[i].name.decode() in keep], np.int32)

    foreign = tmp_path / "deepspeech.tflite"
    rewritten(ldc16k["float"], foreign, scramble)
    names = tflite.Model(foreign).outputs
    assert "metadata_language" not in names and list(names)[0] != "logits"
    with runtimes.Runtime.load("deepspeech-tflite").model(foreign) as m:
        assert m.stt(sf.read(LDC / "LDC93S1.wav", dtype="int16")[0]) == SENTENCE
    assert transcribe.ExportedModel(foreign).language == ""
    assert main(["transcribe", str(foreign), str(LDC / "LDC93S1.wav")]) == 0
    assert capsys.readouterr().out == SENTENCE + "\n"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["quantized", "float"])
def test_an_8khz_model_transcribes_the_8khz_file(ldc8k, kind, capsys):
    """DeepSpeech's 8 kHz CI check: a model trained at 8 kHz (256/160-sample windows) on the 8 kHz copy."""
    wav = LDC / "LDC93S1_pcms16le_1_8000.wav"
    for runtime in RUNTIMES:
        with runtimes.Runtime.load(runtime).model(ldc8k[kind]) as m:
            assert m.sample_rate == 8000
            assert m.stt(sf.read(wav, dtype="int16")[0]) == SENTENCE
    assert main(["transcribe", str(ldc8k[kind]), str(wav)]) == 0
    assert capsys.readouterr().out == SENTENCE + "\n"
