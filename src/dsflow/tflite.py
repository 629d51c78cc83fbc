"""DeepSpeech's `.tflite` model format (owner: written by `dsflow export`, read by `dsflow transcribe`).

The file is the one DeepSpeech 0.9.3's and Coqui STT 1.x's runtimes (libdeepspeech / libstt, TFLite builds) run:
ONE subgraph whose tensors the runtime finds by exact name among the subgraph's inputs and outputs
(native_client/tflitemodelstate.cc; signatures are ignored):

  inputs   input_node [1, n_steps, 19, 26] (context windows), previous_state_c, previous_state_h [1, n_hidden],
           input_samples [window] (one 32 ms window of samples)
  outputs  logits [n_steps, n_classes] (2-D softmax probabilities, blank last), new_state_c, new_state_h
           [1, n_hidden], mfccs [1, 26] (DeepSpeech's AudioSpectrogram + Mfcc: TFLite's built-in custom ops),
           metadata_version (6), metadata_sample_rate, metadata_feature_win_len, metadata_feature_win_step,
           metadata_beam_width (int32 [1]), metadata_alphabet (DeepSpeech's serialized alphabet, string [1]),
           metadata_language (string [1]; DeepSpeech wrote it, its runtime does not read it)

The runtime invokes each metadata tensor's producing op on its own (and the mfcc ops on their own, the rest as
the acoustic model), so every metadata tensor is the output of a GATHER of a constant, placed last in the
execution plan (with those ops first, libdeepspeech 0.9.3 crashes in DS_CreateModel: tried). The acoustic
arithmetic is dsflow.model's (dsflow.export.streaming_module). The file is converted by TensorFlow's converter
and then rewritten here (tensor names, metadata ops, no signatures).

Quantized (DeepSpeech's default): dynamic-range, int8 weights with ONE scale per tensor and symmetric int8
quantization of the activations at run time: FULLY_CONNECTED version 3, which DeepSpeech 0.9.3 (TFLite of TF 2.3)
and Coqui STT 1.4 (TF 2.9) run. TF 2.21's converter otherwise writes per-channel scales (version 12, refused by
both: "Interpreter failed", 0x3002) and asymmetrically quantized inputs (version 9, refused by DeepSpeech).
Every op's version is checked against what both runtimes register (MAX_VERSIONS, found by experiment).

Reading (`Model`): any file with this interface, also one written by DeepSpeech or Coqui STT, through
tf.lite.Interpreter; tensors by name in the primary subgraph.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np

from dsflow import UserError

INPUTS = ("input_node", "previous_state_c", "previous_state_h", "input_samples")
OUTPUTS = ("logits", "new_state_c", "new_state_h", "mfccs")
METADATA = ("metadata_version", "metadata_sample_rate", "metadata_feature_win_len", "metadata_feature_win_step",
            "metadata_beam_width", "metadata_alphabet", "metadata_language")
REQUIRED_METADATA = METADATA[:-1]  # metadata_language is optional (DeepSpeech wrote it only when set)

# The highest version of each builtin op the export uses that both runtimes register: libdeepspeech 0.9.3 (TFLite
# of TF 2.3) and libstt 1.4.0 (TF 2.9.1), the lower of the two. Probed with the real libraries by raising an op's
# version in a working model until it no longer loads ("Didn't find op for builtin opcode ... version ...");
# libstt registers more (FULLY_CONNECTED 9, ADD 4, MUL 5, GATHER 5, STRIDED_SLICE 6).
MAX_VERSIONS = {"ADD": 2, "CONCATENATION": 3, "FULLY_CONNECTED": 8, "GATHER": 3, "LOGISTIC": 3, "MINIMUM": 4,
                "MUL": 4, "RESHAPE": 1, "SOFTMAX": 3, "SPLIT": 4, "STRIDED_SLICE": 4, "TANH": 3}
CUSTOM_OPS = {"AudioSpectrogram", "Mfcc"}


# ---------------------------------------------------------------------------------------------- writing

def convert(module, quantize: bool) -> bytes:
    """The DeepSpeech-format flatbuffer of a dsflow.export.streaming_module `module`."""
    import tensorflow as tf

    acoustic = module.acoustic.get_concrete_function()
    mfcc = module.mfcc.get_concrete_function()
    specs = [*acoustic.structured_input_signature[0], *mfcc.structured_input_signature[0]]
    n_steps, n_classes = acoustic.structured_outputs["logits"].shape[0], acoustic.structured_outputs["logits"].shape[2]

    @tf.function(input_signature=specs)
    def deepspeech(input_node, previous_state_c, previous_state_h, input_samples):
        out = module.acoustic(input_node, previous_state_c, previous_state_h)
        out["logits"] = tf.reshape(out["logits"], [n_steps, n_classes])  # DeepSpeech's TFLite squeezes the batch
        out.update(module.mfcc(input_samples))
        return out

    converter = tf.lite.TFLiteConverter.from_concrete_functions([deepspeech.get_concrete_function()], module)
    converter.allow_custom_ops = True  # AudioSpectrogram and Mfcc: TFLite's built-in custom ops
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter._experimental_disable_per_channel = True  # one scale per weight tensor (TF 2.3 has no other)
    return rewrite(converter.convert(), module.metadata())


def _schema():
    from tensorflow.lite.python import schema_py_generated

    return schema_py_generated


def _string_buffer(strings: list[bytes]) -> bytes:
    """TFLite's string tensor layout: int32 count, int32 offsets (count + 1), then the bytes."""
    offsets, pos = [], 4 * (len(strings) + 2)
    for s in strings:
        offsets.append(pos)
        pos += len(s)
    return struct.pack(f"<{len(strings) + 2}i", len(strings), *offsets, pos) + b"".join(strings)


