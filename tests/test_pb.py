"""dsflow's exported `.pb` / `.pbmm` (dsflow.pbgraph) in DeepSpeech 0.9.3's own TensorFlow runtime.

The format facts on a random n_hidden 24 network (fast): only the kernels that runtime registers, the .pbmm's
package layout, the graph's arithmetic equal to the network's (run by TensorFlow 2), and the runtime refusing
what the writer avoids. Then DeepSpeech's CI check (slow; the LDC93S1 model of tests/conftest.py, trained once per
session and exported with export_tflite false): libdeepspeech.so of the `deepspeech` wheel (TensorFlow build)
transcribes LDC93S1 and its 44.1 kHz stereo copy (after sox) exactly from the .pb and the .pbmm, with and without
the .scorer that `dsflow build-lm --package` makes of DeepSpeech's vocab.txt, whole and streamed in small chunks.

The runtimes come from `bash scripts/fetch_runtimes.sh` (part of scripts/setup.sh); without them these tests skip.
"""

import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

tf = pytest.importorskip("tensorflow")

from dsflow import UserError, dataset, export, model, pbgraph, runtimes, transcribe  # noqa: E402
from dsflow.alphabet import Alphabet  # noqa: E402
from dsflow.cli import main  # noqa: E402
from dsflow.runtimes import _captured_stderr  # noqa: E402
from tests.conftest import DATA, LDC, SENTENCE, sox_samples, stream_in_chunks  # noqa: E402


def _missing() -> str:
    try:
        runtimes.library_path("deepspeech")
    except UserError as e:
        return str(e)
    return ""


needs_runtime = pytest.mark.skipif(bool(_missing()), reason=f"runtime not installed: {_missing()}")
HAVE_KENLM = all((Path(sys.executable).parent / t).is_file() or shutil.which(t) for t in ("lmplz", "build_binary"))
META = {"sample_rate": 16000, "feature_win_len": 32, "feature_win_step": 20, "beam_width": 77, "language": "en"}


