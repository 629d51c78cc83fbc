"""Checkpoints: the trainer's resumable state folder and the published `checkpoint_dir`. This module owns both
folders' files, writes them and reads them back.

The state folder, WORK = --work_dir/<name from the run's identity>, is not a Snakemake output (Snakemake deletes
outputs before a job runs), so a killed trainer finds it again:
  run.json      the identity: model shape, alphabet, training data and every training setting that changes the
                result (all but `epochs`); another identity gets another WORK, and a WORK whose run.json differs
                is never loaded
  lock          held (flock) by the one trainer of this WORK
  ckpt/         train-N checkpoints, N = DeepSpeech's global step (batches trained), with the weights, Adam
                state, learning rate and the trainer's State as JSON; saved every --checkpoint_secs and at each
                epoch end; tf.train.CheckpointManager points its `checkpoint` file at a new one only after it is
                completely written, and a checkpoint that cannot be read (a save killed while it rewrote one of
                the same step) gives way to the one before it
  best/         best_dev-N (DeepSpeech's best validating model, kept separately)
  metrics.csv   one row per epoch; summaries/ (TensorBoard); flags.json (the flags of the last run)

The published folder (`checkpoint_dir`, built in a temporary sibling and renamed when complete): best_dev-N and
train-N with their state files `best_dev_checkpoint` and `checkpoint` (tf.train's CheckpointState text, as
DeepSpeech wrote them), alphabet.txt (none in bytes_output_mode), flags.json, run.json, metrics.csv and
features.json (the features' settings). `load_model(checkpoint_dir)` reads it back, with the alphabet that
flags.json's bytes_output_mode says.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import socket
from pathlib import Path

from dsflow import UserError, __version__, read_json
from dsflow.atomic import atomic_dir, atomic_open, write_text
from dsflow.log import SHOW, log

METRICS = ["epoch", "train_loss", "dev_loss", "metrics_loss", "epoch_seconds", "audio_seconds_per_second",
           "learning_rate", "skipped_batches", "best_dev_loss", "epochs_without_improvement", "global_step", "event"]
FLAGS, RUN, ALPHABET, FEATURES, METRICS_CSV = "flags.json", "run.json", "alphabet.txt", "features.json", "metrics.csv"
STATE_FILES = {"train": "checkpoint", "best_dev": "best_dev_checkpoint"}


# ---------------------------------------------------------------------------------------------- the state folder

def work_name(ident: dict) -> str:
    """The subfolder of --work_dir holding this identity's state."""
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    model = ident["model"]
    return f"n_hidden{model['n_hidden']}{'-layer_norm' if model['layer_norm'] else ''}-{digest}"


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} there, {b!r} now" if k != "alphabet" else f"{prefix}alphabet differs")
    return out


class Work:
    """A claimed and locked state folder (see the module docstring)."""

    def __init__(self, work_dir: str | Path, ident: dict):
        self.ident = ident
        self.path = Path(work_dir) / work_name(ident)
        self.ckpt_dir, self.best_dir = self.path / "ckpt", self.path / "best"
        self.metrics, self.flags = self.path / METRICS_CSV, self.path / FLAGS
        self._claim()
        self._lock = self._take_lock()

    def _claim(self) -> None:
        """Refuse a folder that holds another run's state; write run.json into a new one."""
        run = self.path / RUN
        if run.exists():
            diff = _differences(json.loads(run.read_text(encoding="utf-8")), self.ident)
            if diff:
                raise UserError(f"{self.path}: holds the training state of another model, data or settings "
                                f"({'; '.join(diff)}). It is never loaded into this one: use another --work_dir "
                                f"(the workflow derives it from these values), or delete {self.path} to start over")
            return
        if any(next((d).glob("*-*"), None) for d in (self.ckpt_dir, self.best_dir) if d.is_dir()):
            raise UserError(f"{self.path}: has checkpoints but no run.json, so what they belong to is unknown; "
                            "use another --work_dir or delete this one")
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(run, json.dumps(self.ident, indent=2) + "\n")

    def _take_lock(self):
        """An exclusive lock for the life of the process: two trainers on one state folder (a job left running by
        a dead Snakemake, then a re-run) would overwrite each other's checkpoints."""
        import fcntl

        f = open(self.path / "lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise UserError(f"{self.path}: another trainer ({holder}) is training this state; stop it first (e.g. "
                            "scancel the SLURM job of an earlier run), or wait for it") from None
        f.truncate(0)
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        return f

    def discard(self) -> None:
        """--load_train init: drop the checkpoints and metrics of this state folder."""
        for d in (self.ckpt_dir, self.best_dir):
            shutil.rmtree(d, ignore_errors=True)
        self.metrics.unlink(missing_ok=True)

    def previous_flags(self, flags: dict) -> list[str]:
        """Flags that changed since the last run in this folder (as 'name old -> new'); records `flags`."""
        changed = []
        if self.flags.exists():
            old = json.loads(self.flags.read_text(encoding="utf-8"))
            changed = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in flags.items() if old.get(k, v) != v]
        write_text(self.flags, json.dumps(flags, indent=2) + "\n")
        return changed


