"""DeepSpeech's `.pb` and `.pbmm` model formats (owner: written by `dsflow export` with export_tflite false, read
back here for checks and for running the graph in TensorFlow 2).

`.pb` is a frozen TensorFlow 1 GraphDef, the model DeepSpeech 0.9.3's TensorFlow runtime (libdeepspeech.so of the
`deepspeech` wheel, TensorFlow 2.3 inside) runs by node name (native_client/tfmodelstate.cc):

  input_samples [window] -> mfccs [1, 26]          AudioSpectrogram + Mfcc, run once per 32 ms window
  input_node [1, n_steps, 19, 26], input_lengths [1] (fed by the runtime; the graph does not need it),
  previous_state_c, previous_state_h [1, n_hidden]
      -> logits [n_steps, 1, n_classes] (softmax probabilities), new_state_c, new_state_h [1, n_hidden]
  metadata_version (6), metadata_sample_rate, metadata_feature_win_len, metadata_feature_win_step,
  metadata_beam_width (int32 [1]), metadata_alphabet (serialized alphabet, string [1]), metadata_language
  logits_shape (int32 [3] constant: the runtime checks its last entry against the alphabet)

The graph is written node by node, not converted from a TensorFlow 2 graph: the runtime's TensorFlow build
registers kernels only for the ops DeepSpeech's graph needed (native_client/BUILD; e.g. no Sigmoid or Tanh, which
a TF 2 LSTM cell is made of), and a node whose op has no kernel fails DS_CreateModel ("Failed to create session",
0x3006), one with an attribute TF 2.3 does not know (TF 2.21's MatMul grad_a, GatherNd bad_indices_policy) fails
every inference (an empty transcript). So every node is one of KERNELS with only the attributes listed there (`check`).

The arithmetic is dsflow.model's: layer_1..3 and layer_5 as MatMul + BiasAdd + Relu + Minimum(relu_clip) (with
layer_norm: Mean, SquaredDifference, Add, Rsqrt, Sub, Mul, which that build has too), the LSTM as ONE BlockLSTM
op over the n_steps frames (the op behind DeepSpeech's LSTMBlockFusedCell: kernel [x, h] -> gates i, c~, f, o;
forget_bias 0, no cell clip, no peepholes), the final state picked by GatherNd, layer_6, Softmax. The state out is
the state after all n_steps frames (DeepSpeech's after input_lengths frames; the runtime feeds a partial chunk
only at the end of a stream and then ignores the state). Weights keep DeepSpeech's variable names as Const nodes
(`layer_1/weights`, `cudnn_lstm/rnn/multi_rnn_cell/cell_0/cudnn_compatible_lstm_cell/kernel`, ...).

`.pbmm` is the same graph in TensorFlow's memory-mapped package (core/util/memmapped_file_system*, what
convert_graphdef_memmapped_format wrote for DeepSpeech's releases): every Const of >= MMAP_MIN_BYTES bytes of
plain data becomes an ImmutableConst node (memory_region_name `memmapped_package://<node name, sanitized>`) whose
bytes lie 64-byte aligned in the file, then the GraphDef as the region `memmapped_package://.`, then the
MemmappedFileSystemDirectory protobuf (name, offset and length of each region) and the directory's offset as a
little-endian uint64. The runtime maps the file and reads the weights in place.

  gd = graph_def(net, n_steps, metadata)      # metadata as for dsflow.export.streaming_module
  write(folder, "output_graph", gd)           # output_graph.pb and output_graph.pbmm (atomically)
  read(path) -> GraphDef                      # .pb, or .pbmm with its ImmutableConst nodes made Const again
  Graph(path).run("acoustic", input_node=..., previous_state_c=..., previous_state_h=...)   # in TensorFlow 2
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

from dsflow import UserError
from dsflow.atomic import atomic_path

MMAP_PREFIX = "memmapped_package://"
MMAP_GRAPH = MMAP_PREFIX + "."  # MemmappedFileSystem::kMemmappedPackageDefaultGraphDef
MMAP_ALIGN = 64  # Allocator::kAllocatorAlignment
MMAP_MIN_BYTES = 10000  # convert_graphdef_memmapped_format's default min_conversion_tensor_size
LSTM_SCOPE = "cudnn_lstm/rnn/multi_rnn_cell/cell_0/cudnn_compatible_lstm_cell"
# The first date-based GraphDef version (May 2019; TF 1.15 wrote a later one). No op used here changed since.
PRODUCER = 30

# The ops this graph uses, all of which DeepSpeech 0.9.3's TensorFlow build has kernels for (probed with the
# real library: it lacks e.g. Sigmoid, Tanh, Sqrt, Square, Exp, RealDiv, Maximum), each with the attributes its
# TF 1.15 op definition has (TF 2.21 added e.g. MatMul's grad_a/grad_b and GatherNd's bad_indices_policy).
KERNELS = {
    "Placeholder": {"dtype", "shape"}, "Const": {"dtype", "value"},
    "ImmutableConst": {"dtype", "shape", "memory_region_name"},
    "Reshape": {"T", "Tshape"}, "MatMul": {"T", "transpose_a", "transpose_b"}, "BiasAdd": {"T", "data_format"},
    "Relu": {"T"}, "Minimum": {"T"}, "Softmax": {"T"}, "GatherNd": {"Tparams", "Tindices"},
    "Mean": {"T", "Tidx", "keep_dims"}, "SquaredDifference": {"T"}, "Add": {"T"}, "Sub": {"T"},  # layer_norm
    "Mul": {"T"}, "Rsqrt": {"T"},  # layer_norm (Mul of two different tensors: the runtime's graph optimizer
    # turns x * x into Square, which it has no kernel for)
    "BlockLSTM": {"T", "forget_bias", "cell_clip", "use_peephole"},
    "AudioSpectrogram": {"window_size", "stride", "magnitude_squared"},
    "Mfcc": {"upper_frequency_limit", "lower_frequency_limit", "filterbank_channel_count", "dct_coefficient_count"},
}
METADATA = ("metadata_version", "metadata_sample_rate", "metadata_feature_win_len", "metadata_feature_win_step",
            "metadata_beam_width", "metadata_alphabet", "metadata_language")
_DTYPES = {np.dtype(np.float32): 1, np.dtype(np.int32): 3, np.dtype(np.int64): 9}  # DT_FLOAT, DT_INT32, DT_INT64
DT_STRING = 7


def _pb2():
    from tensorflow.core.framework import attr_value_pb2, graph_pb2, tensor_pb2, tensor_shape_pb2

    return attr_value_pb2, graph_pb2, tensor_pb2, tensor_shape_pb2


def _shape(dims):
    return _pb2()[3].TensorShapeProto(dim=[_pb2()[3].TensorShapeProto.Dim(size=int(d)) for d in dims])


def _tensor(value):
    """A TensorProto of a numpy array (float32/int32/int64: raw little-endian bytes) or of a bytes string [1]."""
    tensor_pb2 = _pb2()[2]
    if isinstance(value, bytes):
        return tensor_pb2.TensorProto(dtype=DT_STRING, tensor_shape=_shape([1]), string_val=[value])
    value = np.asarray(value)
    dtype = value.dtype.newbyteorder("<")
    return tensor_pb2.TensorProto(dtype=_DTYPES[value.dtype], tensor_shape=_shape(value.shape),
                                  tensor_content=np.ascontiguousarray(value, dtype).tobytes())


class _Builder:
    """Appends NodeDefs; attribute values given as Python values are typed by the attribute's name."""

    def __init__(self):
        self.gd = _pb2()[1].GraphDef()
        self.gd.versions.producer = PRODUCER

    def node(self, op: str, name: str, inputs=(), **attrs) -> str:
        n = self.gd.node.add(op=op, name=name, input=list(inputs))
        for key, v in attrs.items():
            a = n.attr[key]
            if key in ("T", "dtype", "Tshape", "Tparams", "Tindices", "Tidx"):
                a.type = v
            elif key in ("shape",):
                a.shape.CopyFrom(_shape(v))
            elif key == "value":
                a.tensor.CopyFrom(_tensor(v))
            elif isinstance(v, bool):
                a.b = v
            elif isinstance(v, int):
                a.i = v
            elif isinstance(v, float):
                a.f = v
            elif isinstance(v, (str, bytes)):
                a.s = v.encode() if isinstance(v, str) else v
            else:
                raise TypeError(f"attribute {key}={v!r}")
        return name

    def const(self, name: str, value) -> str:
        dtype = DT_STRING if isinstance(value, bytes) else _DTYPES[np.asarray(value).dtype]
        return self.node("Const", name, dtype=dtype, value=value)

    def placeholder(self, name: str, dtype: int, shape) -> str:
        return self.node("Placeholder", name, dtype=dtype, shape=shape)

    def reshape(self, name: str, x: str, shape) -> str:
        return self.node("Reshape", name, [x, self.const(f"{name}/shape", np.array(shape, np.int32))], T=1, Tshape=3)


