"""`dsflow export`: DeepSpeech 0.9.3's model export (train.py `create_inference_graph` with n_steps > 0, `export`).

The exported model is DeepSpeech's streaming graph. The TF SavedModel holds it as three signatures:

  mfcc      input_samples f32 [window] (512 samples at 16 kHz: one 32 ms window)
            -> mfccs f32 [1, 26]  (DeepSpeech's AudioSpectrogram + Mfcc ops; TFLite runs them as its
            built-in custom ops AudioSpectrogram and Mfcc)
  acoustic  input_node f32 [1, n_steps, 19, 26] (context windows), previous_state_c/h f32 [1, n_hidden]
            -> logits f32 [n_steps, 1, C] (softmax probabilities, blank last), new_state_c/h [1, n_hidden]
  metadata  -> metadata_version (6), metadata_sample_rate, metadata_feature_win_len, metadata_feature_win_step,
            metadata_beam_width (int32), metadata_alphabet (DeepSpeech's serialized alphabet, bytes; in
            bytes_output_mode its UTF8Alphabet: 255 labels of one byte each, which is all DeepSpeech's runtime
            needs to output UTF-8), metadata_language (bytes)

The acoustic signature is the checkpoint's network (dsflow.model) with the LSTM unrolled over n_steps frames and
its state carried in and out. The files DeepSpeech's runtimes run are written as DeepSpeech 0.9.3's export wrote
them, one kind per export:
  export_tflite false (DeepSpeech's default): <export_file_name>.pb, the frozen TF1 graph that DeepSpeech's
    TensorFlow runtime runs, and <export_file_name>.pbmm, its memory-mapped form (what DeepSpeech released);
    written node by node by dsflow.pbgraph (only ops that runtime has kernels for; the LSTM as one BlockLSTM op);
  export_tflite true: <export_file_name>.tflite, the same graph in the one-subgraph form that DeepSpeech's and
    Coqui STT's TFLite runtimes run (dsflow.tflite: tensors by name, logits squeezed to [n_steps, C], metadata as
    ops), with DeepSpeech's dynamic-range quantization (int8 weights, float activations) unless
    --export_quantize false.

Output folder (built in a temporary sibling and renamed when complete, so an interrupted export never leaves a
folder that looks finished): saved_model/ (always, for TensorFlow 2 users), the .pb + .pbmm or the .tflite,
metadata.json (the metadata above, readable, and which files were written), alphabet.txt (none in
bytes_output_mode) and DeepSpeech's model card <author>_<model_name>_<version>.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from dsflow import UserError, __version__, flags
from dsflow.atomic import atomic_dir
from dsflow.exported import GRAPH_VERSION, METADATA, SAVED_MODEL, SIGNATURES
from dsflow.log import SHOW, log



def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint as DeepSpeech's streaming model: TF SavedModel, "
                                      "DeepSpeech's .pb/.pbmm or .tflite, metadata and model card", description=__doc__)
    a = p.add_argument
    a("--checkpoint_dir", required=True, help="a checkpoint folder published by `dsflow train`")
    a("--export_dir", required=True, help="output folder (replaced atomically)")
    flags.add_options(p, "export")
    flags.add_option(p, "scorer_path", help="with export_zip: the scorer to put into the zip")
    p.set_defaults(func=_main)


def options(**overrides):
    """The export flags (an argparse.Namespace) with their defaults, updated with `overrides`."""
    import argparse

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["export", "--checkpoint_dir", "", "--export_dir", ""])
    unknown = set(overrides) - set(vars(args))
    if unknown:
        raise TypeError(f"unknown export flags: {sorted(unknown)}")
    vars(args).update(overrides)
    return args


# ---------------------------------------------------------------------------------------------- the graph

def streaming_module(net, n_steps: int, metadata: dict):
    """A tf.Module with the `acoustic`, `mfcc` and `metadata` tf.functions of the module docstring.

    net: a dsflow.model.DeepSpeech; metadata: sample_rate, feature_win_len, feature_win_step (ms), beam_width,
    alphabet (Alphabet), language.
    """
    import tensorflow as tf

    from dsflow.mfcc import N_INPUT, window_samples
    from dsflow.model import WINDOW

    if n_steps < 1:
        raise UserError(f"n_steps={n_steps}: the streaming model needs at least one time step per call")
    rate, win_len, win_step = metadata["sample_rate"], metadata["feature_win_len"], metadata["feature_win_step"]
    for name, ms in (("feature_win_len", win_len), ("feature_win_step", win_step)):
        if ms != int(ms):  # DeepSpeech's flags and metadata nodes are whole milliseconds
            raise UserError(f"{name}={ms} ms: the exported metadata holds whole milliseconds")
    window, stride = window_samples(rate, win_len, win_step)
    n_hidden, n_classes = net.n_hidden, net.n_classes
    constants = {
        "metadata_version": GRAPH_VERSION, "metadata_sample_rate": int(rate),
        "metadata_feature_win_len": int(win_len), "metadata_feature_win_step": int(win_step),
        "metadata_beam_width": int(metadata["beam_width"]),
    }
    alphabet = metadata["alphabet"].serialize()
    language = metadata["language"].encode("utf-8")

    class Streaming(tf.Module):
        def __init__(self):
            super().__init__(name="deepspeech_streaming")
            self.layer_1, self.layer_2, self.layer_3 = net.layer_1, net.layer_2, net.layer_3
            self.layer_5, self.layer_6 = net.layer_5, net.layer_6
            # The LSTM's input and recurrent weights as two matrices of their own, stored [out, in] as TFLite's
            # FULLY_CONNECTED wants them: the converter neither slices nor transposes these large constants at
            # conversion time, and its quantizer only sees weights that go straight into an op.
            n_in = net.lstm.n_in
            self.lstm_w_x = tf.Variable(tf.transpose(net.lstm.kernel[:n_in]), name="lstm_w_x")
            self.lstm_w_h = tf.Variable(tf.transpose(net.lstm.kernel[n_in:]), name="lstm_w_h")
            self.lstm_bias = net.lstm.bias

        @tf.function(input_signature=[tf.TensorSpec([1, n_steps, WINDOW, N_INPUT], tf.float32, name="input_node"),
                                      tf.TensorSpec([1, n_hidden], tf.float32, name="previous_state_c"),
                                      tf.TensorSpec([1, n_hidden], tf.float32, name="previous_state_h")])
        def acoustic(self, input_node, previous_state_c, previous_state_h):
            # dsflow.model.DeepSpeech.__call__ for n_steps frames of one stream (no dropout), with the LSTM's
            # state in and out. The arithmetic is the model's: one GEMM for the LSTM's input projection of all
            # frames plus bias, then per frame z = xw_t + h @ W_h, gates (i, c~, f, o), forget bias 0.
            x = tf.reshape(input_node, [n_steps, WINDOW * N_INPUT])
            for layer in (self.layer_1, self.layer_2, self.layer_3):
                x = layer(x, net.relu_clip)
            xw = tf.matmul(x, self.lstm_w_x, transpose_b=True) + self.lstm_bias
            c, h, outputs = previous_state_c, previous_state_h, []
            for t in range(n_steps):  # unrolled: n_steps is fixed, and TFLite then needs no While loop
                z = xw[t:t + 1] + tf.matmul(h, self.lstm_w_h, transpose_b=True)
                i, j, f, o = tf.split(z, 4, axis=1)
                c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(j)
                h = tf.sigmoid(o) * tf.tanh(c)
                outputs.append(h)
            x = self.layer_5(tf.concat(outputs, 0), net.relu_clip)
            raw_logits = self.layer_6(x, net.relu_clip)
            probs = tf.reshape(tf.nn.softmax(raw_logits), [n_steps, 1, n_classes])
            return {"logits": probs, "new_state_c": c, "new_state_h": h}

        @tf.function(input_signature=[tf.TensorSpec([window], tf.float32, name="input_samples")])
        def mfcc(self, input_samples):
            spectrogram = tf.raw_ops.AudioSpectrogram(input=tf.reshape(input_samples, [window, 1]),
                                                      window_size=window, stride=stride, magnitude_squared=True)
            mfccs = tf.raw_ops.Mfcc(spectrogram=spectrogram, sample_rate=rate, dct_coefficient_count=N_INPUT,
                                    upper_frequency_limit=rate / 2)
            return {"mfccs": tf.reshape(mfccs, [1, N_INPUT])}

        @tf.function(input_signature=[])
        def metadata(self):
            out = {k: tf.constant(v, tf.int32) for k, v in constants.items()}
            out["metadata_alphabet"] = tf.constant(alphabet)
            out["metadata_language"] = tf.constant(language)
            return out

    return Streaming()


# ---------------------------------------------------------------------------------------------- the files

def model_card(args, runtime: str) -> str:
    """DeepSpeech's <author>_<model_name>_<version>.md: YAML front matter, then the description."""
    fields = [("author", args.export_author_id), ("model_name", args.export_model_name),
              ("model_version", args.export_model_version), ("contact_info", args.export_contact_info),
              ("license", args.export_license), ("language", args.export_language), ("runtime", runtime),
              ("min_ds_version", args.export_min_ds_version), ("max_ds_version", args.export_max_ds_version),
              ("acoustic_model_url", "<replace this with a publicly available URL of the acoustic model>"),
              ("scorer_url", "<replace this with a publicly available URL of the scorer, if present>")]
    return "---\n" + "".join(f"{k}: {v}\n" for k, v in fields) + f"---\n{args.export_description}\n"


