"""`dsflow train`: DeepSpeech 0.9.3's training loop (train.py `train()`), resumable after any kill.

Resumable state lives in WORK = --work_dir/<name from the run's identity> (not a Snakemake output, so
Snakemake never deletes it). The identity is the model's shape (n_hidden, layer_norm, n_input, n_context,
alphabet labels) and the training data (sha256 of the train features' index.csv): change any of them and
training starts in a fresh WORK; a re-run of the same command finds its WORK and continues.
  run.json      the identity; a WORK whose run.json differs is never loaded (clear error instead)
  ckpt/         train-N checkpoints (weights, Adam slots and step, learning rate, epoch, step in the
                epoch, best dev loss, epochs without improvement, ...), every --checkpoint_secs and at
                each epoch end; tf.train.CheckpointManager points its `checkpoint` file at a new one only
                after it is completely written, and numbers never repeat, so "latest" is always whole
  best/         best_dev-N (DeepSpeech's best validating model, kept separately)
  metrics.csv   one row per epoch; summaries/ (TensorBoard, unless --summary_dir); flags.json (last run)
At the end --checkpoint_dir is published atomically (built in a temporary sibling, then renamed): best_dev-N,
train-N, their state files (best_dev_checkpoint, checkpoint), alphabet.txt, flags.json, run.json,
metrics.csv, features.json. `dsflow.model.load(checkpoint_dir)` reads it back.

Differences from DeepSpeech (which lost this on resume, reference section 9.1): `--load_train auto`
resumes the LATEST state (not best_dev) mid-epoch, with the epoch counter, best dev loss, early-stop /
plateau counter, learning rate and Adam state; `--epochs` is the total. A non-finite loss skips the update.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import re
import shutil
import signal
import socket
import time
from datetime import timedelta
from pathlib import Path

from dsflow import UserError, __version__, gpu
from dsflow.atomic import atomic_dir, atomic_open, write_text
from dsflow.config import cli_bool
from dsflow.log import Progress, log
from dsflow.mfcc import N_INPUT

# Counters of the training loop, saved with every checkpoint: name -> initial value (float -> float64).
STATE = {
    "epoch": 0,  # completed epochs
    "step": 0,  # batches done in the current epoch
    "step_batch_size": 0,  # the train_batch_size of those batches
    "global_step": 0,  # batches done in all (skipped ones included)
    "loss_sum": 0.0, "loss_batches": 0, "skipped_batches": 0,  # this epoch's train loss so far
    "seconds": 0.0, "audio_seconds": 0.0,  # this epoch's training time and audio so far
    "best_dev_loss": math.inf,
    "epochs_without_improvement": 0,
    "early_stopped": 0,
}
METRICS = ["epoch", "train_loss", "dev_loss", "epoch_seconds", "audio_seconds_per_second", "learning_rate",
           "skipped_batches", "best_dev_loss", "epochs_without_improvement", "global_step", "event"]
IDENTITY = ("n_hidden", "layer_norm", "n_input", "n_context", "alphabet", "train_index_sha256")


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train the model (DeepSpeech's train(); resumable from --work_dir)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument

    def flag(name, **kw):
        a(f"--{name}", nargs="?", const=True, type=cli_bool, metavar="true|false", **kw)

    a("--train_features", required=True, help="features folder of the training split (`dsflow features`)")
    a("--dev_features", default="", help="comma-separated features folders of the dev sets; empty: no "
                                         "validation, best_dev, early stopping or plateau handling")
    a("--alphabet_config_path", required=True)
    a("--checkpoint_dir", required=True, help="output: published atomically at the end")
    a("--work_dir", required=True, help="root of the resumable training state (not an output); the state of "
                                        "a run is in a subfolder named by its model shape and training data")
    a("--epochs", type=int, default=75, help="TOTAL number of epochs (more on a re-run continues)")
    a("--learning_rate", type=float, default=0.001)
    flag("force_initialize_learning_rate", default=False,
         help="on resume, use --learning_rate instead of the stored one (which DeepSpeech keeps otherwise)")
    a("--beta1", type=float, default=0.9)
    a("--beta2", type=float, default=0.999)
    a("--epsilon", type=float, default=1e-8)
    a("--dropout_rate", type=float, default=0.05)
    for n in (2, 3, 6):
        a(f"--dropout_rate{n}", type=float, default=-1.0, help="-1: dropout_rate")
    a("--relu_clip", type=float, default=20.0)
    a("--n_hidden", type=int, default=2048)
    flag("layer_norm", default=False)
    a("--random_seed", type=int, default=4568)
    a("--train_batch_size", type=int, default=1)
    a("--dev_batch_size", type=int, default=1)
    flag("automatic_mixed_precision", default=False, help="bfloat16 compute, float32 weights and loss")
    a("--checkpoint_secs", type=float, default=600, help="seconds between checkpoints within an epoch (0: off)")
    a("--max_to_keep", type=int, default=5, help="train-N checkpoints kept in --work_dir")
    a("--load_train", default="auto", choices=["auto", "last", "best", "init"],
      help="auto/last: latest state in --work_dir (auto: or a fresh model); best: its best_dev; init: discard it")
    flag("early_stop", default=False)
    a("--es_epochs", type=int, default=25)
    a("--es_min_delta", type=float, default=0.05)
    flag("reduce_lr_on_plateau", default=False)
    a("--plateau_epochs", type=int, default=10)
    a("--plateau_reduction", type=float, default=0.1)
    a("--threads", type=int, default=0, help="TensorFlow intra-op threads (0: TensorFlow's default)")
    a("--metrics", help="also write the per-epoch metrics CSV here")
    a("--summary_dir", help="TensorBoard summaries (default: WORK/summaries)")
    p.set_defaults(func=_main)


def _main(args) -> int:
    gpu.init_tensorflow(args.threads)  # Snakemake's {threads} for TensorFlow's pools
    return train(args)


# ---------------------------------------------------------------------------------------------- helpers

def _flags(args) -> dict:
    return {k: v for k, v in sorted(vars(args).items()) if k not in ("func", "command", "log")}


def _check_args(args) -> None:
    problems = []
    for name in ("epochs", "max_to_keep", "es_epochs"):
        if getattr(args, name) < 0:
            problems.append(f"--{name} must be >= 0")
    for name in ("n_hidden", "train_batch_size", "dev_batch_size"):
        if getattr(args, name) < 1:
            problems.append(f"--{name} must be >= 1")
    for name in ("dropout_rate", "dropout_rate2", "dropout_rate3", "dropout_rate6"):
        value = getattr(args, name)
        if not (0 <= value < 1 or (name != "dropout_rate" and value == -1)):
            extra = " or -1 (= dropout_rate)" if name != "dropout_rate" else ""
            problems.append(f"--{name}={value}: must be in [0, 1){extra}")
    if args.reduce_lr_on_plateau and args.plateau_epochs < 1:
        problems.append("--plateau_epochs must be >= 1 with --reduce_lr_on_plateau true")
    if args.max_to_keep < 1:
        problems.append("--max_to_keep must be >= 1 (the latest train checkpoint is what a re-run resumes)")
    if problems:
        raise UserError("dsflow train: " + "; ".join(problems))


def identity(args, alphabet) -> dict:
    """What a WORK folder's state belongs to: the model's shape and the training data."""
    from dsflow import dataset
    from dsflow.model import N_CONTEXT, N_INPUT

    index = Path(args.train_features) / dataset.INDEX
    try:
        digest = hashlib.sha256(index.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise UserError(f"{index}: no feature index; run `dsflow features` for the training split first") from None
    return {"n_hidden": args.n_hidden, "layer_norm": bool(args.layer_norm), "n_input": N_INPUT,
            "n_context": N_CONTEXT, "alphabet": alphabet.labels, "train_index_sha256": digest}


def work_name(ident: dict) -> str:
    """The subfolder of --work_dir holding this identity's state: another model shape or training set
    gets a fresh one, and a re-run of the same finds its own."""
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    return f"n_hidden{ident['n_hidden']}{'-layer_norm' if ident['layer_norm'] else ''}-{digest}"


def _claim_work(work: Path, ident: dict) -> None:
    """Refuse a WORK folder that holds another run's state; write run.json into a new one."""
    run = work / "run.json"
    if run.exists():
        old = json.loads(run.read_text(encoding="utf-8"))
        diff = [f"{k}: {old.get(k)!r} there, {ident[k]!r} now" if k != "alphabet" else "alphabet differs"
                for k in IDENTITY if old.get(k) != ident[k]]
        if diff:
            raise UserError(f"{work}: holds the training state of another model or training set ({'; '.join(diff)}). "
                            "It is never loaded into this one: use another --work_dir (the workflow derives it "
                            f"from these values), or delete {work} to start over")
        return
    if any(next((work / d).glob("*-*"), None) for d in ("ckpt", "best")):
        raise UserError(f"{work}: has checkpoints but no run.json, so what they belong to is unknown; "
                        "use another --work_dir or delete this one")
    work.mkdir(parents=True, exist_ok=True)
    write_text(run, json.dumps(ident, indent=2) + "\n")


