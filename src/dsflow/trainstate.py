"""A training run's identity and counters: what a state folder belongs to (`identity`: the model shape, alphabet,
training and dev data, start checkpoint and every setting that changes the result; dsflow.checkpoints.Work keys
the folder by it), the flags a run records (`run_flags`), the checkpoint it starts from (`start_checkpoint`), and
`State`, what the training loop counts, saved with every checkpoint."""

from __future__ import annotations

import math
from dataclasses import dataclass

from dsflow import dataset

# Flags that do not change the trained model: they may differ between the runs of one state folder.
# (load_checkpoint_dir counts by its content, see `identity`; augment_workers does not change the augmentations.)
NOT_IDENTITY = {"epochs", "checkpoint_secs", "max_to_keep", "load_train", "force_initialize_learning_rate", "threads",
                "metrics", "summary_dir", "train_features", "dev_features", "alphabet_config_path", "checkpoint_dir",
                "work_dir", "load_checkpoint_dir", "augment_workers", "train_cudnn", "metrics_features",
                "skip_batch_test", "train_gpus", "train_nodes"}  # the devices: `replicas` of the identity instead


def run_flags(args) -> dict:
    return {k: v for k, v in sorted(vars(args).items()) if k not in ("func", "command", "log")}


def start_checkpoint(args) -> str | None:
    """The checkpoint training starts from (a prefix in load_checkpoint_dir, DeepSpeech's or dsflow's format, chosen
    by load_train as DeepSpeech did: best_dev, else the last), None for a fresh model."""
    from dsflow import dscheckpoint

    if not args.load_checkpoint_dir or args.load_train == "init":
        return None
    return dscheckpoint.find(args.load_checkpoint_dir, args.load_train, training=False)


def identity(args, alphabet, dev_dirs: list[str], start: str | None = None, replicas: int = 1,
             precision: str = "") -> dict:
    """What a state folder belongs to (see the module docstring); the number of devices (replicas, the batch of a
    step) and float16 are part of it when they apply."""
    from dsflow import dscheckpoint
    from dsflow.model import N_CONTEXT, N_INPUT

    def content(features_dir) -> str:
        return dataset.meta(features_dir).get("sha256") or dataset.info(features_dir).to_csv()

    return {"model": {"n_hidden": args.n_hidden, "layer_norm": bool(args.layer_norm), "n_input": N_INPUT,
                      "n_context": N_CONTEXT, "alphabet": alphabet.labels},
            "data": {"train": content(args.train_features), "dev": [content(d) for d in dev_dirs]},
            "start": dscheckpoint.fingerprint(start) if start else "a fresh model",
            "settings": {k: v for k, v in run_flags(args).items() if k not in NOT_IDENTITY and k not in
                         ("n_hidden", "layer_norm")},
            **({"replicas": replicas} if replicas > 1 else {}), **({"precision": precision} if precision else {})}


@dataclass
class State:
    """What the loop counts, saved with every checkpoint (the schedule's best dev loss and counter included)."""
    epoch: int = 0  # completed epochs
    step: int = 0  # batches done in the current epoch
    global_step: int = 0  # batches done in all (skipped ones included)
    loss_sum: float = 0.0  # this epoch's train loss so far, over
    loss_batches: int = 0  # the batches with a finite loss
    skipped_batches: int = 0
    seconds: float = 0.0  # this epoch's training time and audio so far
    audio_seconds: float = 0.0
    best_dev_loss: float = math.inf
    epochs_without_improvement: int = 0
    early_stopped: bool = False

    def new_epoch(self) -> None:
        self.epoch, self.step, self.loss_sum, self.loss_batches = self.epoch + 1, 0, 0.0, 0
        self.skipped_batches, self.seconds, self.audio_seconds = 0, 0.0, 0.0