def card_name(args) -> str:
    name = f"{args.export_author_id}_{args.export_model_name}_{args.export_model_version}.md"
    if "/" in name:
        raise UserError(f"model card name {name!r}: export_author_id, export_model_name and export_model_version "
                        "must not contain '/'")
    return name


def write_export(net, export_dir, args, features_meta: dict) -> Path:
    """Export `net` into `export_dir` (atomically); returns export_dir."""
    import tensorflow as tf

    export_dir = Path(export_dir)
    metadata = {"sample_rate": int(features_meta["sample_rate"]), "feature_win_len": features_meta["win_len_ms"],
                "feature_win_step": features_meta["win_step_ms"], "beam_width": args.export_beam_width,
                "alphabet": net.alphabet, "language": args.export_language}
    module = streaming_module(net, args.n_steps, metadata)
    card = card_name(args)
    tflite_name, pb_name = f"{args.export_file_name}.tflite", f"{args.export_file_name}.pb"
    if "/" in args.export_file_name or args.export_file_name.startswith(".") or not args.export_file_name:
        raise UserError(f"export_file_name={args.export_file_name!r}: must be a plain file name")
    with atomic_dir(export_dir) as tmp:
        signatures = {name: getattr(module, name) for name in SIGNATURES}
        tf.saved_model.save(module, str(tmp / SAVED_MODEL), signatures=signatures)
        log.info("wrote the SavedModel (signatures %s)", ", ".join(SIGNATURES))
        if args.export_tflite:
            from dsflow import tflite

            flatbuffer = tflite.convert(module, args.export_quantize)  # DeepSpeech's .tflite interface
            (tmp / tflite_name).write_bytes(flatbuffer)
            log.info("wrote %s (%.1f MB, %s)", tflite_name, len(flatbuffer) / 1e6,
                     "dynamic-range quantized" if args.export_quantize else "float32")
        else:  # DeepSpeech 0.9.3 wrote the .pb only without --export_tflite
            from dsflow import pbgraph

            for path in pbgraph.write(tmp, args.export_file_name, pbgraph.graph_def(net, args.n_steps, metadata)):
                log.info("wrote %s (%.1f MB)", path.name, path.stat().st_size / 1e6)
        info = {
            "version": GRAPH_VERSION, "sample_rate": metadata["sample_rate"],
            "feature_win_len": metadata["feature_win_len"], "feature_win_step": metadata["feature_win_step"],
            "beam_width": args.export_beam_width, "language": args.export_language,
            "bytes_output_mode": net.alphabet.bytes_output_mode,
            "alphabet": None if net.alphabet.bytes_output_mode else net.alphabet.labels,
            "n_steps": args.n_steps, "n_hidden": net.n_hidden, "n_classes": net.n_classes,
            "tflite": tflite_name if args.export_tflite else None, "tflite_quantized": bool(
                args.export_tflite and args.export_quantize),
            "pb": None if args.export_tflite else pb_name, "pbmm": None if args.export_tflite else pb_name + "mm",
            "saved_model": SAVED_MODEL, "model_card": card, "checkpoint": str(net.checkpoint),
            "dsflow_version": __version__,
        }
        (tmp / METADATA).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if not net.alphabet.bytes_output_mode:  # the UTF-8 bytes have no alphabet file
            (tmp / "alphabet.txt").write_text(net.alphabet.to_file_text(), encoding="utf-8")
        (tmp / card).write_text(model_card(args, "tflite" if args.export_tflite else "tensorflow"), encoding="utf-8")
    log.info("Models exported at %s", export_dir, extra=SHOW)
    log.info("Model metadata file saved to %s. Before submitting the exported model for publishing make sure all "
             "information in the metadata file is correct, and complete the URL fields.", export_dir / card)
    return export_dir