def rewrite(flatbuffer: bytes, metadata: dict) -> bytes:
    """The converter's flatbuffer as DeepSpeech's runtime wants it: input/output tensors named as its signature
    names them, the signatures dropped, the `metadata` values ({name: tf.Tensor or value}) appended as GATHER ops
    at the end of the execution plan, fully-connected ops with symmetric input quantization, op versions checked."""
    s = _schema()
    model = s.ModelT.InitFromObj(s.Model.GetRootAsModel(flatbuffer, 0))
    if len(model.subgraphs) != 1 or len(model.signatureDefs or []) != 1:
        raise RuntimeError(f"expected one subgraph and one signature from the converter, got "
                           f"{len(model.subgraphs)} and {len(model.signatureDefs or [])}")
    graph, (signature,) = model.subgraphs[0], model.signatureDefs
    for entry in [*signature.inputs, *signature.outputs]:
        graph.tensors[entry.tensorIndex].name = entry.name
    model.signatureDefs = []
    _symmetric_hybrid_fully_connected(model, graph)

    def add_buffer(data: bytes) -> int:
        model.buffers.append(s.BufferT())
        model.buffers[-1].data = np.frombuffer(data, np.uint8)
        return len(model.buffers) - 1

    def add_tensor(name: str, tensor_type: int, buffer: int = 0) -> int:
        t = s.TensorT()
        t.name, t.type, t.buffer, t.shape = name.encode(), tensor_type, buffer, np.array([1], np.int32)
        graph.tensors.append(t)
        return len(graph.tensors) - 1

    gather = _opcode(model, s.BuiltinOperator.GATHER)
    index = add_tensor("metadata/index", s.TensorType.INT32, add_buffer(struct.pack("<i", 0)))
    for name in METADATA:
        value = np.asarray(metadata[name]).reshape(-1)[0]
        if isinstance(value, bytes):
            kind, data = s.TensorType.STRING, _string_buffer([value])
        else:
            kind, data = s.TensorType.INT32, struct.pack("<i", int(value))
        constant = add_tensor(f"{name}/value", kind, add_buffer(data))
        op = s.OperatorT()
        op.opcodeIndex, op.inputs = gather, np.array([constant, index], np.int32)
        op.outputs = np.array([add_tensor(name, kind)], np.int32)
        op.builtinOptionsType, op.builtinOptions = s.BuiltinOptions.GatherOptions, s.GatherOptionsT()
        graph.operators.append(op)
        graph.outputs = np.append(graph.outputs, op.outputs)
    check_versions(model)
    return _pack(model, len(flatbuffer))


def _opcode(model, code: int) -> int:
    s = _schema()
    for i, oc in enumerate(model.operatorCodes):
        if max(oc.builtinCode, oc.deprecatedBuiltinCode) == code:
            return i
    oc = s.OperatorCodeT()
    oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
    model.operatorCodes.append(oc)
    return len(model.operatorCodes) - 1