def _lock_work(work: Path):
    """Hold an exclusive lock on WORK for the life of the process: two trainers on one state folder (a job
    left running by a dead Snakemake, then a re-run) would overwrite each other's checkpoints."""
    import fcntl

    f = open(work / "lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise UserError(f"{work}: another trainer ({holder}) is training this state; stop it first (e.g. "
                        "scancel the SLURM job of an earlier run), or wait for it") from None
    f.truncate(0)
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    return f


def _next_number(directory: Path, name: str) -> int:
    """Checkpoint numbers only grow, so a save never rewrites a checkpoint that `checkpoint` points to."""
    numbers = [int(m.group(1)) for p in directory.glob(f"{name}-*") if (m := re.match(rf"{name}-(\d+)", p.name))]
    return max(numbers, default=0) + 1


def _remove_orphans(manager, directory: Path, name: str) -> None:
    """Files of checkpoints the state file does not list (a save killed mid-write)."""
    kept = {Path(p).name for p in manager.checkpoints}
    for p in directory.glob(f"{name}-*"):
        m = re.match(rf"({name}-\d+)", p.name)
        if m and m.group(1) not in kept:
            log.info("removing %s (left by an interrupted save)", p)
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def _read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write_metrics(path: Path, rows: list[dict]) -> None:
    import numpy as np

    def fmt(v):  # losses and the learning rate are float32 values: their shortest float32 text
        return str(np.float32(v)) if isinstance(v, float) else v

    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, METRICS)
        writer.writeheader()
        writer.writerows({k: fmt(v) for k, v in row.items()} for row in rows)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Checkpoint files are never rewritten in place (new numbers, then deletion), so a hard link is safe."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _state_file(prefix: str) -> str:
    """tf.train's CheckpointState text format, as DeepSpeech's `checkpoint`/`best_dev_checkpoint`."""
    return f'model_checkpoint_path: "{prefix}"\nall_model_checkpoint_paths: "{prefix}"\n'