class Saver:
    """The train-N and best_dev-N checkpoints of a state folder, of one tf.train.Checkpoint (model, optimizer,
    the trainer's state as a JSON string, and `extra` objects: float16's loss scale)."""

    def __init__(self, work: Work, net, optimizer, max_to_keep: int, **extra):
        import tensorflow as tf

        self.tf, self.work, self.net, self.optimizer = tf, work, net, optimizer
        self.state = tf.Variable("{}", dtype=tf.string, trainable=False, name="state")
        self.checkpoint = tf.train.Checkpoint(model=net, optimizer=optimizer, state=self.state, **extra)
        self.managers = {"train": tf.train.CheckpointManager(self.checkpoint, str(work.ckpt_dir), max_to_keep,
                                                             checkpoint_name="train"),
                         "best_dev": tf.train.CheckpointManager(self.checkpoint, str(work.best_dir), 1,
                                                                checkpoint_name="best_dev")}
        for name in self.managers:
            self._remove_orphans(name)

    def _directory(self, name: str) -> Path:
        return self.work.ckpt_dir if name == "train" else self.work.best_dir

    def _remove_orphans(self, name: str) -> None:
        """Files of checkpoints the state file does not list (a save killed mid-write)."""
        kept = {Path(p).name for p in self.managers[name].checkpoints}
        for p in self._directory(name).glob(f"{name}-*"):
            m = re.match(rf"({name}-\d+)", p.name)
            if m and m.group(1) not in kept:
                log.info("removing %s (left by an interrupted save)", p)
                shutil.rmtree(p) if p.is_dir() else p.unlink()

    def latest(self, name: str) -> str | None:
        return self.managers[name].latest_checkpoint

    def save(self, name: str, state: dict) -> str:
        """Save `name`-N, N = the state's global step, as DeepSpeech numbered its checkpoints."""
        self.state.assign(json.dumps(state))
        return self.managers[name].save(checkpoint_number=state["global_step"])

    def restore(self, name: str) -> tuple[str, dict] | tuple[None, None]:
        """Weights, optimizer and state of the latest readable `name` checkpoint: (its path, the state), or
        (None, None) when there is none."""
        for path in reversed(self.managers[name].checkpoints):
            try:
                self.checkpoint.read(path).expect_partial().assert_existing_objects_matched()
            except Exception as e:  # TF raises OpError, IndexError, ValueError, ... for a damaged file
                log.warning("%s cannot be read (%s); trying the checkpoint before it", path, str(e).splitlines()[0])
                continue
            return path, json.loads(self.state.numpy().decode("utf-8"))
        return None, None

    def restore_weights(self, path: str) -> None:
        """Weights and optimizer (learning rate included) of `path`, not the state (DeepSpeech's plateau reload)."""
        self.tf.train.Checkpoint(model=self.net, optimizer=self.optimizer).read(path).expect_partial()