# ---------------------------------------------------------------------------------------------- writing

def graph_def(net, n_steps: int, metadata: dict):
    """The frozen DeepSpeech streaming graph of `net` (a dsflow.model.DeepSpeech) as a GraphDef.

    metadata: sample_rate, feature_win_len, feature_win_step (whole ms), beam_width, alphabet (Alphabet), language.
    """
    from dsflow.mfcc import N_INPUT, window_samples
    from dsflow.model import LN_EPSILON, WINDOW

    if n_steps < 1:
        raise UserError(f"n_steps={n_steps}: the streaming model needs at least one time step per call")
    rate, win_len, win_step = metadata["sample_rate"], metadata["feature_win_len"], metadata["feature_win_step"]
    for name, ms in (("feature_win_len", win_len), ("feature_win_step", win_step)):
        if ms != int(ms):
            raise UserError(f"{name}={ms} ms: the exported metadata holds whole milliseconds")
    window, stride = window_samples(rate, win_len, win_step)
    n_hidden, n_classes, f32 = net.n_hidden, net.n_classes, 1
    g = _Builder()

    # features: DeepSpeech's audio_to_features on one window
    samples = g.placeholder("input_samples", f32, [window])
    column = g.reshape("input_samples_column", samples, [window, 1])
    spectrogram = g.node("AudioSpectrogram", "AudioSpectrogram", [column], window_size=window, stride=stride,
                         magnitude_squared=True)
    mfcc = g.node("Mfcc", "Mfcc", [spectrogram, g.const("Mfcc/sample_rate", np.array(rate, np.int32))],
                  upper_frequency_limit=float(rate) / 2, lower_frequency_limit=20.0, filterbank_channel_count=40,
                  dct_coefficient_count=N_INPUT)
    g.reshape("mfccs", mfcc, [1, N_INPUT])

    # the acoustic model
    x = g.placeholder("input_node", f32, [1, n_steps, WINDOW, N_INPUT])
    g.placeholder("input_lengths", 3, [1])
    c_prev = g.placeholder("previous_state_c", f32, [1, n_hidden])
    h_prev = g.placeholder("previous_state_h", f32, [1, n_hidden])
    clip = g.const("relu_clip", np.array(net.relu_clip, np.float32))

    def dense(name, x, layer, relu=True):
        w = g.const(f"{name}/weights", layer.weights.numpy().astype(np.float32))
        b = g.const(f"{name}/bias", layer.bias.numpy().astype(np.float32))
        y = g.node("BiasAdd", f"{name}/BiasAdd", [g.node("MatMul", f"{name}/MatMul", [x, w], T=f32, transpose_a=False,
                                                           transpose_b=False), b], T=f32, data_format="NHWC")
        if relu:
            y = g.node("Minimum", f"{name}/Minimum", [g.node("Relu", f"{name}/Relu", [y], T=f32), clip], T=f32)
        if getattr(layer, "layer_norm", False):  # dsflow.model.Dense: (y - mean) / sqrt(var + eps) * gamma + beta
            scope, axis = f"{name}/LayerNorm", g.const(f"{name}/LayerNorm/axis", np.array([-1], np.int32))
            mean = g.node("Mean", f"{scope}/mean", [y, axis], T=f32, Tidx=3, keep_dims=True)
            var = g.node("Mean", f"{scope}/variance", [g.node("SquaredDifference", f"{scope}/SquaredDifference",
                                                              [y, mean], T=f32), axis], T=f32, Tidx=3, keep_dims=True)
            eps = g.const(f"{scope}/epsilon", np.array(LN_EPSILON, np.float32))
            inv = g.node("Rsqrt", f"{scope}/Rsqrt", [g.node("Add", f"{scope}/add", [var, eps], T=f32)], T=f32)
            y = g.node("Mul", f"{scope}/normalized", [g.node("Sub", f"{scope}/centered", [y, mean], T=f32), inv], T=f32)
            y = g.node("Mul", f"{scope}/scaled", [y, g.const(f"{scope}/gamma", layer.gamma.numpy())], T=f32)
            y = g.node("BiasAdd", f"{scope}/BiasAdd", [y, g.const(f"{scope}/beta", layer.beta.numpy())], T=f32,
                       data_format="NHWC")
        return y

    x = g.reshape("input_reshaped", x, [n_steps, WINDOW * N_INPUT])
    for name in ("layer_1", "layer_2", "layer_3"):
        x = dense(name, x, getattr(net, name))
    x = g.reshape("lstm_input", x, [n_steps, 1, n_hidden])
    zeros = np.zeros([n_hidden], np.float32)
    lstm = g.node("BlockLSTM", f"{LSTM_SCOPE}/BlockLSTM", [
        g.const(f"{LSTM_SCOPE}/seq_len_max", np.array(n_steps, np.int64)), x, c_prev, h_prev,
        g.const(f"{LSTM_SCOPE}/kernel", net.lstm.kernel.numpy().astype(np.float32)),
        g.const(f"{LSTM_SCOPE}/wci", zeros), g.const(f"{LSTM_SCOPE}/wcf", zeros), g.const(f"{LSTM_SCOPE}/wco", zeros),
        g.const(f"{LSTM_SCOPE}/bias", net.lstm.bias.numpy().astype(np.float32))],
        T=f32, forget_bias=0.0, cell_clip=-1.0, use_peephole=False)  # outputs: i, cs, f, o, ci, co, h
    last = g.const("last_step", np.array([[n_steps - 1, 0]], np.int32))
    g.node("GatherNd", "new_state_c", [f"{lstm}:1", last], Tparams=f32, Tindices=3)
    g.node("GatherNd", "new_state_h", [f"{lstm}:6", last], Tparams=f32, Tindices=3)
    x = g.reshape("rnn_output", f"{lstm}:6", [n_steps, n_hidden])
    x = dense("layer_5", x, net.layer_5)
    x = dense("layer_6", x, net.layer_6, relu=False)
    g.reshape("logits", g.node("Softmax", "softmax", [x], T=f32), [n_steps, 1, n_classes])
    g.const("logits_shape", np.array([n_steps, 1, n_classes], np.int32))

    for name, value in (("metadata_version", 6), ("metadata_sample_rate", rate), ("metadata_feature_win_len", win_len),
                        ("metadata_feature_win_step", win_step), ("metadata_beam_width", metadata["beam_width"])):
        g.const(name, np.array([int(value)], np.int32))
    g.const("metadata_alphabet", metadata["alphabet"].serialize())
    if metadata.get("language"):  # DeepSpeech wrote it only when set
        g.const("metadata_language", metadata["language"].encode("utf-8"))
    check(g.gd)
    return g.gd