def tiny_net(layer_norm=False):
    net = model.DeepSpeech(24, 29, layer_norm=layer_norm, seed=7)
    net.alphabet = Alphabet.from_file(DATA / "alphabet.txt")
    if layer_norm:  # not the initial ones and zeros, so that gamma and beta matter
        for i, layer in enumerate((net.layer_1, net.layer_2, net.layer_3, net.layer_5)):
            rng = np.random.default_rng(i)
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype(np.float32))
            layer.beta.assign(rng.uniform(-0.5, 0.5, layer.beta.shape).astype(np.float32))
    return net


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random n_hidden 24 network, its GraphDef and its .pb and .pbmm."""
    net = tiny_net()
    gd = pbgraph.graph_def(net, 16, {**META, "alphabet": net.alphabet})
    pb, pbmm = pbgraph.write(tmp_path_factory.mktemp("tiny"), "tiny", gd)
    return {"net": net, "graph_def": gd, "pb": pb, "pbmm": pbmm}


def stt(path, samples, scorer=None) -> str:
    """DS_SpeechToText in the TensorFlow runtime; the session must not report an error while it runs."""
    with runtimes.Runtime.load("deepspeech").model(path) as m:
        assert (m.sample_rate, m.beam_width) in ((16000, 500), (16000, 77))
        if scorer:
            m.enable_scorer(scorer)
        with _captured_stderr() as err:
            text = m.stt(samples)
    assert "Error running session" not in err[0], err[0]
    return text


def ldc_samples():
    return sf.read(LDC / "LDC93S1.wav", dtype="int16")[0]


# ---------------------------------------------------------------------------------------------- the format

def test_the_graph_has_deepspeechs_names_and_only_its_kernels(tiny):
    nodes = {n.name: n for n in tiny["graph_def"].node}
    assert {n.op for n in nodes.values()} <= set(pbgraph.KERNELS)
    assert {n.op for n in nodes.values()} >= {"BlockLSTM", "AudioSpectrogram", "Mfcc", "Softmax", "GatherNd"}
    for op in ("Sigmoid", "Tanh", "StridedSlice", "AddV2", "Split"):  # what a TF2 conversion of the LSTM gives
        assert op not in {n.op for n in nodes.values()}
    shapes = {name: [d.size for d in n.attr["shape"].shape.dim] for name, n in nodes.items() if n.op == "Placeholder"}
    assert shapes == {"input_samples": [512], "input_node": [1, 16, 19, 26], "input_lengths": [1],
                      "previous_state_c": [1, 24], "previous_state_h": [1, 24]}
    for name in ("logits", "new_state_c", "new_state_h", "mfccs", "logits_shape", *pbgraph.METADATA):
        assert name in nodes
    lstm = nodes[f"{pbgraph.LSTM_SCOPE}/BlockLSTM"]
    assert (lstm.attr["forget_bias"].f, lstm.attr["cell_clip"].f, lstm.attr["use_peephole"].b) == (0, -1, False)
    assert tf.make_ndarray(nodes["logits_shape"].attr["value"].tensor).tolist() == [16, 1, 29]
    assert "grad_a" not in nodes["layer_1/MatMul"].attr
    meta = {k: v.tolist() for k, v in pbgraph.Graph(tiny["pb"]).run("metadata").items()}
    assert meta == {"metadata_version": [6], "metadata_sample_rate": [16000], "metadata_feature_win_len": [32],
                    "metadata_feature_win_step": [20], "metadata_beam_width": [77], "metadata_language": [b"en"],
                    "metadata_alphabet": [Alphabet.from_file(DATA / "alphabet.txt").serialize()]}


def test_the_pbmm_is_tensorflows_memmapped_package(tiny):
    """Weights >= 10,000 bytes as 64-byte aligned regions read by ImmutableConst nodes, then the GraphDef as
    `memmapped_package://.`, the directory and its offset; read back, it is the .pb's graph. (With a lower
    threshold more constants are mapped, and padding is needed between their regions.)"""
    from tensorflow.core.util import memmapped_file_system_pb2

    consts = {n.name: n for n in tiny["graph_def"].node if n.op == "Const"}
    for data, min_bytes, mapped in ((tiny["pbmm"].read_bytes(), 10000, 2),
                                    (pbgraph.memmapped(tiny["graph_def"], 100), 100, 8)):  # + biases of 29 and 96
        (offset,) = struct.unpack("<Q", data[-8:])
        directory = memmapped_file_system_pb2.MemmappedFileSystemDirectory.FromString(data[offset:-8])
        *regions, graph = directory.element
        assert graph.name == "memmapped_package://." and graph.offset + graph.length == offset
        gd = pbgraph._pb2()[1].GraphDef.FromString(data[graph.offset:offset])
        immutable = {n.attr["memory_region_name"].s.decode(): n for n in gd.node if n.op == "ImmutableConst"}
        assert set(immutable) == {r.name for r in regions} and len(regions) == mapped
        assert "memmapped_package://layer_1_weights" in immutable  # n_hidden 24: with 10,000 it and the LSTM kernel
        for r in regions:
            node = immutable[r.name]
            assert r.offset % 64 == 0 and set(node.attr) == {"dtype", "shape", "memory_region_name"}
            assert data[r.offset:r.offset + r.length] == consts[node.name].attr["value"].tensor.tensor_content
            assert r.length >= min_bytes
        assert all(len(n.attr["value"].tensor.tensor_content) < min_bytes for n in gd.node if n.op == "Const")
        assert any(r.offset + r.length < next_r.offset for r, next_r in zip(regions, directory.element[1:])) == (
            min_bytes == 100)  # padding after layer_6/weights (24 x 29 floats)
    assert pbgraph.read(tiny["pbmm"]) == pbgraph.read(tiny["pb"]) == tiny["graph_def"]


@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "layer_norm"])
def test_the_graph_is_the_network(layer_norm, tmp_path):
    """The .pb run by TensorFlow 2 equals dsflow's streaming module (the SavedModel's signatures) on random
    inputs and states: BlockLSTM's gate layout and forget bias are the model's."""
    net = tiny_net(layer_norm)
    meta = {**META, "alphabet": net.alphabet}
    pb, _ = pbgraph.write(tmp_path, "m", pbgraph.graph_def(net, 16, meta))
    graph, module = pbgraph.Graph(pb), export.streaming_module(net, 16, meta)
    rng = np.random.default_rng(3)
    x = rng.normal(size=[1, 16, 19, 26]).astype(np.float32)
    c, h = rng.normal(size=[2, 1, 24]).astype(np.float32)
    got, want = graph.run("acoustic", input_node=x, previous_state_c=c, previous_state_h=h), module.acoustic(x, c, h)
    for key in ("logits", "new_state_c", "new_state_h"):
        np.testing.assert_allclose(got[key], want[key].numpy(), atol=1e-6, err_msg=key)
    samples = rng.normal(size=[512]).astype(np.float32)
    np.testing.assert_array_equal(graph.run("mfcc", input_samples=samples)["mfccs"], module.mfcc(samples)["mfccs"])


@needs_runtime
def test_the_runtime_runs_both_files_and_a_layer_norm_model(tiny, tmp_path):
    net = tiny_net(layer_norm=True)
    pb, pbmm = pbgraph.write(tmp_path, "ln", pbgraph.graph_def(net, 16, {**META, "alphabet": net.alphabet}))
    for files in ((tiny["pb"], tiny["pbmm"]), (pb, pbmm)):
        texts = [stt(f, ldc_samples()) for f in files]
        assert texts[0] == texts[1] != ""  # random weights: some characters, the same from either file


@needs_runtime
def test_the_runtime_refuses_what_the_writer_avoids(tiny, tmp_path):
    """A kernel it lacks fails DS_CreateModel; an attribute newer than its TensorFlow fails every inference.
    dsflow.pbgraph.check refuses both."""
    sigmoid = pbgraph._pb2()[1].GraphDef.FromString(tiny["graph_def"].SerializeToString())
    next(n for n in sigmoid.node if n.name == "layer_1/Relu").op = "Sigmoid"
    newer = pbgraph._pb2()[1].GraphDef.FromString(tiny["graph_def"].SerializeToString())
    next(n for n in newer.node if n.name == "layer_1/MatMul").attr["grad_a"].b = False
    for gd, message in ((sigmoid, "op Sigmoid"), (newer, r"attributes \['grad_a'\]")):
        with pytest.raises(RuntimeError, match=message):
            pbgraph.check(gd)
    (tmp_path / "sigmoid.pb").write_bytes(sigmoid.SerializeToString())
    (tmp_path / "newer.pb").write_bytes(newer.SerializeToString())
    with pytest.raises(UserError) as e:
        runtimes.Runtime.load("deepspeech").model(tmp_path / "sigmoid.pb")
    assert "Failed to create session. (error 0x3006)" in str(e.value)
    assert "No OpKernel was registered to support Op 'Sigmoid'" in str(e.value)
    with runtimes.Runtime.load("deepspeech").model(tmp_path / "newer.pb") as m, _captured_stderr() as err:
        assert m.stt(ldc_samples()) == ""
    assert "NodeDef mentions attr 'grad_a' not in Op<name=MatMul" in err[0]


def test_a_file_that_is_not_a_graph_is_refused(tmp_path):
    (tmp_path / "x.pbmm").write_bytes(b"\x00" * 7)
    with pytest.raises(UserError, match="not a memory-mapped TensorFlow model"):
        pbgraph.read(tmp_path / "x.pbmm")


# ---------------------------------------------------------------------------------------------- LDC93S1

@pytest.fixture(scope="module")
def ldc_scorer(tmp_path_factory):
    if not HAVE_KENLM:
        pytest.skip("KenLM's lmplz/build_binary not built (scripts/setup.sh)")
    out = tmp_path_factory.mktemp("lm")
    assert main(["build-lm", "--text", str(LDC / "vocab.txt"), "--alphabet_config_path", str(DATA / "alphabet.txt"),
                 "--output", str(out / "lm.binary"), "--package", str(out / "lm.scorer")]) == 0
    return out / "lm.scorer"


@pytest.mark.slow
@needs_runtime
@pytest.mark.parametrize("scorer", [False, True], ids=["no_scorer", "scorer"])
@pytest.mark.parametrize("kind", ["pb", "pbmm"])
def test_the_tf_runtime_transcribes_ldc93s1_exactly(ldc16k, kind, scorer, request, tmp_path):
    lm = request.getfixturevalue("ldc_scorer") if scorer else None
    assert stt(ldc16k[kind], ldc_samples(), lm) == SENTENCE
    assert stt(ldc16k[kind], sox_samples(LDC / "LDC93S1_pcms16le_2_44100.wav", 16000, tmp_path), lm) == SENTENCE


@pytest.mark.slow
@needs_runtime
@pytest.mark.parametrize("kind", ["pb", "pbmm"])
def test_the_tf_runtimes_streaming_api_fed_small_chunks(ldc16k, ldc_scorer, kind):
    samples = ldc_samples()
    for scorer in (None, ldc_scorer):
        with runtimes.Runtime.load("deepspeech").model(ldc16k[kind]) as m:
            if scorer:
                m.enable_scorer(scorer)
            final, partial = stream_in_chunks(m, samples)
        assert final == SENTENCE
        assert len(partial) == 3 and partial[0] and len(partial[0]) < len(partial[2]) < len(SENTENCE)


@pytest.mark.slow
def test_the_pb_is_the_checkpoint_network(ldc16k, capsys):
    """The .pb and the .pbmm run by TensorFlow 2 and streamed by dsflow transcribe give the checkpoint network's
    probabilities on the whole utterance; `dsflow transcribe` reads both files and the export folder says how."""
    batch = next(iter(dataset.load(ldc16k["features"], ldc16k["net"].alphabet, 1, train=False)))
    expected = tf.nn.softmax(ldc16k["net"](batch["features"])[:, 0]).numpy()
    for kind in ("pb", "pbmm"):
        m = transcribe.ExportedModel(ldc16k[kind])
        assert (m.kind, m.n_steps, m.n_hidden, m.n_classes, m.beam_width) == ("pb", 16, 100, 29, 500)
        probs, _ = transcribe.probabilities(m, LDC / "LDC93S1.wav")
        assert probs.shape == expected.shape == (145, 29)
        np.testing.assert_allclose(probs, expected, atol=1e-5)
        assert main(["transcribe", str(ldc16k[kind]), str(LDC / "LDC93S1.wav")]) == 0
        assert capsys.readouterr().out == SENTENCE + "\n"
    assert main(["transcribe", str(ldc16k["pb"].parent), str(LDC / "LDC93S1.wav")]) == 2
    assert "use --savedmodel, or give its output_graph.pbmm" in capsys.readouterr().err