def read_state(prefix: str | Path) -> dict:
    """The trainer's state saved in checkpoint `prefix` (for tests and tools)."""
    import tensorflow as tf

    return json.loads(tf.train.load_checkpoint(str(prefix)).get_tensor("state/.ATTRIBUTES/VARIABLE_VALUE"))


# ---------------------------------------------------------------------------------------------- metrics.csv

def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_metrics(path: str | Path, rows: list[dict]) -> None:
    import numpy as np

    def fmt(v):  # losses and the learning rate are float32 values: their shortest float32 text
        return str(np.float32(v)) if isinstance(v, float) else v

    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, METRICS)
        writer.writeheader()
        writer.writerows({k: fmt(v) for k, v in row.items()} for row in rows)


# ---------------------------------------------------------------------------------------------- the published folder

def _link_or_copy(src: Path, dst: Path) -> None:
    """Checkpoint files are never rewritten in place (new numbers, then deletion), so a hard link is safe."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def publish(out: str | Path, saver: Saver, alphabet, flags: dict, features_meta: str | Path,
            rows: list[dict]) -> None:
    """Build the published checkpoint folder `out` atomically (see the module docstring)."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        for name, state_file in STATE_FILES.items():
            prefix = saver.latest(name)
            if prefix is None:
                log.info("no best_dev checkpoint to publish (no dev set, or no finite dev loss)")
                continue
            for f in Path(prefix).parent.glob(Path(prefix).name + ".*"):
                _link_or_copy(f, tmp / f.name)
            name = Path(prefix).name  # tf.train's CheckpointState text format, as DeepSpeech's state files
            (tmp / state_file).write_text(f'model_checkpoint_path: "{name}"\nall_model_checkpoint_paths: "{name}"\n',
                                          encoding="utf-8")
        if not alphabet.bytes_output_mode:  # the UTF-8 bytes have no alphabet file: flags.json records the mode
            (tmp / ALPHABET).write_text(alphabet.to_file_text(), encoding="utf-8")
        (tmp / FLAGS).write_text(json.dumps(flags, indent=2) + "\n", encoding="utf-8")
        (tmp / RUN).write_text(json.dumps({**saver.work.ident, "dsflow_version": __version__}, indent=2) + "\n",
                               encoding="utf-8")
        shutil.copyfile(features_meta, tmp / FEATURES)
        write_metrics(tmp / METRICS_CSV, rows)
    log.info("published %s", out, extra=SHOW)


def _load_deepspeech(checkpoint_dir: Path, which: str, alphabet_path, bytes_output_mode: bool = False):
    """A DeepSpeech 0.9.x checkpoint's model: its shapes say n_hidden, the output size and layer_norm."""
    import tensorflow as tf

    from dsflow import dscheckpoint, model
    from dsflow.alphabet import Alphabet, UTF8Alphabet

    prefix = dscheckpoint.find(checkpoint_dir, which)
    if prefix is None:
        raise UserError(f"{checkpoint_dir}: no checkpoint")
    shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    if "layer_1/weights" not in shapes:
        raise UserError(f"{prefix}: neither a dsflow checkpoint folder (no {FLAGS}) nor a DeepSpeech checkpoint "
                        "(no layer_1/weights)")
    beside, flags_txt = Path(prefix).parent / ALPHABET, Path(prefix).parent / "flags.txt"
    if bytes_output_mode or (flags_txt.is_file() and "--bytes_output_mode" in flags_txt.read_text().split()):
        alphabet = UTF8Alphabet()
    else:
        alphabet = Alphabet.from_file(beside if beside.is_file() else alphabet_path or "data/alphabet.txt")
    n_hidden, n_classes = shapes["layer_1/weights"][1], shapes["layer_6/weights"][1]
    if n_classes != len(alphabet) + 1:
        raise UserError(f"{prefix}: its output layer (layer_6/weights {shapes['layer_6/weights']}) has {n_classes} "
                        f"classes, but {alphabet.source} has {len(alphabet)} labels + blank: give the alphabet it was "
                        "trained with (alphabet_config_path, or bytes_output_mode for 256 classes)")
    trained_with = {"n_hidden": n_hidden, "layer_norm": "layer_1/LayerNorm/gamma" in shapes, "relu_clip": 20.0,
                    "checkpoint_format": "DeepSpeech 0.9.x"}
    net = model.DeepSpeech(n_hidden, n_classes, trained_with["layer_norm"])
    opt = model.adam(0.001)  # load_into fills an optimizer too; inference does not use it
    dscheckpoint.load_into(net, opt, prefix, which, 0, alphabet, load_cudnn=True, training=False)
    net.alphabet, net.flags, net.checkpoint = alphabet, trained_with, prefix
    log.info("loaded the DeepSpeech checkpoint %s (n_hidden %d, %d labels)", prefix, n_hidden, len(alphabet))
    return net