def check(gd) -> None:
    """Every node is an op DeepSpeech's TensorFlow build has a kernel for, with only TF 1.15's attributes."""
    for n in gd.node:
        if n.op not in KERNELS:
            raise RuntimeError(f"node {n.name!r}: op {n.op}, which DeepSpeech 0.9.3's TensorFlow runtime has no "
                               "kernel for (dsflow.pbgraph.KERNELS)")
        extra = set(n.attr) - KERNELS[n.op]
        if extra:
            raise RuntimeError(f"node {n.name!r} ({n.op}): attributes {sorted(extra)} unknown to TF 1.15")


def memmapped(gd, min_bytes: int = MMAP_MIN_BYTES) -> bytes:
    """The .pbmm package of a GraphDef (see the module's docstring)."""
    from tensorflow.core.util import memmapped_file_system_pb2 as mm

    gd = type(gd).FromString(gd.SerializeToString())
    out, directory, used = bytearray(), mm.MemmappedFileSystemDirectory(), set()
    for n in gd.node:
        if n.op != "Const" or n.attr["dtype"].type == DT_STRING:
            continue
        tensor = n.attr["value"].tensor
        data = tensor.tensor_content
        if len(data) < min_bytes:
            continue
        region = re.sub(r"[^A-Za-z0-9_.]", "_", n.name)
        while region in used:  # as convert_graphdef_memmapped_format makes them unique
            region += "_"
        used.add(region)
        out += bytes(-len(out) % MMAP_ALIGN)
        directory.element.add(name=MMAP_PREFIX + region, offset=len(out), length=len(data))
        out += data
        dtype, shape = tensor.dtype, [d.size for d in tensor.tensor_shape.dim]
        n.op = "ImmutableConst"
        n.ClearField("attr")
        n.attr["dtype"].type = dtype
        n.attr["shape"].shape.CopyFrom(_shape(shape))
        n.attr["memory_region_name"].s = (MMAP_PREFIX + region).encode()
    graph = gd.SerializeToString()
    directory.element.add(name=MMAP_GRAPH, offset=len(out), length=len(graph))
    out += graph
    offset = len(out)
    out += directory.SerializeToString() + struct.pack("<Q", offset)
    return bytes(out)