def zip_export(export_dir: str | Path, scorer_path: str | Path = "") -> Path:
    """DeepSpeech's export_zip: `<export_dir>.zip` (atomically) of the export folder's files and the scorer."""
    import zipfile

    from dsflow.atomic import atomic_path

    export_dir = Path(export_dir)
    out = export_dir.with_name(export_dir.name + ".zip")
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(p for p in export_dir.rglob("*") if p.is_file() and p.name != ".snakemake_timestamp"):
            z.write(f, Path(export_dir.name) / f.relative_to(export_dir))
        if scorer_path:
            z.write(scorer_path, Path(export_dir.name) / Path(scorer_path).name)
    log.info("wrote %s", out, extra=SHOW)
    return out


def export(args) -> Path:
    from dsflow import checkpoints

    flags.check(args, "export")
    # a DeepSpeech checkpoint folder does not record its features: the configured ones
    features_meta = checkpoints.features_meta(args.checkpoint_dir) or {
        "sample_rate": args.audio_sample_rate, "win_len_ms": args.feature_win_len, "win_step_ms": args.feature_win_step}
    net = checkpoints.load_model(args.checkpoint_dir, args.load_evaluate, args.alphabet_config_path,
                                 args.bytes_output_mode)
    if args.export_zip:
        args.export_tflite = True  # DeepSpeech: export_zip exports TFLite
    out = write_export(net, args.export_dir, args, features_meta)
    if args.export_zip:
        zip_export(out, args.scorer_path)
    return out


def _main(args) -> int:
    export(args)
    return 0
