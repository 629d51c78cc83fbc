"""dsflow.tflite: the exported .tflite has DeepSpeech's interface (tests/test_runtimes.py runs it in DeepSpeech's and
Coqui STT's own libraries), and `dsflow transcribe` refuses a .tflite without it, saying why."""

import pytest

tf = pytest.importorskip("tensorflow")

from dsflow import tflite  # noqa: E402
from dsflow.alphabet import Alphabet  # noqa: E402
from dsflow.cli import main  # noqa: E402
from tests.conftest import DATA, LDC  # noqa: E402


def test_the_file_has_deepspeechs_interface(tiny_tflite):
    """One subgraph, no signatures, the tensors by name with DeepSpeech's shapes, and every metadata tensor the
    output of its own op at the end of the execution plan (the runtime invokes those ops one by one)."""
    s = tflite._schema()
    m = s.ModelT.InitFromObj(s.Model.GetRootAsModel(tiny_tflite.read_bytes(), 0))
    assert len(m.subgraphs) == 1 and not m.signatureDefs
    graph = m.subgraphs[0]
    shape = {graph.tensors[i].name.decode(): list(graph.tensors[i].shape) for i in [*graph.inputs, *graph.outputs]}
    assert shape == {"input_node": [1, 16, 19, 26], "previous_state_c": [1, 24], "previous_state_h": [1, 24],
                     "input_samples": [512], "logits": [16, 29], "new_state_c": [1, 24], "new_state_h": [1, 24],
                     "mfccs": [1, 26], **{name: [1] for name in tflite.METADATA}}
    last = [graph.tensors[op.outputs[0]].name.decode() for op in graph.operators[-len(tflite.METADATA):]]
    assert last == list(tflite.METADATA)
    constant = [m.buffers[graph.tensors[i].buffer].data is not None
                for op in graph.operators[-len(tflite.METADATA):] for i in op.inputs]
    assert constant == [True] * 2 * len(tflite.METADATA)  # inputs of the metadata ops: constants only
    meta = {k: v.item() for k, v in tflite.Model(tiny_tflite).run("metadata").items()}
    assert {k: v for k, v in meta.items() if k != "metadata_alphabet"} == {
        "metadata_version": 6, "metadata_sample_rate": 16000, "metadata_feature_win_len": 32,
        "metadata_feature_win_step": 20, "metadata_beam_width": 77, "metadata_language": b"en"}
    assert meta["metadata_alphabet"] == Alphabet.from_file(DATA / "alphabet.txt").serialize()


def test_the_quantized_fully_connected_ops_are_per_tensor_and_symmetric(tiny_tflite):
    """What DeepSpeech 0.9.3's TFLite runs: one weight scale per tensor, symmetric input quantization (v3)."""
    s = tflite._schema()
    m = s.ModelT.InitFromObj(s.Model.GetRootAsModel(tiny_tflite.read_bytes(), 0))
    graph, hybrid = m.subgraphs[0], 0
    for op in graph.operators:
        code = m.operatorCodes[op.opcodeIndex]
        if code.builtinCode == s.BuiltinOperator.FULLY_CONNECTED:
            weights = graph.tensors[op.inputs[1]]
            assert not op.builtinOptions.asymmetricQuantizeInputs and code.version == 3
            if weights.type == s.TensorType.INT8:
                hybrid += 1
                assert len(weights.quantization.scale) == 1 and weights.quantization.zeroPoint.tolist() == [0]
    assert hybrid >= 4  # layer_1..3 and layer_5 at least (the small layer_6 stays float)


def test_transcribe_refuses_a_tflite_without_deepspeechs_interface(tmp_path, capsys):
    """E.g. a model converted with only a signature (as dsflow exported before): the missing names are listed."""
    class Doubler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([4], tf.float32, name="input_node")])
        def f(self, input_node):
            return {"logits": input_node * 2}

    module = Doubler()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.f.get_concrete_function()], module)
    (tmp_path / "other.tflite").write_bytes(converter.convert())
    assert main(["transcribe", str(tmp_path / "other.tflite"), str(LDC / "LDC93S1.wav")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'other.tflite'}: not a DeepSpeech-interface TFLite model: no tensor named input_node" in err
    assert "previous_state_c" in err and "metadata_alphabet" in err