def _symmetric_hybrid_fully_connected(model, graph) -> None:
    """Hybrid (float input, int8 weights) FULLY_CONNECTED ops quantize their input symmetrically (version 3)
    instead of asymmetrically (version 9): TF 2.3's TFLite has only the former."""
    s = _schema()
    versions = {}
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) != s.BuiltinOperator.FULLY_CONNECTED:
            continue
        weights, options = graph.tensors[op.inputs[1]], op.builtinOptions
        hybrid = weights.type == s.TensorType.INT8 and graph.tensors[op.inputs[0]].type == s.TensorType.FLOAT32
        scales = weights.quantization.scale if weights.quantization is not None else None
        if hybrid and (scales is None or len(scales) != 1):
            raise RuntimeError(f"FULLY_CONNECTED weights {weights.name!r}: expected one quantization scale")
        if options.keepNumDims or weights.sparsity is not None or len(op.inputs) != 3:
            raise RuntimeError(f"FULLY_CONNECTED {weights.name!r}: a form TF 2.3's TFLite does not run")
        options.asymmetricQuantizeInputs = False
        versions[op.opcodeIndex] = max(versions.get(op.opcodeIndex, 1), 3 if hybrid else 1)
    for i, version in versions.items():
        model.operatorCodes[i].version = version


def check_versions(model) -> None:
    """Every op is one that DeepSpeech 0.9.3's and Coqui STT 1.4's TFLite run, at a version they register."""
    s = _schema()
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    for oc in model.operatorCodes:
        code = max(oc.builtinCode, oc.deprecatedBuiltinCode)
        if code == s.BuiltinOperator.CUSTOM:
            name = oc.customCode.decode()
            ok = name in CUSTOM_OPS
        else:
            name = names.get(code, str(code))
            ok = oc.version <= MAX_VERSIONS.get(name, 0)
        if not ok:
            raise RuntimeError(f"the converter wrote op {name} version {oc.version}, which DeepSpeech 0.9.3's "
                               f"TFLite does not run (dsflow.tflite.MAX_VERSIONS)")


def _pack(model, size_hint: int) -> bytes:
    """The flatbuffer of a ModelT, with every buffer's bytes 16-byte aligned as TensorFlow's converter writes
    them (the schema's force_align 16, which the generated Python code ignores)."""
    import flatbuffers

    s = _schema()

    class Buffer(s.BufferT):
        def Pack(self, builder):
            data = None
            if self.data is not None and len(self.data):
                builder.StartVector(1, len(self.data), 16)
                builder.head -= len(self.data)
                builder.Bytes[builder.head:builder.head + len(self.data)] = self.data.tobytes()
                builder.vectorNumElems = len(self.data)
                data = builder.EndVector()
            s.BufferStart(builder)
            if data is not None:
                s.BufferAddData(builder, data)
            return s.BufferEnd(builder)

    for b in model.buffers:
        b.__class__ = Buffer
    builder = flatbuffers.Builder(size_hint + (1 << 20))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


# ---------------------------------------------------------------------------------------------- reading

class Model:
    """A DeepSpeech-interface .tflite file in tf.lite.Interpreter: `run(name, **inputs)` with name `acoustic`
    (input_node, previous_state_c/h -> logits [n_steps, C], new_state_c/h), `mfcc` (input_samples -> mfccs) or
    `metadata` (-> metadata_*), like the SavedModel's signatures. Each call invokes the whole graph (TFLite's
    Python interpreter has no execution plans): the inputs not given keep their last values (zeros at first)."""

    GROUPS = {"acoustic": ("logits", "new_state_c", "new_state_h"), "mfcc": ("mfccs",), "metadata": METADATA}

    def __init__(self, path: str | Path, threads: int = 1):
        import tensorflow as tf

        with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation notice (see the README)
            warnings.simplefilter("ignore")
            try:
                self.interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=threads)
                self.interpreter.allocate_tensors()
            except (ValueError, RuntimeError) as e:
                raise UserError(f"{path}: cannot load the TFLite model: {e}") from None
        self.inputs = {d["name"]: d for d in self.interpreter.get_input_details()}
        self.outputs = {d["name"]: d for d in self.interpreter.get_output_details()}
        missing = [n for n in (*INPUTS, *OUTPUTS, *REQUIRED_METADATA) if n not in {**self.inputs, **self.outputs}]
        if missing:
            raise UserError(f"{path}: not a DeepSpeech-interface TFLite model: no tensor named "
                            f"{', '.join(missing)} among the primary subgraph's inputs/outputs (DeepSpeech's "
                            "runtime finds its tensors by these names; a file with only signatures is not one)")
        for name, d in self.inputs.items():
            self.interpreter.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))

    def input_shapes(self) -> dict:
        return {name: tuple(int(x) for x in d["shape"]) for name, d in self.inputs.items()}

    def run(self, name: str, **inputs) -> dict:
        for key, value in inputs.items():
            self.interpreter.set_tensor(self.inputs[key]["index"], value)
        self.interpreter.invoke()
        return {k: self.interpreter.get_tensor(self.outputs[k]["index"]) for k in self.GROUPS[name]
                if k in self.outputs}
