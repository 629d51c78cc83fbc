"""An export folder (written by `dsflow export`): its files, and `ExportedModel`, which reads them back.

  saved_model/               TF SavedModel with three signatures: `mfcc`, `acoustic`, `metadata` (see dsflow.export)
  <export_file_name>.tflite  with export_tflite: DeepSpeech's own .tflite (its runtimes run it; dsflow.tflite)
  <export_file_name>.pb/.pbmm without: DeepSpeech's frozen graph and its memory-mapped form (dsflow.pbgraph)
  metadata.json              the metadata, readable; alphabet.txt; the model card <author>_<model>_<version>.md
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsflow import UserError, read_json
from dsflow.alphabet import Alphabet

GRAPH_VERSION = 6  # DeepSpeech 0.9.3's util/config.py: the native client refuses other versions
SAVED_MODEL = "saved_model"
METADATA = "metadata.json"
SIGNATURES = ("acoustic", "mfcc", "metadata")


class ExportedModel:
    """An exported model's three signatures (`run(name, **inputs) -> {output: ndarray}`) and its metadata."""

    def __init__(self, path: str | Path, savedmodel: bool = False, threads: int = 1):
        import tensorflow as tf

        from dsflow import pbgraph, tflite
        from dsflow.mfcc import N_INPUT
        from dsflow.model import N_CONTEXT

        path = Path(path)
        if not path.exists():
            raise UserError(f"{path}: no such model file or folder")
        self.kind = "savedmodel" if savedmodel or (path / "saved_model.pb").is_file() else "tflite"
        if path.is_dir() and not (path / "saved_model.pb").is_file():  # an export folder
            if savedmodel:
                path = path / SAVED_MODEL
            else:
                info = read_json(path / METADATA, f"{path}: not an export folder (no {METADATA}); give a .tflite "
                                                  "file, a SavedModel folder or a folder written by `dsflow export`")
                if not info["tflite"]:
                    hint = f", or give its {info['pbmm']}" if info.get("pbmm") else ""
                    raise UserError(f"{path}: this export has no TFLite model (exported with export_tflite "
                                    f"false); use --savedmodel{hint}")
                path = path / info["tflite"]
        if path.suffix in (".pb", ".pbmm") and path.is_file():
            self.kind = "pb"
        self.path = path
        try:
            if self.kind == "tflite":  # DeepSpeech's interface: tensors by name (dsflow.tflite)
                self._file = tflite.Model(path, threads)
            elif self.kind == "pb":  # DeepSpeech's frozen graph, run by TensorFlow 2 (tf.compat.v1)
                self._file = pbgraph.Graph(path)
            else:
                loaded = tf.saved_model.load(str(path))
                self._keep = loaded  # the signatures need the loaded object alive
                self._runners = {name: loaded.signatures[name] for name in SIGNATURES}
        except (ValueError, OSError, RuntimeError, KeyError) as e:
            raise UserError(f"{path}: cannot load the exported {self.kind} model: {e}") from None
        shapes = self.input_shapes("acoustic")
        if len(shapes["input_node"]) != 4 or shapes["input_node"][2:] != (2 * N_CONTEXT + 1, N_INPUT):
            raise UserError(f"{path}: input_node has shape {list(shapes['input_node'])}; this client feeds "
                            f"[1, n_steps, {2 * N_CONTEXT + 1}, {N_INPUT}] (DeepSpeech's context windows)")
        self.n_steps, self.n_hidden = shapes["input_node"][1], shapes["previous_state_c"][1]
        meta = {k: v.item() for k, v in self.run("metadata").items()}
        self.version, self.sample_rate = meta["metadata_version"], meta["metadata_sample_rate"]
        if self.version != GRAPH_VERSION:
            raise UserError(f"{path}: model version {self.version}; this client reads version {GRAPH_VERSION}")
        self.win_len, self.win_step = meta["metadata_feature_win_len"], meta["metadata_feature_win_step"]
        self.beam_width = meta["metadata_beam_width"]
        self.alphabet = Alphabet.deserialize(meta["metadata_alphabet"], "<model metadata>")
        self.language = meta.get("metadata_language", b"").decode("utf-8")  # optional in DeepSpeech's files
        self.window = self.sample_rate * self.win_len // 1000
        self.stride = self.sample_rate * self.win_step // 1000
        self.n_classes = len(self.alphabet) + 1
        if self.kind == "tflite" and self._file.outputs["logits"]["shape"][-1] != self.n_classes:
            raise UserError(f"{path}: logits has {self._file.outputs['logits']['shape'][-1]} classes, but the "
                            f"model's alphabet has {len(self.alphabet)} labels + blank")

    def run(self, name: str, **inputs) -> dict:
        """One signature; `acoustic`'s logits as [n_steps, n_classes] from any format (the TFLite file has
        DeepSpeech's squeezed 2-D logits, the SavedModel and the .pb [n_steps, 1, n_classes])."""
        if self.kind in ("tflite", "pb"):
            out = self._file.run(name, **inputs)
        else:
            out = {k: np.asarray(v.numpy()) for k, v in self._runners[name](**inputs).items()}
        if name == "acoustic":
            out["logits"] = out["logits"].reshape(self.n_steps, -1)
        return out

    def input_shapes(self, name: str) -> dict:
        if self.kind in ("tflite", "pb"):
            return self._file.input_shapes()
        return {k: tuple(v.shape) for k, v in self._runners[name].structured_input_signature[1].items()}