def flags(checkpoint_dir: str | Path) -> dict:
    """The training flags of a published checkpoint folder."""
    return read_json(Path(checkpoint_dir) / FLAGS,
                     f"{checkpoint_dir}: no {FLAGS}; not a checkpoint folder written by `dsflow train`")


def features_meta(checkpoint_dir: str | Path) -> dict | None:
    """The feature settings (sample rate, windows) the model of a published checkpoint folder was trained with;
    None for a DeepSpeech checkpoint folder (it does not record them)."""
    path = Path(checkpoint_dir) / FEATURES
    if not path.is_file() and not (Path(checkpoint_dir) / FLAGS).is_file():
        return None
    return read_json(path, f"{checkpoint_dir}: no {FEATURES} (the feature settings the model was trained with); "
                           "not a checkpoint folder written by `dsflow train`")


def load_model(checkpoint_dir: str | Path, which: str = "auto", alphabet_path: str | Path | None = None,
               bytes_output_mode: bool = False):
    """The model (dsflow.model.DeepSpeech) of a published checkpoint folder (its alphabet: UTF-8 bytes if flags.json
    says bytes_output_mode, else its alphabet.txt), or of a DeepSpeech 0.9.x checkpoint folder (UTF-8 bytes with
    `bytes_output_mode` or when its flags.txt has --bytes_output_mode, else its alphabet.txt, else
    `alphabet_path`), with its weights.

    which: 'best' (best_dev), 'last' (train), or 'auto' (best, else last; DeepSpeech's load_evaluate).
    The model gets `.alphabet` (Alphabet), `.flags` (the training flags) and `.checkpoint` (the path read).
    """
    import tensorflow as tf

    from dsflow.alphabet import from_config
    from dsflow.model import DeepSpeech

    checkpoint_dir = Path(checkpoint_dir)
    if not (checkpoint_dir / FLAGS).is_file():
        return _load_deepspeech(checkpoint_dir, which, alphabet_path, bytes_output_mode)
    trained_with = flags(checkpoint_dir)
    alphabet = from_config(checkpoint_dir / ALPHABET, trained_with.get("bytes_output_mode", False))
    if which not in ("auto", "best", "last"):
        raise UserError(f"load_evaluate={which!r}: expected auto, best or last")
    path = None
    if which in ("auto", "best"):
        path = tf.train.latest_checkpoint(str(checkpoint_dir), STATE_FILES["best_dev"])
        if path is None and which == "auto":
            log.warning("%s: no best_dev checkpoint (no dev set?); using the last training checkpoint", checkpoint_dir)
    if which == "last" or (which == "auto" and path is None):
        path = tf.train.latest_checkpoint(str(checkpoint_dir), STATE_FILES["train"])
    if path is None:
        raise UserError(f"{checkpoint_dir}: no {'best_dev' if which == 'best' else 'train'} checkpoint")
    net = DeepSpeech(trained_with["n_hidden"], len(alphabet) + 1, trained_with["layer_norm"],
                     trained_with["relu_clip"])
    tf.train.Checkpoint(model=net).read(path).expect_partial().assert_existing_objects_matched()
    net.alphabet, net.flags, net.checkpoint = alphabet, trained_with, path
    log.info("loaded %s (n_hidden %d, %d labels)", path, net.n_hidden, len(alphabet))
    return net
