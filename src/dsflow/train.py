"""`dsflow train`: DeepSpeech 0.9.3's training loop (train.py `train()`), resumable after any kill.

The loop: build the data, the model and the optimizer; claim the state folder (dsflow.checkpoints.Work) of this
run's identity and restore its latest checkpoint; then per epoch a batch loop (one update per batch, a checkpoint
every --checkpoint_secs) and an end-of-epoch step (validation, DeepSpeech's early stop / plateau schedule, the
metrics row, a checkpoint); at the end the checkpoint folder is published. Everything the loop counts is one
`State`, saved with every checkpoint. On several devices or workers (dsflow.distribute: DeepSpeech's towers) a
step takes one batch per device and makes one update; `step` and `global_step` count steps.

The identity of a run is its model shape, alphabet, training and dev data (the features' content digests) and
every training setting that changes the result: change any of them and training starts in a fresh state folder;
re-run the same command and it continues, mid-epoch too. Only `epochs` (the TOTAL number of epochs: a larger value
continues) and settings that do not change the model (checkpoint_secs, max_to_keep, threads, ...) may differ.

Differences from DeepSpeech (which lost this on resume, reference section 9.1): `--load_train auto` resumes the
LATEST state (not best_dev) mid-epoch, with the epoch counter, best dev loss, early-stop / plateau counter,
learning rate and Adam state. A non-finite loss skips the update.
"""

from __future__ import annotations

import argparse
import math
import re
import signal
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

from dsflow import UserError, checkpoints, dataset, distribute, flags, gpu
from dsflow.trainstate import State, identity, run_flags, start_checkpoint
from dsflow.log import SHOW, Progress, log
from dsflow.schedule import Schedule