def _native_bf16() -> bool:
    try:
        return bool(re.search(r"\b(amx_bf16|avx512_bf16)\b", Path("/proc/cpuinfo").read_text()))
    except OSError:
        return False


def _nonfinite(losses, names) -> list[str]:
    import numpy as np

    return [n.decode("utf-8", "replace") for n, v in zip(names.numpy(), losses) if not np.isfinite(v)]


# ---------------------------------------------------------------------------------------------- training

def step_functions(net, opt, rates, dtype, n_input: int = N_INPUT):
    """The compiled steps: gradients(batch..., seed) -> (per-utterance losses, gradients) without applying
    them (the caller skips the update on a non-finite loss), apply(gradients), evaluate(batch...) -> losses."""
    import tensorflow as tf

    from dsflow import model

    batch = [tf.TensorSpec([None, None, n_input], tf.float32), tf.TensorSpec([None], tf.int32),
             tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32)]

    @tf.function(input_signature=batch + [tf.TensorSpec([2], tf.int64)])
    def gradients(features, feature_lengths, labels, label_lengths, seed):
        with tf.GradientTape() as tape:
            logits = net(features, rates, seed, dtype)
            losses = model.ctc_loss(logits, feature_lengths, labels, label_lengths)
            loss = tf.reduce_mean(losses)  # DeepSpeech: mean over the batch, no length normalization
        return losses, tape.gradient(loss, net.trainable_variables)

    @tf.function
    def apply(grads):
        opt.apply_gradients(zip(grads, net.trainable_variables))

    @tf.function(input_signature=batch)
    def evaluate(features, feature_lengths, labels, label_lengths):
        return model.ctc_loss(net(features, None, None, dtype), feature_lengths, labels, label_lengths)

    return gradients, apply, evaluate