def write(folder: str | Path, name: str, gd) -> tuple[Path, Path]:
    """`folder/name.pb` and `folder/name.pbmm` (each written atomically); returns their paths."""
    paths = Path(folder) / f"{name}.pb", Path(folder) / f"{name}.pbmm"
    for path, data in zip(paths, (gd.SerializeToString(), memmapped(gd))):
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(data)
    return paths


# ---------------------------------------------------------------------------------------------- reading

def read(path: str | Path):
    """The GraphDef of a .pb, or of a .pbmm with each ImmutableConst turned back into a Const holding its
    region's bytes. A file that is neither raises UserError."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.util import memmapped_file_system_pb2 as mm

    graph_pb2, path = _pb2()[1], Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such model file") from None
    if path.suffix != ".pbmm":
        try:
            return graph_pb2.GraphDef.FromString(data)
        except DecodeError as e:
            raise UserError(f"{path}: not a TensorFlow GraphDef ({e})") from None
    try:
        (offset,) = struct.unpack("<Q", data[-8:])
        directory = mm.MemmappedFileSystemDirectory.FromString(data[offset:-8])
        ends = [e.offset for e in directory.element[1:]] + [offset]
        regions = {e.name: data[e.offset:end] for e, end in zip(directory.element, ends)}
        gd = graph_pb2.GraphDef.FromString(regions[MMAP_GRAPH])
    except (struct.error, DecodeError, KeyError, ValueError) as e:
        raise UserError(f"{path}: not a memory-mapped TensorFlow model (.pbmm): {e!r}") from None
    for n in gd.node:
        if n.op == "ImmutableConst":
            dtype, shape = n.attr["dtype"].type, [d.size for d in n.attr["shape"].shape.dim]
            size = int(np.prod(shape)) * {v: k for k, v in _DTYPES.items()}[dtype].itemsize
            content = regions[n.attr["memory_region_name"].s.decode()][:size]
            n.op = "Const"
            n.ClearField("attr")
            n.attr["dtype"].type = dtype
            n.attr["value"].tensor.CopyFrom(_pb2()[2].TensorProto(dtype=dtype, tensor_shape=_shape(shape),
                                                                  tensor_content=content))
    return gd


class Graph:
    """A DeepSpeech .pb/.pbmm run by TensorFlow 2 (tf.compat.v1 import_graph_def): `run(name, **inputs)` with
    name `acoustic` (input_node, previous_state_c/h -> logits, new_state_c/h), `mfcc` (input_samples -> mfccs)
    or `metadata` (-> metadata_*), like the SavedModel's signatures."""

    GROUPS = {"acoustic": (("input_node", "previous_state_c", "previous_state_h"), ("logits", "new_state_c",
                                                                                     "new_state_h")),
              "mfcc": (("input_samples",), ("mfccs",)), "metadata": ((), METADATA)}

    def __init__(self, path: str | Path):
        import tensorflow as tf

        self.graph_def = gd = read(path)
        names = {n.name for n in gd.node}
        self._fns = {}
        for group, (inputs, outputs) in self.GROUPS.items():
            outputs = [o for o in outputs if o in names]

            def imported():
                tf.compat.v1.import_graph_def(gd, name="")

            wrapped = tf.compat.v1.wrap_function(imported, [])
            get = wrapped.graph.get_tensor_by_name
            try:
                fn = wrapped.prune([get(f"{i}:0") for i in inputs], {o: get(f"{o}:0") for o in outputs})
            except KeyError as e:
                raise UserError(f"{path}: not a DeepSpeech model graph: {e}") from None
            self._fns[group] = (inputs, fn)
        self.shapes = {n.name: tuple(d.size for d in n.attr["shape"].shape.dim) for n in gd.node
                       if n.op == "Placeholder"}

    def input_shapes(self) -> dict:
        return dict(self.shapes)

    def run(self, name: str, **inputs) -> dict:
        import tensorflow as tf

        names, fn = self._fns[name]
        return {k: v.numpy() for k, v in fn(*[tf.constant(inputs[n]) for n in names]).items()}