def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train the model (DeepSpeech's train(); resumable from --work_dir)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--train_features", required=True, help="features folder of the training split (`dsflow features`)")
    a("--dev_features", default="", help="comma-separated features folders of the dev sets; empty: no "
                                         "validation, best_dev, early stopping or plateau handling")
    flags.add_option(p, "alphabet_config_path", required=True)
    a("--checkpoint_dir", required=True, help="output: published atomically at the end")
    a("--work_dir", required=True, help="root of the resumable training state (not an output); the state of "
                                        "a run is in a subfolder named by its identity")
    flags.add_options(p, "train")
    a("--threads", type=int, default=0, help="TensorFlow intra-op threads (0: TensorFlow's default)")
    a("--metrics", help="also write the per-epoch metrics CSV here")
    a("--metrics_features", default="", help="comma-separated features folders of the metrics sets (metrics_files): "
                                             "their loss is reported after each epoch, never used for decisions")
    p.set_defaults(func=_main)


def _main(args) -> int:
    gpu.init_tensorflow(args.threads)  # Snakemake's {threads} for TensorFlow's pools
    return train(args)


def train(args) -> int:
    flags.check(args, "train")
    return Trainer(args).run()


def _inputs(batch):
    return batch["features"], batch["feature_lengths"], batch["labels"], batch["label_lengths"]


def _names(batch) -> list[str]:
    return [n.decode("utf-8", "replace") for n in batch["wav_filename"].numpy()]


def _native_bf16() -> bool:
    try:
        return bool(re.search(r"\b(amx_bf16|avx512_bf16)\b", Path("/proc/cpuinfo").read_text()))
    except OSError:
        return False


class Trainer:
    def __init__(self, args):
        import tensorflow as tf

        from dsflow import model
        from dsflow.alphabet import AlphabetError, from_config

        self.args, self.tf = args, tf
        self.replicas = distribute.Replicas.for_training(args.train_gpus)  # before any TensorFlow op
        dtype = self.replicas.compute_dtype(args.automatic_mixed_precision)
        try:
            self.alphabet = from_config(args.alphabet_config_path, args.bytes_output_mode)
        except AlphabetError as e:
            raise UserError(f"alphabet_config_path: {e}") from None
        self.dev_dirs = [d for d in args.dev_features.split(",") if d.strip()]
        self.start = start_checkpoint(args)
        ident = identity(args, self.alphabet, self.dev_dirs, self.start, self.replicas.n,
                         "float16" if dtype == tf.float16 else "")
        work_dir = self.replicas.work_dir(args.work_dir, checkpoints.work_name(ident), args.load_train == "init")
        self.work = checkpoints.Work(work_dir, ident)
        log.info("training state: %s", self.work.path)
        if args.train_cudnn:
            log.info("train_cudnn: dsflow has one LSTM (DeepSpeech's arithmetic, on any device); nothing changes")

        # data: built once, iterated every epoch (no shuffling in DeepSpeech: each epoch has the same order)
        info = dataset.rows(args.train_features, args.limit_train)
        self.durations = dict(zip(info["wav_filename"], info["duration"]))
        self.n_batches = len(info) // args.train_batch_size // self.replicas.n  # steps: a batch per device each
        if self.n_batches == 0:
            devices = f" x {self.replicas.n} devices" if self.replicas.n > 1 else ""
            raise UserError(f"{args.train_features}: {len(info)} utterances, fewer than train_batch_size "
                            f"{args.train_batch_size}{devices}; the last partial batch is dropped (DeepSpeech), so an "
                            "epoch would be empty")
        self.train_data = dataset.load(args.train_features, self.alphabet, args.train_batch_size, train=True,
                                       limit=args.limit_train, reverse=args.reverse_train)
        self.augmented = None  # with augment: fresh augmented batches every epoch instead of the cached features
        if args.augment:
            from dsflow.augmented import AugmentedSplit

            if args.limit_train or args.reverse_train:
                raise UserError("augment with limit_train or reverse_train is not offered: augmented batches follow "
                                "the whole training split in DeepSpeech's order")
            self.augmented = AugmentedSplit(args.train_features, self.alphabet, args.train_batch_size, args.augment,
                                            random_seed=args.random_seed, epochs=args.epochs,
                                            workers=args.augment_workers)
            log.info("augmenting the training clips afresh every epoch (%s): %s",
                     "the cached features" if self.augmented.cached else
                     f"audio, {self.augmented.workers or 'no'} worker process(es)", " ".join(args.augment))
        self.dev_data = {d: (dataset.load(d, self.alphabet, args.dev_batch_size, False, args.limit_dev, args.reverse_dev),
                             math.ceil(len(dataset.rows(d, args.limit_dev)) / args.dev_batch_size))
                         for d in self.dev_dirs}
        self.metrics_dirs = [d for d in args.metrics_features.split(",") if d.strip()]
        self.metrics_data = {d: (dataset.load(d, self.alphabet, args.dev_batch_size, train=False),
                                 math.ceil(len(dataset.info(d)) / args.dev_batch_size)) for d in self.metrics_dirs}

        # model, optimizer, checkpoints, steps
        tf.random.set_seed(args.random_seed)
        if dtype == tf.bfloat16 and not tf.config.list_physical_devices("GPU") and not _native_bf16():
            log.warning("automatic_mixed_precision: this CPU has no native bfloat16 (amx_bf16/avx512_bf16), "
                        "so it is not faster here (bench/bench_train.py measured 0.9x of float32)")
        with self.replicas.scope():  # the variables: on every device
            self.net = model.DeepSpeech(args.n_hidden, len(self.alphabet) + 1, args.layer_norm, args.relu_clip,
                                        seed=args.random_seed)
            self.opt = model.adam(args.learning_rate, args.beta1, args.beta2, args.epsilon)
            self.opt.build(self.net.trainable_variables)
        self.extra = self.replicas.loss_scale(dtype)  # float16's loss scale, saved with the checkpoints
        self.keep = args.max_to_keep if self.replicas.chief else 1  # another worker's private state: its last
        self.saver = checkpoints.Saver(self.work, self.net, self.opt, self.keep, **self.extra)
        rates = model.dropout_rates(args.dropout_rate, args.dropout_rate2, args.dropout_rate3, args.dropout_rate6)
        self.gradients, self.apply, self.evaluate = self.replicas.step_functions(
            self.net, self.opt, rates, dtype, self.extra.get("loss_scale"))
        self.schedule = Schedule(args.early_stop, args.es_epochs, args.es_min_delta, args.reduce_lr_on_plateau,
                                 args.plateau_epochs, args.plateau_reduction)
        summaries = Path(args.summary_dir) if args.summary_dir else self.work.path / "summaries"
        self.writers = {k: tf.summary.create_file_writer(str(summaries / k)) for k in ("train", "dev", "metrics")}
        self.state = State()
        self.rows: list[dict] = []  # metrics.csv
        self.signal = None
        self.last_save = time.monotonic()

    # -- checkpoints

    def _save(self, name: str) -> str:
        st = self.state
        st.best_dev_loss = self.schedule.best_dev_loss
        st.epochs_without_improvement = self.schedule.epochs_without_improvement
        path = self.saver.save(name, asdict(st))
        if name == "train":
            self.last_save = time.monotonic()
        log.info("saved %s (epoch %d, step %d, global step %d)", path, st.epoch, st.step, st.global_step)
        return path

    def _restore(self) -> str | None:
        """The checkpoint --load_train asks for into the model, optimizer and state; its path (None: fresh)."""
        load = self.args.load_train
        if load == "init":
            if self.saver.latest("train") or self.saver.latest("best_dev"):
                log.warning("load_train init: discarding the training state in %s", self.work.path)
            self.work.discard()
            self.saver = checkpoints.Saver(self.work, self.net, self.opt, self.keep, **self.extra)
            return None
        which = "best_dev" if load == "best" else "train"
        path, state = self.saver.restore(which)
        if path is None:
            if load != "auto":
                raise UserError(f"load_train {load}: no {which} checkpoint in {self.work.path}")
            return None
        self.state = State(**state)
        self.schedule.best_dev_loss = self.state.best_dev_loss
        self.schedule.epochs_without_improvement = self.state.epochs_without_improvement
        return path

    # -- the loop

    def run(self) -> int:
        args, started = self.args, time.monotonic()
        changed = self.work.previous_flags(run_flags(args))
        if changed:
            log.info("flags changed since the last run in %s: %s", self.work.path, ", ".join(changed))
        path = self._restore()
        st, lr = self.state, self.opt.learning_rate
        if path is None and self.start:
            self._load_start()
        elif path is None:
            log.info("starting from a fresh model (%s parameters, n_hidden %d)", f"{self.net.count_params():,}",
                     args.n_hidden)
            lr.assign(args.learning_rate)
        else:
            log.info("resuming from %s: epoch %d, step %d, global step %d, Adam iterations %d, learning rate %g, "
                     "best dev loss %g, epochs without improvement %d", path, st.epoch, st.step, st.global_step,
                     int(self.opt.iterations.numpy()), float(lr.numpy()), st.best_dev_loss,
                     st.epochs_without_improvement)
        if path is not None and args.force_initialize_learning_rate:
            lr.assign(args.learning_rate)
        # Metrics rows of epochs after the restored state were never checkpointed: they are redone.
        self.rows = [r for r in checkpoints.read_metrics(self.work.metrics) if int(r["epoch"]) < st.epoch]
        checkpoints.write_metrics(self.work.metrics, self.rows)

        if st.early_stopped and args.early_stop:
            log.info("training stopped early at epoch %d before; publishing", st.epoch)
        elif st.epoch >= args.epochs:
            log.info("%d epochs trained (--epochs %d); publishing", st.epoch, args.epochs)
        else:
            st.early_stopped = False
            handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
            try:
                if not args.skip_batch_test:
                    self._check_longest_batch()
                while st.epoch < args.epochs and not st.early_stopped:
                    if not self.train_epoch():
                        self._save("train")
                        self.replicas.barrier()  # other workers exit after the chief saved
                        log.warning("stopped by signal %d; re-run the same command to continue", self.signal)
                        return 128 + self.signal
                    self.end_epoch()
            finally:
                for s, h in handlers.items():
                    signal.signal(s, h)
                if self.augmented:
                    self.augmented.close()
        if self.saver.latest("train") is None:
            self._save("train")
        if self.replicas.chief:  # the one writer of the outputs
            checkpoints.publish(args.checkpoint_dir, self.saver, self.alphabet, run_flags(args),
                                Path(args.train_features) / dataset.META, self.rows)
            if args.metrics:
                checkpoints.write_metrics(args.metrics, self.rows)
        log.info("FINISHED optimization in %s", timedelta(seconds=round(time.monotonic() - started)), extra=SHOW)
        return 0

    def _load_start(self) -> None:
        """Fine-tuning / transfer learning: the start checkpoint into the fresh model and optimizer, DeepSpeech's
        way (its learning rate unless force_initialize_learning_rate; its global step; epochs from 0)."""
        from dsflow import dscheckpoint

        args, prefix = self.args, self.start
        loaded = dscheckpoint.load_start(self.net, self.opt, args.load_checkpoint_dir, args.load_train,
                                         args.drop_source_layers, self.alphabet, args.load_cudnn)
        self.opt.learning_rate.assign(dscheckpoint.learning_rate(loaded, args.learning_rate,
                                                                 args.force_initialize_learning_rate))
        self.state.global_step = loaded.global_step
        log.info("starting from %s (global step %d, learning rate %g, %d tensors loaded%s)", prefix,
                 loaded.global_step, float(self.opt.learning_rate.numpy()), len(loaded.loaded),
                 f", re-initialized: {', '.join(loaded.initialized)}" if loaded.initialized else "", extra=SHOW)

    def _on_signal(self, signum, frame):
        if self.signal is not None:
            if signum == signal.SIGTERM:  # SLURM and srun may both send one at the time limit: keep saving
                return
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        log.warning("signal %d: saving the state after this batch, then stopping (again: stop now)", signum)
        self.signal = signum

    def _check_longest_batch(self) -> None:
        """One training step on the longest batch, update not applied: out of memory shows in seconds."""
        args, tf = self.args, self.tf
        t0 = time.monotonic()
        batch = dataset.longest_batch(args.train_features, self.alphabet, args.train_batch_size, args.limit_train)
        try:  # on every device
            losses, _, _ = self.gradients([batch] * self.replicas.n, tf.constant([args.random_seed, -1], tf.int64),
                                          False)
        except tf.errors.ResourceExhaustedError as e:
            raise UserError(f"out of memory on the longest training batch ({batch['features'].shape[0]} utterances "
                            f"of up to {batch['features'].shape[1]} frames): lower train_batch_size ({e.message})"
                            ) from None
        log.info("longest batch (%d utterances, %d frames) fits: one step in %.1f s, loss %.3f (update not applied)",
                 batch["features"].shape[0], batch["features"].shape[1], time.monotonic() - t0,
                 float(losses.mean()))

    def train_epoch(self) -> bool:
        """The batches of the current epoch from the saved step on. False if a signal stopped it."""
        import numpy as np

        tf, args, st = self.tf, self.args, self.state
        if st.step >= self.n_batches:
            return True
        log.info("Training epoch %d%s...", st.epoch, f" from step {st.step}" if st.step else "")
        if self.augmented:
            data = self.augmented.tensors(st.epoch, st.step * self.replicas.n)
        else:
            data = self.train_data.skip(st.step * self.replicas.n) if st.step else self.train_data
        with Progress(f"Epoch {st.epoch} | Training", self.n_batches - st.step, "batches") as progress:
            t = time.monotonic()
            for group in self.replicas.groups(data):  # one batch per device
                seed = tf.constant([args.random_seed, st.global_step], tf.int64)  # the dropout masks
                losses, grads, stop = self.gradients(group, seed, self.signal is not None)
                names = [n for batch in group for n in _names(batch)]
                if np.isfinite(losses).all():
                    self.apply(grads)
                    st.loss_sum += float(losses.mean())
                    st.loss_batches += 1
                else:
                    bad = [n for n, v in zip(names, losses) if not np.isfinite(v)]
                    log.error("The following files caused an infinite (or NaN) loss: %s (update skipped)",
                              ",".join(bad))
                    st.skipped_batches += 1
                st.audio_seconds += float(sum(self.durations.get(n, 0.0) for n in names))
                st.step += 1
                st.global_step += 1
                now = time.monotonic()
                st.seconds += now - t
                t = now
                with self.writers["train"].as_default():
                    _scalar(tf, "step_loss", float(losses.mean()), st.global_step)
                progress.what = f"Epoch {st.epoch} | Training | loss {st.loss_sum / max(st.loss_batches, 1):.3f}"
                progress.update()
                if self.replicas.workers > 1 and stop and self.signal is None:
                    log.warning("another worker was stopped: saving the state after this batch, then stopping")
                    self.signal = signal.SIGTERM
                if self.signal is not None and (stop or self.replicas.workers == 1):  # all workers after one step
                    return False
                # timed saves within the epoch (its end saves anyway); another worker's state is only its own
                if (self.replicas.chief and 0 < args.checkpoint_secs <= now - self.last_save
                        and st.step < self.n_batches):
                    self._save("train")
                    t = time.monotonic()
        return True

    def end_epoch(self) -> None:
        """Validate, apply DeepSpeech's schedule, write the metrics row, checkpoint."""
        args, st = self.args, self.state
        epoch, lr = st.epoch, float(self.opt.learning_rate.numpy())
        train_loss = st.loss_sum / st.loss_batches if st.loss_batches else math.nan
        rate = st.audio_seconds / st.seconds if st.seconds else math.nan
        if self.augmented and self.augmented.waited:
            log.info("the trainer waited %.1f s of the epoch for augmented batches (augment_workers %d)",
                     self.augmented.waited, self.args.augment_workers)
        log.info("Finished training epoch %d - loss: %f (%.0f s, %.2f audio seconds/s, learning rate %g%s)",
                 epoch, train_loss, st.seconds, rate, lr,
                 f", {st.skipped_batches} batches skipped" if st.skipped_batches else "", extra=SHOW)
        row = {"epoch": epoch, "train_loss": train_loss, "dev_loss": "", "epoch_seconds": round(st.seconds, 3),
               "audio_seconds_per_second": rate, "learning_rate": lr, "skipped_batches": st.skipped_batches,
               "global_step": st.global_step, "event": ""}
        events = []
        st.new_epoch()
        if self.dev_dirs:
            row["dev_loss"] = dev_loss = self.replicas.agree(  # the chief's, on every worker
                self.validate(epoch, self.dev_data, "Validation"))
            decision = self.schedule.update(dev_loss)
            if decision.save_best:
                log.info("Saved new best validating model with loss %f to: %s", dev_loss, self._save("best_dev"))
                events.append("best")
            if decision.stop:
                st.early_stopped = True
                log.info("Early stop triggered as the loss did not improve the last %d epochs",
                         self.schedule.epochs_without_improvement)
                events.append("early stop")
            if decision.reduce_lr:
                self.saver.restore_weights(self.saver.latest("best_dev"))
                self.opt.learning_rate.assign(self.opt.learning_rate * args.plateau_reduction)
                new_lr = float(self.opt.learning_rate.numpy())
                log.info("Encountered a plateau, reducing learning rate to %g", new_lr)
                log.info("Saved best validating model with reduced learning rate to: %s", self._save("best_dev"))
                events.append(f"plateau: reloaded best_dev, learning rate {new_lr:g}")
        if self.metrics_dirs:  # reported only (DeepSpeech's metrics_files)
            row["metrics_loss"] = self.validate(epoch, self.metrics_data, "Metrics")
        row.update(best_dev_loss=self.schedule.best_dev_loss,
                   epochs_without_improvement=self.schedule.epochs_without_improvement, event="; ".join(events))
        self.rows.append(row)
        checkpoints.write_metrics(self.work.metrics, self.rows)  # before the checkpoint: a re-run drops later rows
        with self.writers["train"].as_default():
            for name, value in (("loss", train_loss), ("learning_rate", lr), ("audio_seconds_per_second", rate),
                                ("epoch_seconds", row["epoch_seconds"])):
                _scalar(self.tf, name, value, epoch)
        for kind in ("dev", "metrics"):
            if row.get(f"{kind}_loss", "") != "":
                with self.writers[kind].as_default():
                    _scalar(self.tf, "loss", row[f"{kind}_loss"], epoch)
        for w in self.writers.values():
            w.flush()
        self._save("train")
        log.info("-" * 80)

    def validate(self, epoch: int, sets: dict, phase: str) -> float:
        """DeepSpeech: per dev (or metrics) set the mean batch loss; loss = sum(set_loss * steps) / sum(steps)."""
        import numpy as np

        total, steps = 0.0, 0
        for d, (data, n) in sets.items():
            log.info("%s epoch %d on %s...", "Validating" if phase == "Validation" else "Computing metrics of", epoch, d)
            set_total, set_steps = 0.0, 0
            with Progress(f"Epoch {epoch} | {phase} | {d}", n, "batches") as progress:
                for batch in data:
                    losses = self.evaluate(*_inputs(batch)).numpy()
                    bad = [n for n, v in zip(_names(batch), losses) if not np.isfinite(v)]
                    if bad:
                        log.error("The following files caused an infinite (or NaN) loss: %s", ",".join(bad))
                    set_total += float(losses.mean())
                    set_steps += 1
                    progress.update()
            set_loss = set_total / set_steps
            log.info("Finished %s epoch %d on %s - loss: %f", "validating" if phase == "Validation" else "metrics of",
                     epoch, d, set_loss, extra=SHOW)
            total += set_loss * set_steps
            steps += set_steps
        return total / steps


def _scalar(tf, tag: str, value: float, step: int) -> None:
    """A TensorBoard scalar (tf.summary.scalar without needing the tensorboard package installed)."""
    meta = tf.compat.v1.SummaryMetadata()
    meta.plugin_data.plugin_name = "scalars"
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=meta)
