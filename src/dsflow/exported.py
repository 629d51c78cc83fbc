"""An export folder (written by `dsflow export`): its files, and `ExportedModel`, which reads them back.

  saved_model/               TF SavedModel with three signatures: `mfcc`, `acoustic`, `metadata` (see dsflow.export)
  <export_file_name>.tflite  with export_tflite: the same signatures as TFLite
  metadata.json              the metadata, readable; alphabet.txt; the model card <author>_<model>_<version>.md
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from dsflow import UserError
from dsflow.alphabet import Alphabet

GRAPH_VERSION = 6  # DeepSpeech 0.9.3's util/config.py: the native client refuses other versions
SAVED_MODEL = "saved_model"
METADATA = "metadata.json"
SIGNATURES = ("acoustic", "mfcc", "metadata")


class ExportedModel:
    """An exported model's three signatures (`run(name, **inputs) -> {output: ndarray}`) and its metadata."""

    def __init__(self, path: str | Path, savedmodel: bool = False, threads: int = 1):
        import tensorflow as tf


        path = Path(path)
        if not path.exists():
            raise UserError(f"{path}: no such model file or folder")
        self.kind = "savedmodel" if savedmodel or (path / "saved_model.pb").is_file() else "tflite"
        if path.is_dir() and not (path / "saved_model.pb").is_file():  # an export folder
            if savedmodel:
                path = path / SAVED_MODEL
            else:
                try:
                    name = json.loads((path / METADATA).read_text(encoding="utf-8"))["tflite"]
                except FileNotFoundError:
                    raise UserError(f"{path}: not an export folder (no {METADATA}); give a .tflite file, a "
                                    "SavedModel folder or a folder written by `dsflow export`") from None
                if not name:
                    raise UserError(f"{path}: this export has no TFLite model (exported with export_tflite "
                                    "false); use --savedmodel")
                path = path / name
        self.path = path
        try:
            if self.kind == "tflite":
                with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation notice (see the README)
                    warnings.simplefilter("ignore")
                    interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=threads)
                self._runners = {name: interpreter.get_signature_runner(name) for name in SIGNATURES}
            else:
                loaded = tf.saved_model.load(str(path))
                self._keep = loaded  # the signatures need the loaded object alive
                self._runners = {name: loaded.signatures[name] for name in SIGNATURES}
        except (ValueError, OSError, RuntimeError, KeyError) as e:
            raise UserError(f"{path}: cannot load the exported {self.kind} model: {e}") from None
        meta = {k: v.item() for k, v in self.run("metadata").items()}
        self.version, self.sample_rate = meta["metadata_version"], meta["metadata_sample_rate"]
        if self.version != GRAPH_VERSION:
            raise UserError(f"{path}: model version {self.version}; this client reads version {GRAPH_VERSION}")
        self.win_len, self.win_step = meta["metadata_feature_win_len"], meta["metadata_feature_win_step"]
        self.beam_width = meta["metadata_beam_width"]
        self.alphabet = Alphabet.deserialize(meta["metadata_alphabet"], "<model metadata>")
        self.language = meta["metadata_language"].decode("utf-8")
        self.window = self.sample_rate * self.win_len // 1000
        self.stride = self.sample_rate * self.win_step // 1000
        shapes = self.input_shapes("acoustic")
        self.n_steps, self.n_hidden = shapes["input_node"][1], shapes["previous_state_c"][1]
        self.n_classes = len(self.alphabet) + 1

    def run(self, name: str, **inputs) -> dict:
        out = self._runners[name](**inputs)
        return {k: np.asarray(v if self.kind == "tflite" else v.numpy()) for k, v in out.items()}

    def input_shapes(self, name: str) -> dict:
        runner = self._runners[name]
        if self.kind == "tflite":
            return {k: tuple(v["shape"]) for k, v in runner.get_input_details().items()}
        return {k: tuple(v.shape) for k, v in runner.structured_input_signature[1].items()}