class Trainer:
    def __init__(self, args):
        import tensorflow as tf

        from dsflow import dataset, model
        from dsflow.alphabet import Alphabet, AlphabetError
        from dsflow.schedule import Schedule

        self.args, self.tf, self.dataset = args, tf, dataset
        try:
            self.alphabet = Alphabet.from_file(args.alphabet_config_path)
        except AlphabetError as e:
            raise UserError(f"--alphabet_config_path: {e}") from None
        self.ident = identity(args, self.alphabet)
        self.work = Path(args.work_dir) / work_name(self.ident)
        _claim_work(self.work, self.ident)
        self.lock = _lock_work(self.work)
        log.info("training state: %s", self.work)
        self.dev_dirs = [d for d in args.dev_features.split(",") if d.strip()]
        self.train_info = dataset.info(args.train_features)
        self.durations = dict(zip(self.train_info["wav_filename"], self.train_info["duration"]))
        self.n_batches = len(self.train_info) // args.train_batch_size
        if self.n_batches == 0:
            raise UserError(f"{args.train_features}: {len(self.train_info)} utterances, fewer than --train_batch_size "
                            f"{args.train_batch_size}; the last partial batch is dropped (DeepSpeech), so an epoch "
                            "would be empty")
        # Built once, iterated every epoch (no shuffling in DeepSpeech: each epoch has the same order).
        self.train_data = dataset.load(args.train_features, self.alphabet, args.train_batch_size, train=True)
        self.dev_data = {d: (dataset.load(d, self.alphabet, args.dev_batch_size, train=False),
                             math.ceil(len(dataset.info(d)) / args.dev_batch_size)) for d in self.dev_dirs}
        self.schedule = Schedule(args.early_stop, args.es_epochs, args.es_min_delta, args.reduce_lr_on_plateau,
                                 args.plateau_epochs, args.plateau_reduction)

        tf.random.set_seed(args.random_seed)
        self.dtype = tf.bfloat16 if args.automatic_mixed_precision else tf.float32
        if args.automatic_mixed_precision and not tf.config.list_physical_devices("GPU") and not _native_bf16():
            log.warning("--automatic_mixed_precision: this CPU has no native bfloat16 (amx_bf16/avx512_bf16), "
                        "so it is not faster here (bench/bench_train.py measured 0.9x of float32)")
        self.net = model.DeepSpeech(args.n_hidden, len(self.alphabet) + 1, args.layer_norm, args.relu_clip,
                                    seed=args.random_seed)
        self.opt = model.adam(args.learning_rate, args.beta1, args.beta2, args.epsilon)
        self.opt.build(self.net.trainable_variables)
        self.state_vars = tf.Module(name="state")
        for k, v in STATE.items():
            setattr(self.state_vars, k, tf.Variable(v, dtype=tf.float64 if isinstance(v, float) else tf.int64,
                                                    trainable=False, name=k))
        self.st = dict(STATE)
        self.ckpt = tf.train.Checkpoint(model=self.net, optimizer=self.opt, state=self.state_vars)
        self.ckpt_dir, self.best_dir = self.work / "ckpt", self.work / "best"
        self.train_mgr = tf.train.CheckpointManager(self.ckpt, str(self.ckpt_dir), args.max_to_keep,
                                                    checkpoint_name="train")
        self.best_mgr = tf.train.CheckpointManager(self.ckpt, str(self.best_dir), 1, checkpoint_name="best_dev")
        self.metrics_path = self.work / "metrics.csv"
        summary_dir = Path(args.summary_dir) if args.summary_dir else self.work / "summaries"
        self.writers = {k: tf.summary.create_file_writer(str(summary_dir / k)) for k in ("train", "dev")}
        rates = model.dropout_rates(args.dropout_rate, args.dropout_rate2, args.dropout_rate3, args.dropout_rate6)
        self.gradients, self.apply, self.evaluate = step_functions(self.net, self.opt, rates, self.dtype,
                                                                   N_INPUT)
        self.signal = None
        self.last_save = time.monotonic()

    def _scalar(self, tag: str, value: float, step: int) -> None:
        """A TensorBoard scalar (tf.summary.scalar without needing the tensorboard package installed)."""
        tf = self.tf
        meta = tf.compat.v1.SummaryMetadata()
        meta.plugin_data.plugin_name = "scalars"
        tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=meta)

    @staticmethod
    def _inputs(batch):
        return batch["features"], batch["feature_lengths"], batch["labels"], batch["label_lengths"]

    # -- checkpoints

    def _save(self, which: str) -> str:
        self._store_state()
        manager, directory, name = ((self.train_mgr, self.ckpt_dir, "train") if which == "train"
                                    else (self.best_mgr, self.best_dir, "best_dev"))
        path = manager.save(checkpoint_number=_next_number(directory, name))
        if which == "train":
            self.last_save = time.monotonic()
        log.info("saved %s (epoch %d, step %d, global step %d)", path, self.st["epoch"], self.st["step"],
                 self.st["global_step"])
        return path

    def _store_state(self) -> None:
        for k, v in self.st.items():
            getattr(self.state_vars, k).assign(v)

    def _restore(self) -> str | None:
        args = self.args
        for manager, directory, name in ((self.train_mgr, self.ckpt_dir, "train"),
                                         (self.best_mgr, self.best_dir, "best_dev")):
            _remove_orphans(manager, directory, name)
        if args.load_train == "init":
            if self.train_mgr.checkpoints or self.best_mgr.checkpoints:
                log.warning("--load_train init: discarding the training state in %s", self.work)
            for d in (self.ckpt_dir, self.best_dir):
                shutil.rmtree(d, ignore_errors=True)
            self.metrics_path.unlink(missing_ok=True)
            self.train_mgr = self.tf.train.CheckpointManager(self.ckpt, str(self.ckpt_dir), args.max_to_keep,
                                                             checkpoint_name="train")
            self.best_mgr = self.tf.train.CheckpointManager(self.ckpt, str(self.best_dir), 1,
                                                            checkpoint_name="best_dev")
            return None
        path = (self.best_mgr if args.load_train == "best" else self.train_mgr).latest_checkpoint
        if path is None:
            if args.load_train != "auto":
                which = "best_dev" if args.load_train == "best" else "train"
                raise UserError(f"--load_train {args.load_train}: no {which} checkpoint in {self.work}")
            return None
        self.ckpt.read(path).expect_partial().assert_existing_objects_matched()
        self.st = {k: getattr(self.state_vars, k).numpy().item() for k in STATE}
        return path

    # -- the loop

    def run(self) -> int:
        args = self.args
        started = time.monotonic()
        previous = self.work / "flags.json"
        flags = _flags(args)
        if previous.exists():
            old = json.loads(previous.read_text(encoding="utf-8"))
            changed = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in flags.items() if old.get(k, v) != v]
            if changed:
                log.info("flags changed since the last run in %s: %s", self.work, ", ".join(changed))
        write_text(previous, json.dumps(flags, indent=2) + "\n")

        path = self._restore()
        st = self.st
        if path is None:
            log.info("starting from a fresh model (%s parameters, n_hidden %d)", f"{self.net.count_params():,}",
                     args.n_hidden)
        else:
            log.info("resuming from %s: epoch %d, step %d, global step %d, Adam iterations %d, learning rate %g, "
                     "best dev loss %g, epochs without improvement %d", path, st["epoch"], st["step"],
                     st["global_step"], int(self.opt.iterations.numpy()), float(self.opt.learning_rate.numpy()),
                     st["best_dev_loss"], st["epochs_without_improvement"])
        lr = float(self.opt.learning_rate.numpy())
        if path is None or args.force_initialize_learning_rate:
            self.opt.learning_rate.assign(args.learning_rate)
        elif not math.isclose(lr, args.learning_rate, rel_tol=1e-6):
            log.info("keeping the stored learning rate %g, not --learning_rate %g (DeepSpeech's rule; "
                     "--force_initialize_learning_rate true resets it)", lr, args.learning_rate)
        self.schedule.best_dev_loss = st["best_dev_loss"]
        self.schedule.epochs_without_improvement = st["epochs_without_improvement"]
        # Metrics rows of epochs after the restored state were never checkpointed: they are redone.
        rows = [r for r in _read_metrics(self.metrics_path) if int(r["epoch"]) < st["epoch"]]
        _write_metrics(self.metrics_path, rows)

        if st["early_stopped"] and args.early_stop:
            log.info("training stopped early at epoch %d before; publishing", st["epoch"])
        elif st["epoch"] >= args.epochs:
            log.info("%d epochs trained (--epochs %d); publishing", st["epoch"], args.epochs)
        else:
            st["early_stopped"] = 0
            handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
            try:
                self._check_longest_batch()
                while st["epoch"] < args.epochs:
                    if not self._epoch(rows):
                        return 128 + self.signal
                    if st["early_stopped"]:
                        break
            finally:
                for s, h in handlers.items():
                    signal.signal(s, h)
        if self.train_mgr.latest_checkpoint is None:
            self._save("train")
        self._publish(rows)
        log.info("FINISHED optimization in %s", timedelta(seconds=round(time.monotonic() - started)))
        return 0

    def _on_signal(self, signum, frame):
        if self.signal is not None:
            if signum == signal.SIGTERM:  # SLURM and srun may both send one at the time limit: keep saving
                return
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        log.warning("signal %d: saving the state after this batch, then stopping (again: stop now)", signum)
        self.signal = signum

    def _check_longest_batch(self) -> None:
        """One training step on the longest batch, update not applied: out of memory shows in seconds."""
        args = self.args
        t0 = time.monotonic()
        batch = self.dataset.longest_batch(args.train_features, self.alphabet, args.train_batch_size)
        try:
            losses, _ = self.gradients(*self._inputs(batch), self.tf.constant([args.random_seed, -1], self.tf.int64))
        except self.tf.errors.ResourceExhaustedError as e:
            raise UserError(f"out of memory on the longest training batch ({batch['features'].shape[0]} utterances "
                            f"of up to {batch['features'].shape[1]} frames): lower --train_batch_size ({e.message})"
                            ) from None
        log.info("longest batch (%d utterances, %d frames) fits: one step in %.1f s, loss %.3f (update not applied)",
                 batch["features"].shape[0], batch["features"].shape[1], time.monotonic() - t0,
                 float(losses.numpy().mean()))

    def _epoch(self, rows: list[dict]) -> bool:
        """Train one epoch (or its rest), validate, apply the schedule, checkpoint. False if interrupted."""
        import numpy as np

        tf, args, st = self.tf, self.args, self.st
        epoch, bs = st["epoch"], args.train_batch_size
        if st["step"] and st["step_batch_size"] != bs:
            log.info("the saved step %d was counted in batches of %d; resuming with batches of %d",
                     st["step"], st["step_batch_size"], bs)
            st["step"] = st["step"] * st["step_batch_size"] // bs
        st["step_batch_size"] = bs
        lr = float(self.opt.learning_rate.numpy())
        start = st["step"]
        if start < self.n_batches:
            log.info("Training epoch %d%s...", epoch, f" from step {start}" if start else "")
            data = self.train_data.skip(start) if start else self.train_data
            with Progress(f"Epoch {epoch} | Training", self.n_batches - start, "batches") as progress:
                t = time.monotonic()
                for batch in data:
                    seed = tf.constant([args.random_seed, st["global_step"]], tf.int64)
                    losses, grads = self.gradients(*self._inputs(batch), seed)
                    losses = losses.numpy()
                    if np.isfinite(losses).all():
                        self.apply(grads)
                        st["loss_sum"] += float(losses.mean())
                        st["loss_batches"] += 1
                    else:
                        log.error("The following files caused an infinite (or NaN) loss: %s (update skipped)",
                                  ",".join(_nonfinite(losses, batch["wav_filename"])))
                        st["skipped_batches"] += 1
                    names = [n.decode("utf-8") for n in batch["wav_filename"].numpy()]
                    st["audio_seconds"] += float(sum(self.durations.get(n, 0.0) for n in names))
                    st["step"] += 1
                    st["global_step"] += 1
                    now = time.monotonic()
                    st["seconds"] += now - t
                    t = now
                    with self.writers["train"].as_default():
                        self._scalar("step_loss", float(losses.mean()), st["global_step"])
                    mean = st["loss_sum"] / max(st["loss_batches"], 1)
                    progress.what = f"Epoch {epoch} | Training | loss {mean:.3f}"
                    progress.update()
                    if self.signal is not None:
                        self._save("train")
                        log.warning("stopped by signal %d; re-run the same command to continue", self.signal)
                        return False
                    if args.checkpoint_secs > 0 and now - self.last_save >= args.checkpoint_secs:
                        self._save("train")
                        t = time.monotonic()
        train_loss = st["loss_sum"] / st["loss_batches"] if st["loss_batches"] else math.nan
        rate = st["audio_seconds"] / st["seconds"] if st["seconds"] else math.nan
        log.info("Finished training epoch %d - loss: %f (%.0f s, %.2f audio seconds/s, learning rate %g%s)",
                 epoch, train_loss, st["seconds"], rate, lr,
                 f", {st['skipped_batches']} batches skipped" if st["skipped_batches"] else "")
        row = {"epoch": epoch, "train_loss": train_loss, "dev_loss": "", "epoch_seconds": round(st["seconds"], 3),
               "audio_seconds_per_second": rate, "learning_rate": lr, "skipped_batches": st["skipped_batches"],
               "global_step": st["global_step"], "event": ""}
        events = []
        st.update(epoch=epoch + 1, step=0, loss_sum=0.0, loss_batches=0, skipped_batches=0, seconds=0.0,
                  audio_seconds=0.0)
        if self.dev_dirs:
            dev_loss = self._validate(epoch)
            decision = self.schedule.update(dev_loss)
            st["best_dev_loss"] = self.schedule.best_dev_loss
            st["epochs_without_improvement"] = self.schedule.epochs_without_improvement
            row["dev_loss"] = dev_loss
            if decision.save_best:
                path = self._save("best")
                log.info("Saved new best validating model with loss %f to: %s", dev_loss, path)
                events.append("best")
            if decision.stop:
                st["early_stopped"] = 1
                log.info("Early stop triggered as the loss did not improve the last %d epochs",
                         st["epochs_without_improvement"])
                events.append("early stop")
            if decision.reduce_lr:
                best = self.best_mgr.latest_checkpoint
                tf.train.Checkpoint(model=self.net, optimizer=self.opt).read(best).expect_partial()
                self.opt.learning_rate.assign(self.opt.learning_rate * args.plateau_reduction)
                new_lr = float(self.opt.learning_rate.numpy())
                log.info("Encountered a plateau, reducing learning rate to %g", new_lr)
                path = self._save("best")
                log.info("Saved best validating model with reduced learning rate to: %s", path)
                events.append(f"plateau: reloaded best_dev, learning rate {new_lr:g}")
        row.update(best_dev_loss=st["best_dev_loss"], epochs_without_improvement=st["epochs_without_improvement"],
                   event="; ".join(events))
        rows.append(row)
        _write_metrics(self.metrics_path, rows)  # before the checkpoint: a re-run drops rows past the state
        for name, value in (("loss", train_loss), ("learning_rate", lr), ("audio_seconds_per_second", rate),
                            ("epoch_seconds", row["epoch_seconds"])):
            with self.writers["train"].as_default():
                self._scalar(name, value, epoch)
        if self.dev_dirs:
            with self.writers["dev"].as_default():
                self._scalar("loss", row["dev_loss"], epoch)
        for w in self.writers.values():
            w.flush()
        self._save("train")
        log.info("-" * 80)
        return True

    def _validate(self, epoch: int) -> float:
        """DeepSpeech: per dev set the mean batch loss; dev_loss = sum(set_loss * steps) / sum(steps)."""
        total, steps = 0.0, 0
        for d in self.dev_dirs:
            log.info("Validating epoch %d on %s...", epoch, d)
            set_total, set_steps = 0.0, 0
            data, n = self.dev_data[d]
            with Progress(f"Epoch {epoch} | Validation | {d}", n, "batches") as progress:
                for batch in data:
                    losses = self.evaluate(*self._inputs(batch)).numpy()
                    bad = _nonfinite(losses, batch["wav_filename"])
                    if bad:
                        log.error("The following files caused an infinite (or NaN) loss: %s", ",".join(bad))
                    set_total += float(losses.mean())
                    set_steps += 1
                    progress.update()
            set_loss = set_total / set_steps
            log.info("Finished validating epoch %d on %s - loss: %f", epoch, d, set_loss)
            total += set_loss * set_steps
            steps += set_steps
        return total / steps

    # -- publishing

    def _publish(self, rows: list[dict]) -> None:
        args = self.args
        out = Path(args.checkpoint_dir)
        with atomic_dir(out) as tmp:
            for prefix, state_file in ((self.best_mgr.latest_checkpoint, "best_dev_checkpoint"),
                                       (self.train_mgr.latest_checkpoint, "checkpoint")):
                if prefix is None:
                    log.info("no best_dev checkpoint to publish (no dev set, or no finite dev loss)")
                    continue
                for f in Path(prefix).parent.glob(Path(prefix).name + ".*"):
                    _link_or_copy(f, tmp / f.name)
                (tmp / state_file).write_text(_state_file(Path(prefix).name), encoding="utf-8")
            shutil.copyfile(args.alphabet_config_path, tmp / "alphabet.txt")
            (tmp / "flags.json").write_text(json.dumps(_flags(args), indent=2) + "\n", encoding="utf-8")
            (tmp / "run.json").write_text(json.dumps({**self.ident, "dsflow_version": __version__}, indent=2) + "\n",
                                          encoding="utf-8")
            shutil.copyfile(Path(args.train_features) / self.dataset.META, tmp / "features.json")
            _write_metrics(tmp / "metrics.csv", rows)
        if args.metrics:
            _write_metrics(Path(args.metrics), rows)
        log.info("published %s", out)


def train(args) -> int:
    _check_args(args)
    return Trainer(args).run()
